"""Where an event happened: every JSON line of the daemon names its host and boot (issue 12
item 4), so logs merged from a fleet keep pid 1234 of one machine apart from another's."""

from __future__ import annotations

import io
import json
import os

import pytest

from inodewatch.eventlog import LogSink, make_logger, origin


def test_origin_is_this_hosts_name_and_boot():
    where = origin()
    assert where["host"] == os.uname().nodename
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert where["boot_id"] == f.read().strip()


def test_every_json_line_ends_with_host_and_boot_id():
    out = io.StringIO()
    log = make_logger(LogSink(stream=out), "json", {"host": "web1", "boot_id": "b0"})
    log.info("daemon.started", version="x", targets=[])
    log.critical("mapping.overwritten", pid=7, path=b"/opt/so.so")
    for line in out.getvalue().splitlines():
        event = json.loads(line)
        assert list(event)[-2:] == ["host", "boot_id"]  # after what a reader looks for first
        assert (event["host"], event["boot_id"]) == ("web1", "b0")
        assert list(event)[:3] == ["timestamp", "level", "event"]


def test_a_console_is_read_where_it_runs():
    out = io.StringIO()
    make_logger(LogSink(stream=out), "console", {"host": "web1", "boot_id": "b0"}).info("daemon.started")
    assert "web1" not in out.getvalue()


@pytest.mark.integration
def test_the_daemons_log_file_names_host_and_boot_on_every_line(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    os.unlink(demo.lib)
    watcher.log.wait("mapping.deleted", pid=demo.pid)
    where = origin()
    events = watcher.log.read()
    assert {e["event"] for e in events} >= {"daemon.started", "target.attached", "mapping.deleted"}
    assert all((e["host"], e["boot_id"]) == (where["host"], where["boot_id"]) for e in events)
