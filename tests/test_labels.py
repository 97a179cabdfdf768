"""Labels that match the process (issue 11 item 7): a worker forked by its master is
announced with its own title, not the master's command line at the fork; `reattached` only
for a process that takes an exited one's place; an exec is announced again with the new
program; daemon.started names the selectors."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from conftest import wait_for
from nginx_instance import NGINX, nginx

pytestmark = pytest.mark.integration
_ = nginx  # the fixture, used by name


def attached(log, pid):
    return log.wait("target.attached", pid=pid)


def test_nginx_workers_forked_at_a_reload_and_a_restart(nginx, start_watcher):
    watcher = start_watcher(extra=["--exe", str(NGINX)])
    started = watcher.log.wait("daemon.started")
    assert started["selectors"] == [f"exe={NGINX}"] and started["targets"] == []
    master = attached(watcher.log, nginx.master_pid)
    assert master["reattached"] is False
    assert master["cmdline"][0].startswith(f"nginx: master process {NGINX} -p {nginx.prefix}/")
    for pid in nginx.worker_pids():  # found by the walk of /proc at start
        assert attached(watcher.log, pid)["cmdline"] == ["nginx: worker process"]

    # a reload: the master forks new workers (the connector tells of each fork at once),
    # and the old ones exit; the new ones take no exited process's place
    for pid in nginx.reload():
        event = attached(watcher.log, pid)
        assert event["cmdline"] == ["nginx: worker process"], event
        assert event["reattached"] is False, event

    # a restart: the new master takes the old one's place; its workers join it
    nginx.stop()
    nginx.start()
    assert attached(watcher.log, nginx.master_pid)["reattached"] is True
    for pid in nginx.worker_pids():
        event = attached(watcher.log, pid)
        assert (event["cmdline"], event["reattached"]) == (["nginx: worker process"], False)


def test_an_exec_is_announced_with_the_new_program(start_watcher, make_cgroup, demo_build, tmp_path):
    group = make_cgroup(f"iwtest-{os.getpid()}.slice/iw-exec.service")
    lib = tmp_path / "so.so"
    lib.write_bytes((demo_build / "so1.so").read_bytes())
    script = f'echo $$ > {group}/cgroup.procs; read _; exec {demo_build}/reload --lib {lib}'
    shell = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: str(shell.pid) in (group / "cgroup.procs").read_text().split(),
                 what="the shell in its cgroup")
        watcher = start_watcher(extra=["--cgroup", str(group)])
        first = attached(watcher.log, shell.pid)
        assert first["comm"] == "sh" and "exec" not in first
        assert shell.stdin is not None
        shell.stdin.write(b"\n")
        shell.stdin.flush()

        def again():
            return next((e for e in watcher.log.read() if e["event"] == "target.attached"
                         and e.get("pid") == shell.pid and e.get("exec")), None)
        event = wait_for(again, what="target.attached with exec: true")
        assert event["comm"] == "reload"
        assert event["cmdline"] == [str(demo_build / "reload"), "--lib", str(lib)]
        assert event["selector"] == f"cgroup=/{group.relative_to(group.parents[1])}"
        assert event["start_time"] == first["start_time"]  # the same process: one life
    finally:
        shell.send_signal(signal.SIGKILL)
        shell.wait()
        if shell.stdin:
            shell.stdin.close()
