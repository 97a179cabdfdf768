"""The units under a real systemd: a minimal Debian booted with systemd-nspawn (tests/nspawn.py).

One container for the module (~8 s to boot from the cached image; ~50 s more the first time,
to make the image), the checkout's own units and wheel in it, the C demo as `demo.service`
(a hold-mode plugin host).  Each test starts the units it needs and stops them at the end.

Without root, systemd-nspawn or mmdebstrap the module is skipped with the reason; under CI
(CI=true) it fails instead, since .ci/run installs them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

import nspawn
from conftest import TIMEOUT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.nspawn]

DEMO_UNIT = f"""\
[Unit]
Description=the reload demo: a plugin host holding /srv/demo/so.so
[Service]
ExecStartPre=/bin/mkdir -p /srv/demo
ExecStartPre=/bin/sh -c 'rm -f /srv/demo/so.so && cp {nspawn.DEMO_DIR}/so1.so /srv/demo/so.so'
# hold mode, no tick of its own: each reload is a SIGUSR1 from the test
ExecStart={nspawn.DEMO_DIR}/reload --mode hold --interval-ms 3600000 --lib /srv/demo/so.so
Restart=on-failure
RestartSec=100ms
"""
LIB = "/srv/demo/so.so"


@pytest.fixture(scope="module")
def machine() -> Iterator[nspawn.Machine]:
    reason = nspawn.unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the systemd-nspawn tests: {reason}")
        pytest.skip(reason)
    with nspawn.booted(f"iwtest-{os.getpid()}") as m:
        m.write("/etc/systemd/system/demo.service", DEMO_UNIT)
        m.systemctl("daemon-reload")
        yield m


class Service:
    """A unit of the container, and the inodewatch events its current run logged."""

    def __init__(self, machine: nspawn.Machine, name: str) -> None:
        self.machine = machine
        self.name = name
        self.invocation = ""

    def start(self) -> None:
        self.machine.systemctl("start", self.name)  # Type=notify: returns once READY=1
        self.invocation = self.show("InvocationID")["InvocationID"]

    def stop(self) -> None:
        self.machine.systemctl("stop", self.name, check=False)
        self.machine.systemctl("reset-failed", self.name, check=False)

    def show(self, *properties: str) -> dict[str, str]:
        return self.machine.show(self.name, *properties)

    def entries(self) -> list[dict[str, Any]]:
        """The journal entries of this run, systemd's own lines about the unit included."""
        return [e for e in self.machine.journal("-u", self.name)
                if e.get("_SYSTEMD_INVOCATION_ID", e.get("INVOCATION_ID")) == self.invocation]

    def events(self) -> list[dict[str, Any]]:
        """The daemon's events of this run: each entry's JSON MESSAGE, with `_entry` the
        journal entry it came in."""
        found = []
        for entry in self.entries():
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith("{"):
                found.append({**json.loads(message), "_entry": entry})
        return found

    def find(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.events()
                if e["event"] == name and all(e.get(k) == v for k, v in fields.items())]

    def wait(self, name: str, timeout: float = TIMEOUT, count: int = 1, **fields: Any) -> dict[str, Any]:
        """The `count`-th event `name` with these fields, once it is in the journal."""
        def found() -> dict[str, Any] | None:
            matching = self.find(name, **fields)
            return matching[count - 1] if len(matching) >= count else None
        try:
            return wait_for(found, timeout, what=f"{self.name}: {name} #{count} {fields}")
        except AssertionError as exc:
            logged = "\n".join(e.get("MESSAGE", "") if isinstance(e.get("MESSAGE"), str) else "?"
                               for e in self.entries()[-30:])
            raise AssertionError(f"{exc}; its journal:\n{logged}") from None


@pytest.fixture
def demo(machine: nspawn.Machine) -> Iterator[Service]:
    unit = Service(machine, "demo.service")
    unit.start()
    wait_for(lambda: any(e.get("MESSAGE") == "so1: version 1" for e in unit.entries()),
             what="the demo's first plugin call")
    yield unit
    unit.stop()


