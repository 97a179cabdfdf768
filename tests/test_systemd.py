"""The systemd units: what they say, that systemd-analyze accepts them silently, how exposed
they are, and that the daemon really works with the privileges they grant.

`systemd-analyze` comes with Debian's `systemd` package (apt-get install -y systemd); it
runs without systemd as PID 1.  `verify` reports an unknown key only as a warning (exit 0),
so ANY output is a failure here.  It also wants the ExecStart= binary to exist: it is
pointed at a throw-away root (--root) holding the unit, a dummy /usr/local/bin/inodewatch
and stub targets for the default dependencies, so nothing outside tmp_path is touched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TIMEOUT, EventLog
from inodewatch import caps

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
SERVICE = UNITS / "inodewatch.service"
TEMPLATE = UNITS / "inodewatch@.service"
SCAN = UNITS / "inodewatch-scan.service"
GUARD = UNITS / "inodewatch-guard.conf"
TIMER = UNITS / "inodewatch-scan.timer"
EXEC_PATH = "/usr/local/bin/inodewatch"
MAX_EXPOSURE = 2.0
MAX_GUARD_EXPOSURE = 2.2  # with the guard's drop-in: CAP_SYS_ADMIN, fanotify_init allowed
NEEDED_CAPS = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_CHECKPOINT_RESTORE", "CAP_NET_ADMIN"}

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian: apt-get install -y systemd)")


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; keys may repeat, as systemd allows."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def one(entries: list[tuple[str, str, str]], section: str, key: str) -> str | None:
    found = values(entries, section, key)
    assert len(found) <= 1, f"{key}= given {len(found)} times"
    return found[0] if found else None


# --- what the units say ---------------------------------------------------------------------


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_the_contract(unit):
    u = parse_unit(unit)
    assert one(u, "Service", "Type") == "notify"
    assert one(u, "Service", "NotifyAccess") == "main"
    assert one(u, "Service", "WatchdogSec") == "30"
    assert one(u, "Service", "Restart") == "on-failure"
    assert one(u, "Service", "StandardOutput") == "journal"
    assert one(u, "Service", "LogsDirectory") == "inodewatch"
    assert one(u, "Service", "StateDirectory") == "inodewatch"
    assert one(u, "Service", "ExecStart").split()[0] == EXEC_PATH


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_no_hardening_that_breaks_the_daemon(unit):
    u = parse_unit(unit)
    # other users' processes must stay visible, and /proc/sys too
    assert one(u, "Service", "ProtectProc") in (None, "default")
    assert one(u, "Service", "ProcSubset") in (None, "all")
    # the abstract notify socket and the proc connector need the host's network namespace
    assert one(u, "Service", "PrivateNetwork") in (None, "no", "false")
    assert one(u, "Service", "NetworkNamespacePath") is None
    # the capabilities must be held in the initial user namespace
    assert one(u, "Service", "PrivateUsers") is None
    families = one(u, "Service", "RestrictAddressFamilies").split()
    assert not families[0].startswith("~") and {"AF_UNIX", "AF_NETLINK"} <= set(families)
    assert values(u, "Service", "SystemCallFilter")[0] == "@system-service"
    # seen through read-only mounts, the host's files keep their inodes: watches still work
    assert one(u, "Service", "ProtectSystem") == "strict"
    assert one(u, "Service", "ProtectHome") == "read-only"


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_the_capabilities_are_exactly_what_caps_py_needs(unit):
    u = parse_unit(unit)
    bounding = set(one(u, "Service", "CapabilityBoundingSet").split())
    assert bounding == NEEDED_CAPS
    # not root: a dynamic user holding them as ambient capabilities
    assert one(u, "Service", "DynamicUser") == "yes"
    assert set(one(u, "Service", "AmbientCapabilities").split()) == bounding
    assert caps.missing_features(bounding) == []
    for cap in bounding:  # none is superfluous: each one buys a feature
        assert caps.missing_features(bounding - {cap}), cap


def test_the_template_differs_only_in_what_it_watches():
    main = [(k, v) for s, k, v in parse_unit(SERVICE) if s == "Service"]
    template = [(k, v) for s, k, v in parse_unit(TEMPLATE) if s == "Service"]
    differ = {"ExecStart", "SyslogIdentifier"}
    assert [e for e in main if e[0] not in differ] == [e for e in template if e[0] not in differ]
    u = parse_unit(SERVICE)
    assert one(u, "Service", "ExecStart") == (f"{EXEC_PATH} --config /etc/inodewatch/inodewatch.toml "
                                              "--state-file /var/lib/inodewatch/state.json $INODEWATCH_OPTIONS")
    assert one(u, "Service", "StateDirectory") == "inodewatch"  # /var/lib/inodewatch, writable
    assert one(u, "Install", "WantedBy") == "multi-user.target"


def test_the_template_follows_the_instance_unit_without_binding_to_it():
    u = parse_unit(TEMPLATE)
    # inodewatch@nginx.service: %i is "nginx"; the daemon appends ".service"
    # one state file per instance, in the StateDirectory= the instances share
    assert one(u, "Service", "ExecStart") == f"{EXEC_PATH} --unit %i --state-file /var/lib/inodewatch/state-%i.json $INODEWATCH_OPTIONS"
    assert one(u, "Unit", "After") == "%i.service"
    for key in ("BindsTo", "PartOf", "Requires", "Requisite", "Wants", "Upholds"):
        assert one(u, "Unit", key) is None, f"{key}= would tie the watcher's life to the host's"
    assert one(u, "Install", "WantedBy") == "%i.service"


SCAN_CAPS = NEEDED_CAPS - {"CAP_NET_ADMIN"}


def test_the_scan_unit_and_its_timer():
    u = parse_unit(SCAN)
    assert one(u, "Service", "Type") == "oneshot"
    assert one(u, "Service", "ExecStart") == (
        f"{EXEC_PATH} scan --all --metrics-file /var/lib/inodewatch/scan.prom")
    assert one(u, "Service", "SuccessExitStatus") == "1"  # "a restart is needed" is no failure
    assert one(u, "Service", "StateDirectory") == "inodewatch"  # the daemon's, its metrics beside
    assert one(u, "Service", "CacheDirectory") == "inodewatch"  # the dpkg index
    assert one(u, "Service", "DynamicUser") == "yes" and one(u, "Service", "User") == "inodewatch"
    bounding = set(one(u, "Service", "CapabilityBoundingSet").split())
    assert bounding == SCAN_CAPS == set(one(u, "Service", "AmbientCapabilities").split())
    # all a scan loses without CAP_NET_ADMIN is the proc connector, which it does not use
    assert [m for m in caps.missing_features(bounding)] == [caps.FEATURES[-1].degraded]
    assert one(u, "Service", "ProtectProc") in (None, "default")
    assert one(u, "Service", "ProcSubset") in (None, "all")
    assert one(u, "Service", "PrivateUsers") is None
    assert one(u, "Service", "ProtectSystem") == "strict"
    assert one(u, "Service", "PrivateNetwork") == "yes"
    assert values(u, "Service", "SystemCallFilter")[0] == "@system-service"
    t = parse_unit(TIMER)
    assert one(t, "Timer", "OnCalendar") == "*:0/15"
    assert one(t, "Timer", "Unit") is None  # inodewatch-scan.timer starts inodewatch-scan.service
    assert one(t, "Install", "WantedBy") == "timers.target"


# --- systemd-analyze ------------------------------------------------------------------------


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMD_")}
    env.update(SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C.UTF-8")
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, env=env, timeout=120)


def make_root(tmp_path: Path, units: dict[str, str], with_binary: bool = True) -> Path:
    """A minimal root for `verify --root`: the units, a dummy ExecStart binary, and stubs for
    the targets every service's default dependencies name."""
    root = tmp_path / "root"
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name in ("sysinit.target", "basic.target", "shutdown.target", "timers.target",
                 "time-set.target", "time-sync.target"):
        (unit_dir / name).write_text("[Unit]\nDescription=stub for systemd-analyze verify\n")
    for name, text in units.items():
        (unit_dir / name).parent.mkdir(exist_ok=True)  # a drop-in: NAME.service.d/x.conf
        (unit_dir / name).write_text(text)
    if with_binary:
        binary = root / EXEC_PATH.lstrip("/")
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    return root


