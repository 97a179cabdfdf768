"""Degraded mode stays truthful (issue 12 item 3): without CAP_CHECKPOINT_RESTORE (and
CAP_SYS_ADMIN) /proc/PID/map_files cannot be followed, so a mapping whose path names another
file has no stamp; an unknown stamp is not a changed one, so rm+cp is never an overwrite.

Before: a hold-mode host reloading every 200 ms, rm+cp repeated -> a false critical
mapping.overwritten (size_after null) after 80 of 100 replacements here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import TIMEOUT, EventLog, wait_for
from test_diff import NEW, OLD, P, mapping, step

from inodewatch.diff import TargetHistory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_MAP_FILES = ["setpriv", "--inh-caps=-sys_admin,-checkpoint_restore",
                "--bounding-set=-sys_admin,-checkpoint_restore", "--"]


def test_an_unknown_stamp_is_not_an_overwrite():
    h = TargetHistory()
    assert step(h, [mapping()], {P: OLD}) == []
    # maps says " (deleted)", no map_files: link count and stamp unknown (None)
    gone = mapping(deleted=True, size=None, mtime=None)
    assert step(h, [gone], {P: NEW}) == ["mapping.deleted", "mapping.replaced"]
    assert step(h, [gone], {P: NEW}) == []
    assert "mapping.overwritten" not in [s["event"] for s in h.stale()]


def test_a_known_stamp_that_moved_still_is():
    h = TargetHistory()
    assert step(h, [mapping()], {P: OLD}) == []
    assert step(h, [mapping(size=23696, mtime=2)], {P: OLD}) == ["mapping.overwritten"]


@pytest.mark.integration
def test_rm_cp_under_a_fast_reloading_host_without_map_files(start_demo, tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN")
    demo = start_demo("hold", interval_ms=200)
    log = EventLog(tmp_path / "events.json")
    daemon = subprocess.Popen([*NO_MAP_FILES, sys.executable, "-m", "inodewatch", "--pid",
                               str(demo.pid), "--log-file", str(log.path)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log.wait("target.attached", pid=demo.pid)
        assert any("map_files cannot be followed" in e.get("detail", "")
                   for e in log.read() if e["event"] == "watch.degraded")
        rounds = 20
        for n in range(1, rounds + 1):
            os.unlink(demo.lib)
            demo.copy_lib("so2.so" if n % 2 else "so1.so")
            wait_for(
                lambda: len([e for e in log.read() if e["event"] == "mapping.reloaded"]) >= n,
                what=f"reload #{n}")
        assert "mapping.overwritten" not in log.names()
        # and the real thing is still told: cp in place over the file the host maps now
        demo.copy_lib("so2.so" if (rounds + 1) % 2 else "so1.so")
        event = log.wait("mapping.overwritten", pid=demo.pid)
        assert event["level"] == "critical"
    finally:
        daemon.terminate()
        daemon.communicate(timeout=TIMEOUT)