def tick(machine: nspawn.Machine, demo: Service, watcher: Service, count: int) -> dict[str, Any]:
    """Make the demo reload now (SIGUSR1: dlclose + dlopen), until the watcher has seen its
    `count`-th mapping.reloaded (the signal is sent again if it landed outside the demo's wait)."""
    def reloaded() -> dict[str, Any] | None:
        machine.systemctl("kill", "--kill-whom=main", "--signal=SIGUSR1", demo.name)
        done = watcher.find("mapping.reloaded")
        return done[count - 1] if len(done) >= count else None
    return wait_for(reloaded, what=f"the demo's reload #{count}")


@pytest.fixture
def watcher(machine: nspawn.Machine, demo: Service) -> Iterator[Service]:
    """inodewatch@demo.service, attached to the demo."""
    unit = Service(machine, "inodewatch@demo.service")
    unit.start()
    unit.wait("target.attached", pid=int(demo.show("MainPID")["MainPID"]))
    yield unit
    unit.stop()


def test_ready_once_attached_with_its_status(machine, watcher):
    state = watcher.show("ActiveState", "SubState", "StatusText", "Type", "NotifyAccess")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    assert state["StatusText"] == "watching 1 targets, 0 divergences live"
    started = watcher.wait("daemon.started")
    attached = watcher.wait("target.attached")
    assert attached["selector"] == "unit=demo.service" and attached["reattached"] is False
    assert started["_entry"]["__REALTIME_TIMESTAMP"] <= attached["_entry"]["__REALTIME_TIMESTAMP"]
    # where it happened, in the JSON itself: the host name journald records too; the kernel's
    # boot id (nspawn mounts a boot_id of the container's own, which journald records, but
    # the unit's ProtectKernelTunables= mounts /proc/sys afresh and shows the kernel's)
    with open("/proc/sys/kernel/random/boot_id") as f:
        kernels = f.read().strip()
    for event in (started, attached):
        assert event["host"] == machine.name == event["_entry"]["_HOSTNAME"]
        assert event["boot_id"] in (kernels, uuid_text(event["_entry"]["_BOOT_ID"]))


def test_a_clean_stop_logs_daemon_stopped(machine, watcher):
    machine.systemctl("stop", watcher.name)
    stopped = watcher.wait("daemon.stopped")
    assert stopped["reason"] == "SIGTERM"
    state = watcher.show("ActiveState", "Result")
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success")  # exit 0, not killed
    assert any(e.get("MESSAGE", "").endswith("Deactivated successfully.") for e in watcher.entries())


def test_the_watchdog_restarts_a_stopped_daemon(machine, demo):
    """WatchdogSec= (2 s in a drop-in): a SIGSTOPped daemon sends no ping; systemd aborts it
    (result watchdog) and, that being a failure, starts it again."""
    dropin = "/etc/systemd/system/inodewatch@demo.service.d/watchdog.conf"
    machine.write(dropin, "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n")
    machine.systemctl("daemon-reload")
    unit = Service(machine, "inodewatch@demo.service")
    try:
        unit.start()
        unit.wait("target.attached")
        first = unit.show("MainPID")["MainPID"]
        machine.run(["kill", "-STOP", first])

        def restarted() -> dict[str, str] | None:
            state = unit.show("MainPID", "ActiveState", "NRestarts")
            return state if state["MainPID"] not in ("0", first) and state["ActiveState"] == "active" else None
        state = wait_for(restarted, timeout=60, what="the watchdog's restart")
        assert int(state["NRestarts"]) >= 1
        told = [e.get("MESSAGE", "") for e in unit.entries()]
        assert any("Watchdog timeout" in m for m in told), told
        assert any("Failed with result 'watchdog'" in m for m in told), told
        unit.invocation = unit.show("InvocationID")["InvocationID"]
        assert unit.wait("target.attached")["reattached"] is False  # a new daemon, attached again
    finally:
        unit.stop()
        machine.path(dropin).unlink()
        machine.systemctl("daemon-reload")


def test_inodewatch_service_reads_its_config_file(machine, demo):
    machine.write("/etc/inodewatch/inodewatch.toml", 'unit = ["demo.service"]\ninterval = 0.5\n')
    unit = Service(machine, "inodewatch.service")
    try:
        unit.start()
        attached = unit.wait("target.attached", pid=int(demo.show("MainPID")["MainPID"]))
        assert attached["selector"] == "unit=demo.service"
        assert unit.show("StatusText")["StatusText"] == "watching 1 targets, 0 divergences live"
    finally:
        unit.stop()
        machine.path("/etc/inodewatch/inodewatch.toml").unlink()