def assert_silent(result: subprocess.CompletedProcess[str]) -> None:
    assert (result.stdout, result.stderr) == ("", ""), result.stdout + result.stderr
    assert result.returncode == 0


NGINX_STUB = "[Unit]\nDescription=stub\n[Service]\nExecStart=/usr/local/bin/inodewatch\n"


@needs_analyze
def test_verify_the_service_prints_nothing(tmp_path):
    root = make_root(tmp_path, {"inodewatch.service": SERVICE.read_text()})
    assert_silent(analyze("verify", f"--root={root}", "/etc/systemd/system/inodewatch.service"))


@needs_analyze
@pytest.mark.parametrize("how", ["instance-copy", "instance-by-name", "template-file"])
def test_verify_the_template_prints_nothing(tmp_path, how):
    template = TEMPLATE.read_text()
    if how == "instance-copy":  # a copy named as an instance, next to the unit it watches
        root = make_root(tmp_path, {"inodewatch@nginx.service": template, "nginx.service": NGINX_STUB})
        target = "/etc/systemd/system/inodewatch@nginx.service"
    elif how == "instance-by-name":  # instantiated by systemd from the installed template
        root = make_root(tmp_path, {"inodewatch@.service": template, "nginx.service": NGINX_STUB})
        target = "inodewatch@nginx.service"
    else:
        root = make_root(tmp_path, {"inodewatch@.service": template})
        target = "/etc/systemd/system/inodewatch@.service"
    assert_silent(analyze("verify", f"--root={root}", target))


