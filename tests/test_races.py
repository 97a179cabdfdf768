"""Races the kernel allows: fds closed and maps changed between reads, processes exiting
mid-scan.  No traceback, no false event, the right exit."""

from __future__ import annotations

import os
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


def spawn_with_pid(pid: int, argv: list[str]) -> subprocess.Popen | None:
    """Start `argv` under a given (free) pid, through /proc/sys/kernel/ns_last_pid."""
    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


def test_a_reused_pid_is_never_taken_for_the_target(start_demo, start_watcher, demo_build):
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs root to choose the next pid")
    watcher = start_watcher(extra=["--exe", str(demo_build / "reload"), "--interval", "0.05"])
    watcher.log.wait("daemon.started")
    demo = start_demo("leak")
    watcher.log.wait("target.attached", pid=demo.pid)
    demo.proc.kill()
    demo.proc.wait()
    impostor = spawn_with_pid(demo.pid, ["sleep", "60"])  # same pid, another program
    if impostor is None:
        pytest.skip("could not get the pid back (a busy machine)")
    try:
        exited = watcher.log.wait("target.exited", pid=demo.pid)
        assert exited["signal"] == "SIGKILL", exited
        later = start_demo("leak")  # the real host comes back, under a new pid
        assert watcher.log.wait("target.attached", pid=later.pid)["reattached"] is True
        events_for_pid = [e["event"] for e in watcher.log.read() if e.get("pid") == demo.pid]
        assert events_for_pid == ["target.attached", "target.exited"]
    finally:
        impostor.kill()
        impostor.wait()


def test_a_read_straddling_a_reload_does_not_credit_the_new_file_to_the_old_inode(
        start_demo, monkeypatch):
    """maps read before the host's dlclose + dlopen, map_files after: the new library sits at
    the same address, and its stat must not pass for the old inode's (a false critical
    mapping.overwritten, found by benchmarks/soak.py)."""
    from inodewatch import procfs

    demo = start_demo("hold", interval_ms=300)
    maps_before = procfs.read_proc_file(demo.pid, b"maps")
    old = next(g for g in procfs.fold_maps(maps_before).groups if g.path == demo.lib)
    mark = len(demo.lines)
    demo.copy_lib("so1.so", demo.lib + b".new")  # the same layout: it lands at the same address
    os.rename(demo.lib + b".new", demo.lib)
    demo.wait_for_line("so1: version 1", after=mark)  # the host reloaded
    now = procfs.read_proc_file(demo.pid, b"maps")
    if not any(g.range_name == old.range_name and g.file != old.file for g in procfs.fold_maps(now).groups):
        pytest.skip("the loader put the new library at another address this time")
    monkeypatch.setattr(procfs, "read_maps", lambda pid: procfs.fold_maps(maps_before))
    mapped = procfs.read_mapped_files(demo.pid)
    assert old.file not in {m.file for m in mapped}  # gone, not dressed in the new file's stat