def uuid_text(hex32: str) -> str:
    return "-".join((hex32[:8], hex32[8:12], hex32[12:16], hex32[16:20], hex32[20:]))


PRIORITY = {"critical": "2", "warning": "4", "info": "6"}


def test_the_seeds_operations_land_at_their_priorities(machine, demo, watcher):
    """rm+cp, mv over and cp in place under inodewatch@demo: each event is one journal entry
    at its level's priority, with its fields; -p crit finds the overwrite."""
    pid = int(demo.show("MainPID")["MainPID"])
    machine.sh(f"rm {LIB} && cp {nspawn.DEMO_DIR}/so2.so {LIB}")  # rm + cp
    watcher.wait("mapping.replaced", pid=pid)
    tick(machine, demo, watcher, 1)
    machine.sh(f"cp {nspawn.DEMO_DIR}/so1.so {LIB}.new && mv -f {LIB}.new {LIB}")  # mv over
    watcher.wait("mapping.replaced", pid=pid, count=2)
    tick(machine, demo, watcher, 2)
    machine.sh(f"cp {nspawn.DEMO_DIR}/so2.so {LIB}")  # cp in place: the crash case
    overwritten = watcher.wait("mapping.overwritten", pid=pid, path=LIB)

    events = watcher.events()
    names = [e["event"] for e in events]
    for wanted in ("mapping.deleted", "mapping.replaced", "mapping.reloaded", "mapping.overwritten"):
        assert wanted in names
    for event in events:
        entry = event["_entry"]
        assert entry["PRIORITY"] == PRIORITY[event["level"]], event
        assert entry["INODEWATCH_EVENT"] == event["event"]
        assert entry["SYSLOG_IDENTIFIER"] == "inodewatch"
        assert entry["_SYSTEMD_UNIT"] == "inodewatch@demo.service"
    assert overwritten["_entry"]["INODEWATCH_PATH"] == LIB
    assert overwritten["_entry"]["INODEWATCH_MAPPED_INO"] == str(overwritten["mapped_ino"])

    crit = [e for e in machine.journal("-p", "crit", "-u", watcher.name)
            if e.get("_SYSTEMD_INVOCATION_ID") == watcher.invocation]
    assert [e["INODEWATCH_EVENT"] for e in crit] == ["mapping.overwritten"]
    warning = [e.get("INODEWATCH_EVENT") for e in machine.journal("-p", "warning", "-u", watcher.name)
               if e.get("_SYSTEMD_INVOCATION_ID") == watcher.invocation]
    assert "mapping.replaced" in warning and "mapping.reloaded" not in warning
    by_field = machine.journal(f"_SYSTEMD_INVOCATION_ID={watcher.invocation}",
                               "INODEWATCH_EVENT=mapping.overwritten")
    assert [e["INODEWATCH_PATH"] for e in by_field] == [LIB]
    # -o cat: the JSON lines a log file would hold, nothing else from the daemon
    cat = machine.run(["journalctl", "--no-pager", "-o", "cat",
                       f"_SYSTEMD_INVOCATION_ID={watcher.invocation}"]).stdout.splitlines()
    assert [json.loads(line)["event"] for line in cat] == names


def test_logrotate_and_sighup_move_the_log_file_without_losing_a_line(machine, demo):
    """systemd/inodewatch.logrotate, forced: the file is renamed, the daemon (SIGHUP from the
    postrotate) writes its next events to a new file at the path."""
    log = "/var/log/inodewatch/demo.json"
    dropin = "/etc/systemd/system/inodewatch@demo.service.d/log-file.conf"
    machine.write(dropin, "[Service]\nExecStart=\nExecStart=/usr/local/bin/inodewatch --unit %i "
                          f"--state-file /var/lib/inodewatch/state-%i.json --log-file {log}\n")
    machine.write("/etc/logrotate.d/inodewatch",
                  (nspawn.REPO / "systemd" / "inodewatch.logrotate").read_text())
    machine.systemctl("daemon-reload")
    unit = Service(machine, "inodewatch@demo.service")

    def events(path: str) -> list[str]:
        text = machine.run(["cat", path], check=False).stdout
        return [json.loads(line)["event"] for line in text.splitlines()]
    try:
        unit.start()
        wait_for(lambda: "target.attached" in events(log), what="the attach in the log file")
        machine.run(["logrotate", "--force", "/etc/logrotate.d/inodewatch"])
        rotated = events(f"{log}.1")
        assert rotated[0] == "daemon.started" and "target.attached" in rotated
        machine.sh(f"rm {LIB} && cp {nspawn.DEMO_DIR}/so2.so {LIB}")
        wait_for(lambda: "mapping.replaced" in events(log), what="the next event in the new file")
        assert "mapping.replaced" not in events(f"{log}.1")
        mode = machine.run(["stat", "-L", "-c", "%a %U", log]).stdout.split()
        assert mode[0] == "600"  # made by the daemon itself (nocreate), under its UMask=
        assert unit.show("MainPID")["MainPID"] != "0"  # reopened, not restarted
        assert unit.show("NRestarts")["NRestarts"] == "0"
    finally:
        unit.stop()
        machine.path(dropin).unlink()
        machine.systemctl("daemon-reload")


