"""Races the kernel allows: fds closed and maps changed between reads, processes exiting
mid-scan.  No traceback, no false event, the right exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TIMEOUT, run_cli

pytestmark = pytest.mark.integration

# Opens and closes files, maps and unmaps a library, forks short children: as fast as it can,
# for 3 seconds, then exits 0.  Nothing it holds is ever replaced.
CHURN = r"""
import ctypes, mmap, os, sys, time
lib, end = sys.argv[1], time.monotonic() + 3
for i in range(10**9):
    if time.monotonic() > end:
        break
    fd = os.open(lib, os.O_RDONLY)
    m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    os.close(fd)
    if i % 50 == 0:
        handle = ctypes.CDLL(lib)
        if os.fork() == 0:
            os._exit(0)
        os.wait()
    m.close()
"""


def test_a_churning_target_gives_no_false_event(start_watcher, demo_build):
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(demo_build / "so1.so")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = start_watcher(churn.pid, extra=["--interval", "0.01"])
    exited = watcher.log.wait("target.exited", pid=churn.pid, timeout=120)
    assert churn.wait(timeout=TIMEOUT) == 0
    assert (exited["exit_code"], exited["signal"], exited["stale"]) == (0, None, [])
    assert exited["level"] == "info"
    assert watcher.proc.wait(timeout=TIMEOUT) == 0  # its only target is gone: it stops
    assert watcher.proc.stderr.read() == ""
    assert not [e for e in watcher.log.read() if e["event"].startswith(("mapping.", "fd."))]


def test_scan_all_while_processes_come_and_go():
    spawner = subprocess.Popen(["sh", "-c", "for i in $(seq 400); do sleep 0.001 & done; wait"])
    try:
        for _ in range(3):
            result = run_cli("scan", "--all", "--json")
            assert result.returncode in (0, 1)
            assert result.stderr.count("\n") == 1 and result.stderr.startswith("scanned ")
    finally:
        spawner.wait(timeout=TIMEOUT)
