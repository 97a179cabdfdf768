"""Hostile hosts, items 4 and 5: a user's processes dying all at once, or more of them than
the daemon has file descriptors, must not blind the daemon to the operator's own target."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TIMEOUT, EventLog, wait_for

pytestmark = pytest.mark.integration


class Herd:
    """`count` processes of the attacker, each a copy of sleep(1) named `name` (so its comm
    matches `--name name`), in one process group so one kill() ends them all at once."""

    def __init__(self, attacker, name: str, count: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="iwherd"))
        self.dir.chmod(0o755)  # the attacker must reach its program
        shutil.copy("/bin/sleep", self.dir / name)
        script = f'i=0; while [ $i -lt {count} ]; do ./{name} 1000 & i=$((i+1)); done; wait'
        self.shell = subprocess.Popen([*attacker.argv, "sh", "-c", script], cwd=self.dir,
                                      start_new_session=True)
        self.name, self.count = name, count

    def pids(self) -> list[int]:
        found = subprocess.run(["pgrep", "-x", "-g", str(self.shell.pid), self.name],
                               capture_output=True, text=True)
        return [int(p) for p in found.stdout.split()]

    def wait_started(self) -> list[int]:
        return wait_for(lambda: len(pids := self.pids()) == self.count and pids,
                        what=f"{self.count} {self.name} processes")

    def kill(self) -> None:
        os.killpg(self.shell.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.shell.poll() is None:
            self.kill()
        self.shell.wait()
        shutil.rmtree(self.dir)


@pytest.fixture
def herd(attacker) -> Iterator:
    herds: list[Herd] = []

    def start(count: int) -> Herd:
        herds.append(Herd(attacker, f"iwherd{os.getpid() % 10000}{len(herds)}", count))
        return herds[-1]

    yield start
    for h in herds:
        h.close()


def rm_and_cp(demo) -> None:
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")


def test_a_mass_exit_does_not_stall_the_loop(start_demo, start_watcher, herd):
    demo = start_demo("leak")
    users = herd(400)
    pids = users.wait_started()
    watcher = start_watcher(demo.pid, extra=["--name", users.name])
    wait_for(lambda: len([e for e in watcher.log.read() if e["event"] == "target.attached"
                          and e["pid"] in pids]) == len(pids),
             what="every user process attached")
    users.kill()
    rm_and_cp(demo)
    watcher.log.wait("mapping.deleted", pid=demo.pid)
    watcher.log.wait("mapping.replaced", pid=demo.pid)

    def exited() -> list[dict]:
        found = [e for e in watcher.log.read() if e["event"] == "target.exited"]
        return len(found) == len(pids) and found
    told = wait_for(exited, what=f"{len(pids)} target.exited")
    assert sorted(e["pid"] for e in told) == sorted(pids)
    assert {(e["signal"], e["status_source"]) for e in told} == {("SIGKILL", "proc_connector")}
    assert watcher.log.find("watch.degraded", resource="exit_status") is None
    assert watcher.proc.poll() is None


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


def test_out_of_fds_is_said_once_and_the_operators_target_stays_watched(start_demo, herd, tmp_path):
    demo = start_demo("leak")
    users = herd(150)  # more than the daemon has fds
    users.wait_started()
    log = EventLog(tmp_path / "events.json")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "inodewatch", "--pid", str(demo.pid), "--name", users.name,
         "--log-file", str(log.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_low_fd_limit)
    try:
        log.wait("target.attached", pid=demo.pid)
        degraded = log.wait("watch.degraded", resource="file_descriptors")
        assert "RLIMIT_NOFILE 128" in degraded["detail"]
        attached = [e for e in log.read() if e["event"] == "target.attached"]
        assert 1 < len(attached) < 128 - 32
        rm_and_cp(demo)
        log.wait("mapping.deleted", pid=demo.pid)
        log.wait("mapping.replaced", pid=demo.pid)
        users.kill()
        log.wait("watch.recovered", resource="file_descriptors")
        assert [e for e in log.read() if e["event"] == "watch.degraded"
                and e.get("resource") == "file_descriptors"] == [degraded]
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        _out, err = daemon.communicate(timeout=TIMEOUT)
    assert daemon.returncode == 0, err
