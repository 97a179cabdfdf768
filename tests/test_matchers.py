"""Following hosts beyond fixed pids: --exe, --name, --unit, --cgroup."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TIMEOUT, cgroup2_root
from inodewatch.cgroups import parse_cgroups
from inodewatch.matchers import ProcessFacts, SelectorError, absent_terms, make_selector

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
    assert make_selector([], ["a-very-long-plu"], [], []).match(facts(comm=b"a-very-long-plu"))


def test_a_name_longer_than_a_comm_can_be_is_refused():
    """The kernel keeps 15 bytes of a comm: a longer --name would never match."""
    with pytest.raises(SelectorError, match="is 23 bytes.*at most 15: it would never match"):
        make_selector([], ["a-very-long-plugin-host"], [], [])
    with pytest.raises(SelectorError, match="is 16 bytes"):
        make_selector([], ["\u00e9" * 8], [], [])  # 8 characters, 16 bytes


def test_terms_naming_nothing_that_exists_now(tmp_path):
    exe = tmp_path / "host"
    exe.write_text("")
    selector = make_selector([str(exe), str(tmp_path / "gone")], [], ["/no-such.slice", "/"],
                             ["no-such-unit"])
    assert absent_terms(selector, pids=[os.getpid()]) == [
        f"--exe {tmp_path}/gone: no such file now",
        "--cgroup /no-such.slice: no such cgroup now",
        "--unit no-such-unit.service: no process of it runs now",
    ]
    assert absent_terms(make_selector([], ["reload"], [], [])) == []  # a name is any process's


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


def test_only_what_root_arranged_is_the_operators_own():
    from inodewatch.matchers import operator_named

    system = (b"/system.slice/nginx.service",)
    users = (b"/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service",)
    assert operator_named(None)  # --pid
    assert operator_named(("cgroup", b"/system.slice/app.slice"), system)
    assert operator_named(("unit", b"nginx.service"), system)
    # systemd-run --user --unit nginx: any user can start a unit of that name under her own
    assert not operator_named(("unit", b"nginx.service"), users)
    assert not operator_named(("unit", b"nginx.service"), ())
    assert not operator_named(("name", b"nginx"), system)  # prctl(PR_SET_NAME)
    assert not operator_named(("exe", b"/usr/sbin/nginx"), system)  # anyone may run it


@pytest.mark.integration
def test_a_unit_is_found_running_by_its_processes(start_demo, make_cgroup):
    demo = start_demo("leak")
    unit = f"iw-sel-{os.getpid()}.service"
    (make_cgroup(f"iwtest-{os.getpid()}.slice/{unit}") / "cgroup.procs").write_text(str(demo.pid))
    assert absent_terms(make_selector([], [], [], [unit, "other"]), pids=[demo.pid]) == [
        "--unit other.service: no process of it runs now"]


@pytest.mark.integration
def test_the_daemon_warns_of_what_is_absent_and_keeps_watching_for_it(start_watcher, tmp_path,
                                                                     demo_build):
    from conftest import run_cli

    too_long = run_cli("--name", "a-very-long-plugin-host")
    assert too_long.returncode == 2 and len(too_long.stderr.splitlines()) == 1
    assert "would never match" in too_long.stderr
    exe = tmp_path / "later" / "reload"
    watcher = start_watcher(extra=["--exe", str(exe)])
    watcher.log.wait("daemon.started")
    exe.parent.mkdir()
    shutil.copy(demo_build / "reload", exe)
    shutil.copy(demo_build / "so1.so", tmp_path / "so.so")
    late = subprocess.Popen([str(exe), "--mode", "leak", "--lib", str(tmp_path / "so.so")],
                            stdout=subprocess.DEVNULL)
    try:
        assert watcher.log.wait("target.attached", pid=late.pid)["selector"] == f"exe={exe}"
    finally:
        late.kill()
        late.wait()
    code, _out, err = watcher.stop()
    assert code == 0
    assert err == f"inodewatch: warning: --exe {exe}: no such file now; watching for it all the same\n"
