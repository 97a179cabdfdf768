"""Following hosts beyond fixed pids: --exe, --name, --unit, --cgroup."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import TIMEOUT, cgroup2_root
from inodewatch.cgroups import parse_cgroups
from inodewatch.selectors import ProcessFacts, make_selector

V1_HYBRID = b"""9:name=systemd:/system.slice/nginx.service
8:pids:/system.slice/nginx.service
4:memory:/process_api/0f01
0::/system.slice/nginx.service
"""


def facts(comm=b"nginx", exe=b"/usr/sbin/nginx", cgroups=(b"/system.slice/nginx.service",)):
    return ProcessFacts(1, comm, exe, cgroups)


def test_parse_cgroups_keeps_v2_and_name_systemd_only():
    assert parse_cgroups(V1_HYBRID) == (b"/system.slice/nginx.service", b"/system.slice/nginx.service")
    assert parse_cgroups(b"0::/\n") == (b"/",)


def test_match_by_each_term():
    assert make_selector(["/usr/sbin/nginx"], [], [], []).match(facts()) == ("exe", b"/usr/sbin/nginx")
    assert make_selector([], ["nginx"], [], []).match(facts()) == ("name", b"nginx")
    assert make_selector([], [], [], ["nginx"]).match(facts()) == ("unit", b"nginx.service")
    assert make_selector([], [], [], ["nginx.service"]).match(facts()) == ("unit", b"nginx.service")
    assert make_selector([], [], ["/sys/fs/cgroup/system.slice"], []).match(facts()) == (
        "cgroup", b"/system.slice")
    assert make_selector([], [], ["/sys/fs/cgroup/unified/system.slice/"], []).match(facts())


def test_no_false_matches():
    sel = make_selector(["/usr/sbin/nginx"], ["nginx"], ["/system.slice/nginx"], ["nginx"])
    other = facts(comm=b"apache2", exe=b"/usr/sbin/apache2",
                  cgroups=(b"/system.slice/nginx-exporter.service",))
    assert sel.match(other) is None
    assert not make_selector([], [], [], [])
    # comm is truncated by the kernel to 15 bytes: so is the name asked for
    assert make_selector([], ["a-very-long-plugin-host"], [], []).match(
        facts(comm=b"a-very-long-plu"))


def attached(watcher, pid):
    return watcher.log.wait("target.attached", pid=pid)


@pytest.mark.integration
def test_exe_follows_a_host_started_later_and_restarted(start_demo, start_watcher, demo_build):
    exe = str(demo_build / "reload")
    watcher = start_watcher(extra=["--exe", exe])
    watcher.log.wait("daemon.started")
    first = start_demo("leak")
    event = attached(watcher, first.pid)
    assert (event["selector"], event["reattached"]) == (f"exe={exe}", False)
    first.proc.kill()
    watcher.log.wait("target.exited", pid=first.pid)
    second = start_demo("leak")  # the host, restarted under a new pid
    assert attached(watcher, second.pid)["reattached"] is True
    os.unlink(second.lib)
    second.copy_lib("so2.so")
    watcher.log.wait("mapping.replaced", pid=second.pid)
    assert watcher.proc.poll() is None  # a selector runs until stopped


@pytest.mark.integration
def test_cgroup_picks_exactly_its_processes(start_demo, start_watcher):
    root = cgroup2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy")
    group = root / f"inodewatch-test-{os.getpid()}"
    group.mkdir()
    try:
        inside, outside = start_demo("leak"), start_demo("leak")
        (group / "cgroup.procs").write_text(str(inside.pid))
        watcher = start_watcher(extra=["--cgroup", str(group)])
        attached(watcher, inside.pid)
        # the outside demo is never attached; a change to it would have been logged
        os.unlink(outside.lib)
        os.unlink(inside.lib)
        watcher.log.wait("mapping.deleted", pid=inside.pid)
        code, _out, _err = watcher.stop()
        assert code == 0
        assert {e.get("pid") for e in watcher.log.read() if e["event"] == "target.attached"} == {inside.pid}
        inside.stop()
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            subprocess.run(["kill", "-9", pid])
        _wait_empty(group)
        group.rmdir()


def _wait_empty(group: Path) -> None:
    from conftest import wait_for
    wait_for(lambda: not (group / "cgroup.procs").read_text().strip(), TIMEOUT, "the cgroup to empty")
