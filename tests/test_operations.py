"""Operating the daemon: config file, metrics file."""

from __future__ import annotations

import os

import pytest

from conftest import run_cli, wait_for

pytestmark = pytest.mark.integration


def test_config_file_names_the_targets_and_the_log(start_demo, start_watcher, tmp_path, demo_build):
    config = tmp_path / "inodewatch.toml"
    config.write_text(f'exe = ["{demo_build / "reload"}"]\ninterval = 0.5\n')
    demo = start_demo("leak")
    watcher = start_watcher(extra=["--config", str(config)])
    event = watcher.log.wait("target.attached", pid=demo.pid)
    assert event["selector"] == f"exe={demo_build / 'reload'}"


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    config = tmp_path / "inodewatch.toml"
    config.write_text('interval = "fast"\n')
    result = run_cli("--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "'interval'" in result.stderr
    config.write_text('intervall = 1\n')
    result = run_cli("--config", str(config), "--pid", "1")
    assert result.returncode == 2 and "unknown key 'intervall'" in result.stderr


def test_metrics_file_parses_and_counts(start_demo, start_watcher, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    metrics = tmp_path / "inodewatch.prom"
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid, extra=["--metrics-file", str(metrics), "--interval", "0.2"])
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    watcher.log.wait("mapping.replaced", pid=demo.pid)

    def samples():
        found = {}
        for family in text_string_to_metric_families(metrics.read_text()):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def counted():
        s = samples()
        live = s.get(("inodewatch_divergences_live", (("kind", "replaced"), ("subject", "mapping"))))
        return s if live == 1 else None

    s = wait_for(counted, what="the metrics file to show the live replacement")
    assert s[("inodewatch_targets_watched", ())] == 1
    assert s[("inodewatch_events_total", (("event", "mapping.replaced"),))] == 1
    assert s[("inodewatch_events_total", (("event", "target.attached"),))] == 1
    assert not [p for p in os.listdir(tmp_path) if p.startswith("inodewatch.prom.")]


def test_unwritable_metrics_file_is_one_line_exit_2(start_demo, tmp_path):
    demo = start_demo("leak")
    result = run_cli("--pid", str(demo.pid), "--metrics-file", str(tmp_path / "no" / "x.prom"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_the_daemon_speaks_sd_notify_on_a_real_socket(start_demo, tmp_path):
    """READY=1 with a STATUS= once attached, WATCHDOG=1 pings, STOPPING=1 at the end: the
    datagrams systemd's Type=notify and WatchdogSec= wait for."""
    import socket
    import subprocess
    import sys

    from conftest import TIMEOUT, EventLog

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"\0inodewatch-test-{os.getpid()}"  # abstract, as systemd often uses
    receiver.bind(address)
    receiver.settimeout(TIMEOUT)
    demo = start_demo("leak")
    log = EventLog(tmp_path / "events.json")
    env = {**os.environ, "NOTIFY_SOCKET": "@" + address[1:], "WATCHDOG_USEC": "200000"}
    daemon = subprocess.Popen([sys.executable, "-m", "inodewatch", "--pid", str(demo.pid),
                               "--log-file", str(log.path)], env=env)
    try:
        ready = receiver.recv(4096).decode()
        assert ready.splitlines() == ["READY=1", "STATUS=watching 1 targets, 0 divergences live"]
        messages = [receiver.recv(4096).decode() for _ in range(3)]
        assert "WATCHDOG=1" in messages  # every WATCHDOG_USEC / 2
        os.unlink(demo.lib)
        log.wait("mapping.deleted", pid=demo.pid)
        wait_for(lambda: "1 divergences live" in receiver.recv(4096).decode(), what="the status")
        demo.proc.kill()
        assert daemon.wait(timeout=TIMEOUT) == 0
        rest = []
        receiver.settimeout(0.5)
        try:
            while True:
                rest.append(receiver.recv(4096).decode())
        except TimeoutError:
            pass
        assert rest[-1].splitlines() == ["STOPPING=1", "STATUS=all targets exited"]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        receiver.close()