def test_in_a_container_the_daemon_says_why_exits_have_no_status(machine, demo, watcher):
    """The container's PID namespace: the kernel ignores the proc connector's subscription.
    Said once, up front; a crash is then an exit seen through the pidfd, its signal unknown."""
    [degraded] = [e for e in watcher.find("watch.degraded") if "proc connector" in e["detail"]]
    assert "PID namespace other than the initial one" in degraded["detail"]
    assert degraded["_entry"]["PRIORITY"] == "4"
    assert watcher.find("daemon.started")[0]["_entry"]["__REALTIME_TIMESTAMP"] <= \
        degraded["_entry"]["__REALTIME_TIMESTAMP"] <= watcher.find("target.attached")[0]["_entry"]["__REALTIME_TIMESTAMP"]
    pid = int(demo.show("MainPID")["MainPID"])
    machine.systemctl("kill", "--kill-whom=main", "--signal=SIGSEGV", demo.name)
    exited = watcher.wait("target.exited", pid=pid)
    # The unit's dynamic user cannot ask systemd (the system bus refuses it: "Transport
    # endpoint is not connected"), so the status stays unknown; as root it is known (below).
    assert (exited["status_source"], exited["signal"]) == ("pidfd", None)


def test_a_restarted_unit_is_attached_again_within_5_s(machine, demo, watcher):
    """No connector to announce the new process: the walk of demo.service's cgroup at every
    --interval finds it (the walk of /proc would take up to 60 s)."""
    old = int(demo.show("MainPID")["MainPID"])
    machine.systemctl("restart", demo.name)
    state = demo.show("MainPID", "ExecMainStartTimestampMonotonic")
    new = int(state["MainPID"])
    assert new != old
    attached = watcher.wait("target.attached", pid=new)
    assert attached["reattached"] is True and attached["selector"] == "unit=demo.service"
    started_us = int(state["ExecMainStartTimestampMonotonic"])
    delay = (int(attached["_entry"]["__MONOTONIC_TIMESTAMP"]) - started_us) / 1e6
    assert delay <= 5.0, f"attached {delay:.1f} s after the restart"


def test_the_scan_timer_and_its_scan_find_the_stale_demo(machine, demo):
    """inodewatch-scan.timer is scheduled once enabled; the scan it starts (started here at
    once) finds the demo running a replaced plugin: exit 1 counted a success
    (SuccessExitStatus=1), the table and what to restart in its journal, the metrics file in
    the state directory."""
    try:
        machine.systemctl("enable", "--now", "inodewatch-scan.timer")
        timer = machine.show("inodewatch-scan.timer", "ActiveState", "NextElapseUSecRealtime")
        assert timer["ActiveState"] == "active" and timer["NextElapseUSecRealtime"] not in ("", "0")
        machine.sh(f"rm {LIB} && cp {nspawn.DEMO_DIR}/so2.so {LIB}")
        machine.systemctl("start", "inodewatch-scan.service")  # oneshot: returns once done
        scan = Service(machine, "inodewatch-scan.service")
        result = scan.show("Result", "ExecMainStatus", "InvocationID")
        assert (result["Result"], result["ExecMainStatus"]) == ("success", "1")
        scan.invocation = result["InvocationID"]
        text = "\n".join(e["MESSAGE"] for e in scan.entries()
                         if isinstance(e.get("MESSAGE"), str))
        assert LIB in text and "systemctl restart demo.service" in text
        metrics = machine.sh("cat /var/lib/inodewatch/scan.prom").stdout
        assert 'inodewatch_scan_stale_processes{container="",unit="demo.service",user_unit=""} 1.0' in metrics, metrics
        assert "inodewatch_scan_timestamp_seconds" in metrics
    finally:
        machine.systemctl("disable", "--now", "inodewatch-scan.timer", check=False)