@needs_analyze
def test_verify_is_not_vacuous(tmp_path):
    """The harness would notice a bad unit: an unknown key (only a warning) and a missing
    ExecStart binary both print something."""
    bogus = SERVICE.read_text().replace("[Service]\n", "[Service]\nProtectEverything=yes\n")
    root = make_root(tmp_path / "a", {"inodewatch.service": bogus})
    result = analyze("verify", f"--root={root}", "/etc/systemd/system/inodewatch.service")
    assert "ProtectEverything" in result.stdout + result.stderr
    root = make_root(tmp_path / "b", {"inodewatch.service": SERVICE.read_text()}, with_binary=False)
    result = analyze("verify", f"--root={root}", "/etc/systemd/system/inodewatch.service")
    assert EXEC_PATH in result.stdout + result.stderr and result.returncode != 0


@needs_analyze
@pytest.mark.parametrize("name", ["inodewatch-scan.service", "inodewatch-scan.timer"])
def test_verify_the_scan_units_print_nothing(tmp_path, name):
    root = make_root(tmp_path, {SCAN.name: SCAN.read_text(), TIMER.name: TIMER.read_text()})
    assert_silent(analyze("verify", f"--root={root}", f"/etc/systemd/system/{name}"))


def exposure(*unit: str | Path) -> float:
    """`systemd-analyze security`'s overall figure for `unit`: a unit file's path, or
    ("--root=ROOT", NAME) for a unit with its drop-ins."""
    result = analyze("security", "--offline=true", "--no-pager", *map(str, unit))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-500:]
    return float(match.group(1))


@needs_analyze
@pytest.mark.parametrize("name", ["inodewatch.service", "inodewatch@nginx.service",
                                  "inodewatch-scan.service"])
def test_security_exposure_is_at_most_2(tmp_path, name):
    source = {"inodewatch.service": SERVICE, "inodewatch@nginx.service": TEMPLATE}.get(name, SCAN)
    unit = tmp_path / name
    shutil.copy(source, unit)
    level = exposure(unit)
    assert level <= MAX_EXPOSURE, f"{name}: exposure {level} > {MAX_EXPOSURE}"


@needs_analyze
def test_the_guards_drop_in_verifies_silently_and_costs_what_it_says(tmp_path):
    units = {"inodewatch@.service": TEMPLATE.read_text(), "nginx.service": NGINX_STUB}
    plain = exposure_in(make_root(tmp_path / "plain", units), "inodewatch@nginx.service")
    root = make_root(tmp_path / "guard", {**units, "inodewatch@nginx.service.d/guard.conf": GUARD.read_text()})
    assert_silent(analyze("verify", f"--root={root}", "inodewatch@nginx.service"))
    guarded = exposure_in(root, "inodewatch@nginx.service")
    assert plain <= MAX_EXPOSURE and plain < guarded <= MAX_GUARD_EXPOSURE, (plain, guarded)
    u = parse_unit(GUARD)
    assert values(u, "Service", "Environment") == ["INODEWATCH_OPTIONS=--guard"]
    assert values(u, "Service", "CapabilityBoundingSet") == ["CAP_SYS_ADMIN"]
    assert values(u, "Service", "AmbientCapabilities") == ["CAP_SYS_ADMIN"]


def exposure_in(root: Path, name: str) -> float:
    return exposure(f"--root={root}", name)


# --- the privileges the units grant are enough --------------------------------------------


def unit_credentials() -> list[str]:
    """setpriv arguments for what the unit gives the daemon: a uid from DynamicUser='s range,
    its capabilities as ambient ones and as the bounding set, no_new_privs."""
    u = parse_unit(SERVICE)
    wanted = [c.lower().removeprefix("cap_") for c in one(u, "Service", "AmbientCapabilities").split()]
    capset = "-all," + ",".join(f"+{c}" for c in wanted)
    uid = "61999"  # DynamicUser= allocates from 61184..65519
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps={capset}",
            f"--ambient-caps={capset}", f"--bounding-set={capset}", "--no-new-privs", "--"]


def require_setpriv() -> list[str]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to take on the unit's credentials")
    prefix = unit_credentials()
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot take on the unit's credentials here: {probe.stderr.strip()}")
    return prefix


