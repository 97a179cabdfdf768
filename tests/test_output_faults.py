"""Output faults: the log file deleted, the disk full, stdout closed.  The daemon reports each
once on stderr and keeps watching; it never spins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TIMEOUT, EventLog, wait_for

pytestmark = pytest.mark.integration


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_log_file_deleted_under_the_daemon_is_recreated(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid, extra=["--interval", "0.1"])
    os.unlink(watcher.log.path)
    wait_for(watcher.log.path.exists, what="a new log file")
    os.unlink(demo.lib)
    EventLog(watcher.log.path).wait("mapping.deleted", pid=demo.pid)
    code, _out, err = watcher.stop()
    assert code == 0 and err.count("\n") == 1 and "was deleted" in err


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_is_reported_once_and_the_watch_goes_on(start_demo, small_tmpfs, tmp_path):
    demo = start_demo("leak")
    log = EventLog(small_tmpfs / "events.json")
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err_file:
        daemon = subprocess.Popen([sys.executable, "-m", "inodewatch", "--pid", str(demo.pid),
                                   "--log-file", str(log.path), "--interval", "0.05"],
                                  stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        log.wait("target.attached", pid=demo.pid)
        # Fill the file system to the last byte, the log file's last page included.
        for name, chunk in (("filler", b"\0" * 4096), ("events.json", b"\n")):
            fd = os.open(small_tmpfs / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                while os.write(fd, chunk):
                    pass
            except OSError:
                pass
            os.close(fd)
        os.unlink(demo.lib)  # mapping.deleted: cannot be written
        wait_for(lambda: "No space left" in errors.read_text(), what="the disk-full report")
        before = cpu_seconds(daemon.pid)
        demo.copy_lib("so2.so")  # more events that cannot be written: no second report
        os.unlink(small_tmpfs / "filler")  # space again: later events are written
        demo.proc.kill()
        try:
            log.wait("target.exited", pid=demo.pid)
        except AssertionError:
            raise AssertionError(f"no target.exited; the daemon said: {errors.read_text()!r}") from None
        assert cpu_seconds(daemon.pid) - before < 2  # no busy loop while it could not write
        assert daemon.wait(timeout=TIMEOUT) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert errors.read_text().splitlines() == [
        "inodewatch: cannot write the event log: No space left on device; still watching",
        "inodewatch: the event log is writable again"]


def test_closed_stdout_is_reported_once(start_demo):
    demo = start_demo("leak")
    daemon = subprocess.Popen(
        ["sh", "-c", 'exec 1>&-; exec "$@"', "sh", sys.executable, "-m", "inodewatch",
         "--pid", str(demo.pid), "--interval", "0.05"],
        stderr=subprocess.PIPE, text=True)
    try:
        assert daemon.stderr.readline() == (
            "inodewatch: cannot write the event log: standard output is closed; still watching\n")
        os.unlink(demo.lib)
        demo.copy_lib("so2.so")
        demo.proc.kill()  # the daemon still sees its only target die, and stops
        _out, err = daemon.communicate(timeout=TIMEOUT)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0 and err == ""
