"""`inodewatch scan` against the real demo: each operation of the README's first table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from conftest import TIMEOUT, run_cli, scan_events, wait_for

pytestmark = pytest.mark.integration

CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS)


def kinds(events: list[dict], path: bytes) -> set[str]:
    return {e["event"] for e in events if e["path"] == os.fsdecode(path)}


def test_untouched_demo_has_no_divergence(start_demo):
    demo = start_demo("leak")
    code, events = scan_events(demo.pid)
    assert (code, events) == (0, [])


@pytest.mark.parametrize("mode", ["leak", "hold"])
def test_cp_in_place_kills_the_demo(start_demo, mode):
    demo = start_demo(mode)
    demo.copy_lib("so2.so")  # same inode, contents rewritten under the live mapping
    assert -demo.wait_exit() in CRASH_SIGNALS


def test_rm_then_cp_leaves_demo_running_deleted_code(start_demo):
    demo = start_demo("leak")
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    code, events = scan_events(demo.pid)
    assert code == 1
    assert kinds(events, demo.lib) == {"mapping.deleted", "mapping.replaced"}
    replaced = next(e for e in events if e["event"] == "mapping.replaced")
    assert replaced["disk_ino"] == os.stat(demo.lib).st_ino
    assert replaced["mapped_ino"] != replaced["disk_ino"]
    assert "r-xp" in replaced["perms"]
    # ... and it really still runs the old code
    mark = len(demo.lines)
    demo.wait_for_line("so1: version 1", after=mark)


def test_rm_alone_is_deleted_only(start_demo):
    demo = start_demo("leak")
    os.unlink(demo.lib)
    code, events = scan_events(demo.pid)
    assert code == 1
    assert kinds(events, demo.lib) == {"mapping.deleted"}


def test_mv_over_is_deleted_and_replaced(start_demo):
    demo = start_demo("leak")
    demo.copy_lib("so2.so", demo.lib + b".new")
    os.rename(demo.lib + b".new", demo.lib)
    code, events = scan_events(demo.pid)
    assert code == 1
    assert kinds(events, demo.lib) == {"mapping.deleted", "mapping.replaced"}


def test_rename_away_is_invisible_to_a_scan(start_demo):
    """maps shows the new name, intact: only the daemon, which saw the first name, can tell."""
    demo = start_demo("leak")
    os.rename(demo.lib, demo.lib + b".old")
    demo.copy_lib("so2.so")
    code, events = scan_events(demo.pid)
    assert (code, events) == (0, [])
    maps = open(f"/proc/{demo.pid}/maps", "rb").read()
    assert demo.lib + b".old\n" in maps


def test_hold_mode_picks_up_a_file_moved_over(start_demo):
    demo = start_demo("hold")
    demo.copy_lib("so2.so", demo.lib + b".new")
    os.rename(demo.lib + b".new", demo.lib)
    demo.wait_for_line("so2: version 2")
    # after the dlclose + dlopen the process maps what is on disk: nothing diverges
    wait_for(lambda: scan_events(demo.pid) == (0, []), what="a clean scan after the reload")


def test_reopen_mode_survives_cp_in_place(start_demo):
    demo = start_demo("reopen")
    demo.copy_lib("so2.so")
    demo.wait_for_line("so2: version 2")
    assert demo.proc.poll() is None
    assert scan_events(demo.pid) == (0, [])


def test_literal_deleted_suffix_is_not_reported_while_intact(start_demo):
    demo = start_demo("leak", lib=b"plugin (deleted)")
    assert demo.lib + b"\n" in open(f"/proc/{demo.pid}/maps", "rb").read()
    assert scan_events(demo.pid) == (0, [])
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    code, events = scan_events(demo.pid)
    assert code == 1
    assert kinds(events, demo.lib) == {"mapping.deleted", "mapping.replaced"}


def test_fd_on_deleted_log_file(tmp_path):
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        holder = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.DEVNULL)
    try:
        assert scan_events(holder.pid) == (0, [])
        log.unlink()
        code, events = scan_events(holder.pid)
        assert code == 1
        [event] = events
        assert event["event"] == "fd.deleted"
        assert (event["fd"], event["path"]) == (1, str(log))
    finally:
        holder.kill()
        holder.wait()


PSEUDO_HOST = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
keep = []
fd = os.memfd_create("plugin-cache")                         # /memfd:plugin-cache (deleted)
os.ftruncate(fd, 4096)
keep.append(mmap.mmap(fd, 4096))
keep.append(mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED))      # /dev/zero (deleted)
shmid = libc.shmget(0, 4096, 0o600 | 0o1000)                 # IPC_PRIVATE, IPC_CREAT
assert libc.shmat(shmid, None, 0) not in (None, ctypes.c_void_p(-1).value)
libc.shmctl(shmid, 0, None)                                  # IPC_RMID: gone when we exit
print("ready", flush=True)
sys.stdin.read()
"""


def test_pseudo_mappings_are_never_reported():
    host = subprocess.Popen([sys.executable, "-c", PSEUDO_HOST], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert host.stdout.readline() == "ready\n"
        maps = open(f"/proc/{host.pid}/maps").read()
        assert "/memfd:plugin-cache (deleted)" in maps
        assert "/dev/zero (deleted)" in maps
        assert "/SYSV00000000 (deleted)" in maps
        assert scan_events(host.pid) == (0, [])
        everything = run_cli("scan", "--all", "--json")
        assert everything.returncode in (0, 1), everything.stderr
        assert f'"pid": {host.pid}' not in everything.stdout
    finally:
        host.communicate("", timeout=TIMEOUT)


def test_scan_all_on_this_machine_reports_no_pseudo_or_unknown_kind():
    result = run_cli("scan", "--all", "--json")
    assert result.returncode in (0, 1), result.stderr
    assert "skipped" in result.stderr and "kernel threads" in result.stderr
    import json
    for line in result.stdout.splitlines():
        event = json.loads(line)
        assert event["event"] in {"mapping.deleted", "mapping.replaced", "mapping.missing",
                                  "fd.deleted", "fd.replaced", "fd.missing"}
        assert event["path"].startswith("/")
        assert not event["path"].startswith(("/memfd:", "/SYSV", "/dev/"))