@pytest.mark.integration
def test_the_units_privileges_see_an_overwrite_and_the_crash(start_demo, tmp_path):
    """As the unit runs it (not root: a dynamic uid with the four ambient capabilities), the
    daemon watches a root-owned demo in a 0700 directory (pytest's tmp dirs are): it sees
    the in-place overwrite and the SIGSEGV with its status from the proc connector."""
    prefix = require_setpriv()
    check = subprocess.run(
        [*prefix, sys.executable, "-c",
         "from inodewatch import caps; c = caps.effective_capabilities(); "
         "print(sorted(c)); print(caps.missing_features(c))"],
        capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT)
    assert check.stdout.splitlines() == [str(sorted(NEEDED_CAPS)), "[]"], check.stderr
    demo = start_demo("leak", interval_ms=200)
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    log = EventLog(logs / "events.json")
    daemon = subprocess.Popen(
        [*prefix, sys.executable, "-m", "inodewatch", "--pid", str(demo.pid), "--log-file", str(log.path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log.wait("target.attached", pid=demo.pid)
        demo.copy_lib("so2.so")
        log.wait("mapping.overwritten", pid=demo.pid)
        exited = log.wait("target.exited", pid=demo.pid)
        assert exited["signal"] in ("SIGSEGV", "SIGBUS")
        assert exited["status_source"] == "proc_connector"
        assert daemon.wait(timeout=TIMEOUT) == 0
        assert "watch.degraded" not in log.names()
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _out, err = daemon.communicate()
    assert err == ""


@pytest.mark.integration
def test_the_scan_units_privileges_find_a_root_demo_and_write_the_metrics(start_demo, tmp_path):
    """As inodewatch-scan.service runs it (a dynamic uid, its three capabilities, no new
    privileges): a root demo in a 0700 directory, its plugin replaced, is found, and the
    metrics file parses with prometheus-client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    prefix = [a.replace(",+net_admin", "") for a in require_setpriv()]
    demo = start_demo("leak")
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    state, cache = tmp_path / "state", tmp_path / "cache"
    for d in (state, cache):
        d.mkdir()
        os.chown(d, 61999, 61999)
    env = dict(os.environ, CACHE_DIRECTORY=str(cache))
    result = subprocess.run([*prefix, sys.executable, "-m", "inodewatch", "scan", "--all",
                             "--metrics-file", str(state / "scan.prom")],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"pid {demo.pid} (reload)" in result.stdout
    families = {f.name: f for f in text_string_to_metric_families((state / "scan.prom").read_text())}
    files = {s.labels["path"]: s.value for s in families["inodewatch_scan_stale_file_processes"].samples}
    assert files[os.fsdecode(demo.lib)] == 1
    deleted = {(s.labels["library_path"], s.labels["library_name"]): s.value
               for s in families["node_processes_linking_deleted_libraries"].samples}
    assert deleted[os.path.split(os.fsdecode(demo.lib))] == 1


MDWE_PROBE = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    print("unsupported", os.strerror(ctypes.get_errno())); sys.exit(0)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("not enforced"); sys.exit(0)
except OSError:
    pass
# everything the daemon loads and does, after the restriction
from inodewatch import daemon, exits, notify, scan, watch
from inodewatch.cli import main
watcher = watch.FileWatcher()
watcher.watch_file(os.fsencode(sys.executable))
watcher.close()
print("callback", ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)())  # a libffi closure, even
try:
    code = main(["scan", "--pid", str(os.getpid())])
except SystemExit as exc:
    code = exc.code
print("scan", code)
"""


def test_memory_deny_write_execute_does_not_break_python():
    """MemoryDenyWriteExecute=yes: the kernel's PR_SET_MDWE refuses W+X memory as systemd's
    seccomp rules do; the daemon's imports, pyinotify, ctypes and a scan still work."""
    result = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True,
                            cwd=REPO, timeout=TIMEOUT)
    if result.stdout.startswith(("unsupported", "not enforced")):
        pytest.skip(f"PR_SET_MDWE: {result.stdout.strip()}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "callback 7" and lines[-1] in ("scan 0", "scan 1"), result.stdout + result.stderr


def test_the_abstract_notify_socket_needs_the_hosts_network_namespace():
    """Why PrivateNetwork= stays off: an abstract socket bound on the host is not reachable
    from another network namespace."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux)")
    import socket
    import uuid

    name = f"inodewatch-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    send = ("from inodewatch.notify import Notifier\n"
            f"print(Notifier.from_environment({{'NOTIFY_SOCKET': '@{name}'}}).ready('x'))")
    try:
        same = subprocess.run([sys.executable, "-c", send], capture_output=True, text=True, cwd=REPO)
        assert same.stdout.strip() == "True" and sock.recv(64) == b"READY=1\nSTATUS=x"
        other = subprocess.run(["unshare", "--net", sys.executable, "-c", send],
                               capture_output=True, text=True, cwd=REPO)
        if other.returncode != 0:
            pytest.skip(f"unshare --net: {other.stderr.strip()}")
        assert other.stdout.strip() == "False"  # and it did not raise
    finally:
        sock.close()