@pytest.fixture
def root_watcher(machine: nspawn.Machine, demo: Service) -> Iterator[Service]:
    """`inodewatch --unit demo` as root (a transient unit, no DynamicUser=): root may ask
    systemd how the unit's main process ended."""
    unit = Service(machine, "iwroot.service")
    machine.run(["systemd-run", "--unit=iwroot", "--property=Type=notify",
                 "--property=NotifyAccess=main", "/usr/local/bin/inodewatch", "--unit", "demo"])
    unit.invocation = unit.show("InvocationID")["InvocationID"]
    unit.wait("target.attached", pid=int(demo.show("MainPID")["MainPID"]))
    yield unit
    unit.stop()


def test_a_cp_in_place_crash_is_told_by_systemd_and_blamed_by_the_report(machine, demo,
                                                                         root_watcher):
    """The crash case itself in a container: a cp over the held plugin, the demo's next
    reload faults, systemd's record gives the signal (ExecMainCode/ExecMainStatus), and
    `inodewatch report` on the daemon's journal blames the overwrite."""
    watcher = root_watcher
    pid = int(demo.show("MainPID")["MainPID"])
    machine.sh(f"cp {nspawn.DEMO_DIR}/so2.so {LIB}")
    watcher.wait("mapping.overwritten", pid=pid, path=LIB)

    def crashed() -> dict[str, Any] | None:
        machine.systemctl("kill", "--kill-whom=main", "--signal=SIGUSR1", demo.name, check=False)
        found = watcher.find("target.exited", pid=pid)
        return found[0] if found else None
    exited = wait_for(crashed, what="the demo's crash after the overwrite")
    assert exited["status_source"] == "systemd"
    assert exited["signal"] in ("SIGSEGV", "SIGBUS"), exited
    machine.sh(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={watcher.invocation} "
               "> /root/events.json")
    out = machine.run(["inodewatch", "report", "--json", "/root/events.json"]).stdout
    [target] = [r for r in map(json.loads, out.splitlines()) if r.get("pid") == pid]
    assert target["outcome"] == "crashed_after_overwrite", target["verdict"]


GUARD_DROP_IN = "/etc/systemd/system/inodewatch@demo.service.d/guard.conf"


def test_the_guards_drop_in_refuses_the_cp_under_the_units_own_sandbox(machine, demo):
    """inodewatch@demo with systemd/inodewatch-guard.conf: the dynamic user, its capabilities
    and system call filter as the unit gives them, plus the drop-in's.  The cp over the held
    plugin fails, the file is unchanged, the journal has mapping.write_refused at crit, and
    the demo's next reload runs the same plugin as before."""
    machine.write(GUARD_DROP_IN, (nspawn.REPO / "systemd" / "inodewatch-guard.conf").read_text())
    machine.systemctl("daemon-reload")
    watcher = Service(machine, "inodewatch@demo.service")
    try:
        watcher.start()
        pid = int(demo.show("MainPID")["MainPID"])
        watcher.wait("target.attached", pid=pid)
        watcher.wait("guard.started")
        before = machine.run(["sha256sum", LIB]).stdout
        done = machine.sh(f"cp {nspawn.DEMO_DIR}/so2.so {LIB}", check=False)
        assert done.returncode == 1 and "Text file busy" in done.stderr, done.stderr
        assert machine.run(["sha256sum", LIB]).stdout == before
        refused = watcher.wait("mapping.write_refused", pid=pid, path=LIB)
        assert refused["_entry"]["PRIORITY"] == PRIORITY["critical"]
        assert refused["writer_comm"] == "cp"
        machine.systemctl("kill", "--kill-whom=main", "--signal=SIGUSR1", demo.name)
        assert demo.show("ActiveState")["ActiveState"] == "active"
        assert not watcher.find("mapping.overwritten") and not watcher.find("guard.stopped")
    finally:
        watcher.stop()
        machine.run(["rm", "-rf", os.path.dirname(GUARD_DROP_IN)])
        machine.systemctl("daemon-reload")
