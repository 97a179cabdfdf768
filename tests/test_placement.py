"""Units and containers on real cgroups: the demo moved into cgroups made under
/sys/fs/cgroup, named as systemd and docker name theirs, is reported in them by `scan` and by
the daemon (the parsing itself: tests/test_cgroups.py)."""

from __future__ import annotations

import os

import pytest

from conftest import run_cli, scan_events

pytestmark = pytest.mark.integration

DOCKER_ID = "4c01db0b339c" * 5 + "0123"


def test_scan_names_the_unit_of_a_stale_process(start_demo, make_cgroup):
    demo = start_demo("leak")
    unit = f"iw-demo-{os.getpid()}.service"
    group = make_cgroup(f"iwtest-{os.getpid()}.slice/{unit}")
    (group / "cgroup.procs").write_text(str(demo.pid))
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    code, events = scan_events(demo.pid)
    assert code == 1
    assert {e["event"] for e in events} == {"mapping.deleted", "mapping.replaced"}
    assert all(e["unit"] == unit and "container_runtime" not in e for e in events)


def test_scan_names_the_container_of_a_stale_process(start_demo, make_cgroup):
    demo = start_demo("leak")
    group = make_cgroup(f"iwtest-{os.getpid()}.slice/docker-{DOCKER_ID}.scope")
    (group / "cgroup.procs").write_text(str(demo.pid))
    os.unlink(demo.lib)
    code, events = scan_events(demo.pid)
    assert code == 1 and events
    assert all((e["container_runtime"], e["container_id"], e["unit"])
               == ("docker", DOCKER_ID, f"docker-{DOCKER_ID}.scope") for e in events)


def test_the_daemon_names_the_unit_on_every_event_about_the_target(start_demo, make_cgroup,
                                                                 start_watcher):
    demo = start_demo("leak")
    unit = f"iw-demo-{os.getpid()}.service"
    group = make_cgroup(f"iwtest-{os.getpid()}.slice/{unit}")
    (group / "cgroup.procs").write_text(str(demo.pid))
    watcher = start_watcher(demo.pid)
    os.unlink(demo.lib)
    deleted = watcher.log.wait("mapping.deleted", pid=demo.pid)
    attached = watcher.log.find("target.attached", pid=demo.pid)
    assert attached is not None and attached["unit"] == unit and deleted["unit"] == unit
    demo.stop()
    assert watcher.log.wait("target.exited", pid=demo.pid)["unit"] == unit
    started = watcher.log.find("daemon.started")
    assert started is not None and "unit" not in started


def test_the_table_says_which_unit_and_container_to_restart(start_demo, make_cgroup):
    """Three stale demos: one in a service, one in a docker-like scope, one in no unit."""
    unit = f"iw-demo-{os.getpid()}.service"
    in_unit, in_container, loose = start_demo("leak"), start_demo("leak"), start_demo("leak")
    for demo, cgroup in ((in_unit, f"iwtest-{os.getpid()}.slice/{unit}"),
                         (in_container, f"iwtest-{os.getpid()}.slice/docker-{DOCKER_ID}.scope"),
                         (loose, f"iwtest-{os.getpid()}.slice/no-unit")):  # wherever tests run
        (make_cgroup(cgroup) / "cgroup.procs").write_text(str(demo.pid))
    for demo in (in_unit, in_container, loose):
        os.unlink(demo.lib)
        demo.copy_lib("so2.so")
    result = run_cli("scan", *(a for d in (in_unit, in_container, loose)
                               for a in ("--pid", str(d.pid))))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    plan = lines[lines.index("To restart:") + 1:-1]
    assert plan == [
        f"  systemctl restart {unit}",
        f"      pid {in_unit.pid} (reload): {os.fsdecode(in_unit.lib)}",
        f"  docker restart {DOCKER_ID}",
        f"      pid {in_container.pid} (reload): {os.fsdecode(in_container.lib)}",
        f"  pid {loose.pid} (reload), not in a unit: restart it yourself",
        f"      {os.fsdecode(loose.lib)}",
    ]
