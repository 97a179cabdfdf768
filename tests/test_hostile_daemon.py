"""The daemon against faults and a hostile user: a pause, a flooded inotify queue, a huge
command line, a user's own mount namespace.  Real demo, real daemon, real log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import lowered_sysctl
from inodewatch.reactor import GAP_THRESHOLD
from inodewatch.procfs import CMDLINE_LIMIT

pytestmark = pytest.mark.integration


def test_a_pause_is_a_gap_and_an_in_place_write_during_it_is_still_told(start_demo, start_watcher):
    demo = start_demo("leak", interval_ms=100)
    watcher = start_watcher(demo.pid, extra=["--interval", "0.2"])
    watcher.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        demo.copy_lib("so2.so")  # in place: the demo crashes while nobody watches
        demo.wait_exit()
        # The pause itself is the stimulus: it must outlast the gap threshold.
        time.sleep(max(0.0, GAP_THRESHOLD + 0.5 - (time.monotonic() - stopped)))
    finally:
        watcher.proc.send_signal(signal.SIGCONT)
    gap = watcher.log.wait("watch.gap")
    assert gap["level"] == "warning" and gap["gap_s"] >= GAP_THRESHOLD
    overwritten = watcher.log.wait("mapping.overwritten", pid=demo.pid)
    exited = watcher.log.wait("target.exited", pid=demo.pid)
    names = watcher.log.names()
    assert names.index("watch.gap") < names.index("mapping.overwritten") < names.index("target.exited")
    assert overwritten["size_before"] == os.path.getsize(demo.dir / "so1.so")
    assert exited["signal"] in ("SIGSEGV", "SIGBUS")


def test_a_reload_during_a_pause_is_still_told(start_demo, start_watcher):
    demo = start_demo("hold", interval_ms=60_000)
    watcher = start_watcher(demo.pid, extra=["--interval", "0.2"])
    old_ino = os.stat(demo.lib).st_ino
    watcher.proc.send_signal(signal.SIGSTOP)
    try:
        os.unlink(demo.lib)
        demo.copy_lib("so2.so")
        demo.tick("so2: version 2")  # dlclose + dlopen: in step again before the daemon looks
    finally:
        watcher.proc.send_signal(signal.SIGCONT)
    reloaded = watcher.log.wait("mapping.reloaded", pid=demo.pid)
    assert reloaded["old_ino"] == old_ino and reloaded["new_ino"] == os.stat(demo.lib).st_ino


def test_an_overflowed_queue_does_not_lose_an_in_place_write(start_demo, start_watcher):
    """A user floods the plugin's directory while the daemon cannot read, root copies over
    the mapped file: the IN_MODIFY is lost in the overflow; the stamps still tell."""
    demo = start_demo("hold", interval_ms=60_000)  # holds the file, calls it only when told
    with lowered_sysctl("max_queued_events", 4):
        watcher = start_watcher(demo.pid, extra=["--interval", "60"])  # no timer to hide behind
    watcher.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(20):
            open(demo.dir / f"noise{i}", "w").close()
        demo.copy_lib("so2.so")
    finally:
        watcher.proc.send_signal(signal.SIGCONT)
    watcher.log.wait("watch.overflow")
    overwritten = watcher.log.wait("mapping.overwritten", pid=demo.pid)
    assert overwritten["size_after"] == os.path.getsize(demo.dir / "so2.so")


def test_a_huge_command_line_is_capped(start_watcher):
    """A process may give itself megabytes of arguments (and fork children that match a
    selector): one target.attached carries at most CMDLINE_LIMIT bytes of them."""
    args = ["x" * 100_000] * 20  # 2 MB; one argument may be at most 128 KiB
    host = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", *args],
                            stdin=subprocess.PIPE)
    try:
        watcher = start_watcher(host.pid)
        attached = watcher.log.find("target.attached", pid=host.pid)
        assert attached["truncated"] is True
        assert sum(len(a) + 1 for a in attached["cmdline"]) <= CMDLINE_LIMIT + 1
        assert attached["cmdline"][0] == sys.executable
        assert os.path.getsize(watcher.log.path) < 4 * CMDLINE_LIMIT
    finally:
        host.kill()
        host.wait()


def test_target_events_say_whose_and_in_which_mount_namespace(attacker, demo_build, start_watcher):
    """A user in her own namespace (unshare -Urm) can bind her file over any path: every
    event about her process carries her uid and her mount namespace, unlike the daemon's."""
    home = Path(tempfile.mkdtemp(prefix="iw-ns-"))
    try:
        home.chmod(0o755)
        for name in ("reload", "so1.so", "so2.so"):
            shutil.copy(demo_build / name, home / name)
        lib = home / "so.so"
        shutil.copy(demo_build / "so1.so", lib)
        host = subprocess.Popen(
            [*attacker.argv, "unshare", "-Urm", str(home / "reload"), "--mode", "leak",
             "--interval-ms", "50", "--lib", str(lib)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert host.stdout is not None
            while b"so1: version 1" not in host.stdout.readline():
                assert host.poll() is None, "the demo in its own namespace did not start"
            own_ns = os.stat("/proc/self/ns/mnt").st_ino
            assert os.stat(f"/proc/{host.pid}/ns/mnt").st_ino != own_ns
            watcher = start_watcher(host.pid)
            started = watcher.log.wait("daemon.started")
            attached = watcher.log.wait("target.attached", pid=host.pid)
            assert started["mnt_ns"] == own_ns
            assert attached["uid"] == attacker.uid
            assert attached["mnt_ns"] == os.stat(f"/proc/{host.pid}/ns/mnt").st_ino != own_ns
            os.unlink(lib)
            deleted = watcher.log.wait("mapping.deleted", pid=host.pid)
            assert (deleted["uid"], deleted["mnt_ns"]) == (attacker.uid, attached["mnt_ns"])
            host.kill()
            exited = watcher.log.wait("target.exited", pid=host.pid)
            assert (exited["uid"], exited["mnt_ns"]) == (attacker.uid, attached["mnt_ns"])
        finally:
            host.kill()
            host.wait()
            if host.stdout:
                host.stdout.close()
    finally:
        shutil.rmtree(home)


def wakeups(pid: int) -> int:
    """How many times the process has gone to sleep and been woken (its main thread)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_after_a_burst_of_births_and_of_file_events_the_loop_goes_quiet(
        start_demo, start_watcher, demo_build):
    """A burst spends the read paces of the proc connector and of inotify; once it is over,
    the loop must not go on waking at those paces with nothing to read (it did: 20 times a
    second for good after births, 100 after file events -- 0.5 % of a core at 5,000 hosts)."""
    watcher = start_watcher(extra=["--exe", str(demo_build / "reload")])
    watcher.log.wait("daemon.started")
    demo = start_demo("leak", interval_ms=3_600_000)  # one tick, then quiet
    watcher.log.wait("target.attached", pid=demo.pid)
    for _ in range(3):  # births, faster than the connector's burst of reads allows
        for proc in [subprocess.Popen(["/bin/true"]) for _ in range(40)]:
            proc.wait()
        time.sleep(0.01)
    beside = demo.dir / "beside"
    for i in range(60):  # names made beside the plugin: a read of inotify for each
        beside.write_bytes(b"x")
        beside.unlink()
        time.sleep(0.005)
    time.sleep(1.0)  # the paces' pauses are over by now (1/20 s, 1/100 s)
    before = wakeups(watcher.proc.pid)
    time.sleep(3.0)
    woke = wakeups(watcher.proc.pid) - before
    # quiet: a tick a second and what it schedules; the old loop: >= 60 (20 a second)
    assert woke < 30, f"{woke} wake-ups in 3 s of quiet"
