"""The console log: one sentence per event, never a Python repr, colour by level only where
it is wanted (a terminal, no NO_COLOR, TERM not dumb), names escaped as everywhere."""

from __future__ import annotations

import io
import re

import pytest

from inodewatch.console import MAX_REMEMBERED, ConsoleRenderer, wants_colour
from inodewatch.eventlog import LogSink, make_logger
from inodewatch.events import NAMES

# One event of each kind, with the fields the daemon gives it (README's table)
TARGET = {"pid": 12098, "uid": 0, "mnt_ns": 4026531841, "unit": b"nginx.service"}
DIVERGENCE = {"path": b"/tmp/demo/B/so.so", "mapped_dev": "fe:00", "mapped_ino": 2154597,
              "perms": "r--p,r-xp,rw-p"}
SAMPLES = {
    "daemon.started": dict(version="0.1", targets=[], selectors=[b"exe=/usr/sbin/nginx"], mnt_ns=1),
    "daemon.stopped": dict(reason="SIGTERM", targets=[12098]),
    "daemon.error": dict(handler="Daemon.on_file_events", error="KeyError: 12",
                         traceback="Traceback (most recent call last):\n  ...\nKeyError: 12\n"),
    "target.attached": dict(TARGET, comm="nginx", exe=b"/usr/sbin/nginx",
                            cmdline=[b"nginx: worker process"], start_time="2026-11-27T09:20:45Z",
                            selector=b"exe=/usr/sbin/nginx", reattached=False),
    "target.exited": dict(TARGET, exit_code=None, signal="SIGSEGV", core_dumped=False,
                          status_source="proc_connector",
                          stale=[{"event": "mapping.overwritten", **DIVERGENCE}]),
    "target.lost": dict(pid=7, stale=[], detail="it ended while the daemon was not running: "
                                              "how it ended is unknown"),
    "mapping.deleted": dict(TARGET, **DIVERGENCE, content="unknown", content_reason="nothing at the path"),
    "mapping.replaced": dict(TARGET, **DIVERGENCE, disk_dev="fe:00", disk_ino=2154600,
                             content="different", mapped_build_id="ab" * 20, disk_build_id="cd" * 20),
    "mapping.renamed": dict(TARGET, **DIVERGENCE, new_path=b"/tmp/demo/B/old.so"),
    "mapping.missing": dict(TARGET, **DIVERGENCE),
    "mapping.overwritten": dict(TARGET, **DIVERGENCE, size_before=15472, size_after=None, truncated=False),
    "mapping.overwrite_closed": dict(TARGET, **DIVERGENCE, size_before=15472, size_after=23696,
                                     truncated=False),
    "mapping.write_refused": dict(TARGET, **DIVERGENCE, writer_pid=4242, writer_comm=b"cp",
                                  writer_exe=b"/usr/bin/cp",
                                  writer_cmdline=[b"cp", b"so2.so", b"/tmp/demo/B/so.so"],
                                  errno="ETXTBSY", flags="O_WRONLY|O_TRUNC",
                                  detail="replace the file instead"),
    "mapping.duplicated": dict(TARGET, path=b"/x.so", old_ino=12, new_ino=13, perms="r-xp"),
    "mapping.content": dict(TARGET, kind="replaced", **DIVERGENCE, content="identical"),
    "fd.content": dict(TARGET, kind="deleted", fd=4, **DIVERGENCE, content="different"),
    "mapping.reloaded": dict(TARGET, path=b"/x.so", old_ino=12, new_ino=13),
    "fd.deleted": dict(TARGET, fd=3, **DIVERGENCE, content="unknown"),
    "fd.replaced": dict(TARGET, fd=3, **DIVERGENCE, disk_ino=9, content="identical"),
    "fd.renamed": dict(TARGET, fd=3, **DIVERGENCE, new_path=b"/y"),
    "fd.missing": dict(TARGET, fd=3, **DIVERGENCE),
    "watch.overflow": dict(overflows=3, detail="inotify queue overflowed; re-reading every target"),
    "watch.degraded": dict(resource="inotify_watches", detail="12 paths of 2 targets are not watched",
                           unwatched=12, pids=[1, 2], max_watches=50),
    "watch.recovered": dict(resource="inotify_watches", detail="every path wanted is watched again"),
    "guard.started": dict(errno="ETXTBSY", helper_pid=4000),
    "guard.unjudged": dict(path=b"/tmp/demo/B/so.so", pids=[12098], writer_pid=0, writer_comm=None,
                           writer_exe=None, writer_cmdline=None, detail="its flags could not be read"),
    "guard.dropped": dict(dropped=3, detail="3 records lost"),
    "guard.stopped": dict(reason="the guard's helper ended (killed by signal 9)",
                          detail="the guard no longer runs"),
    "watch.gap": dict(gap_s=3.2, detail="the daemon did not run for 3.2 s"),
}
REPRS = re.compile(r"\bNone\b|\bFalse\b|\bTrue\b|\[\{'|\{'|b'|b\"")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def console(lines: dict[str, dict], terminal: bool = False) -> list[str]:
    out = Terminal() if terminal else io.StringIO()
    log = make_logger(LogSink(stream=out), "console")
    for name, fields in lines.items():
        getattr(log, "critical" if name == "mapping.overwritten" else "warning")(name, **fields)
    return out.getvalue().splitlines()


def test_every_event_of_the_readme_has_a_sentence_and_no_repr():
    assert set(SAMPLES) == set(NAMES)
    lines = console(SAMPLES)
    assert len(lines) == len(SAMPLES)
    for name, line in zip(SAMPLES, lines):
        assert not REPRS.search(line), line
        assert f" {name} " in line
    by_name = dict(zip(SAMPLES, lines))
    assert by_name["target.attached"].endswith(
        "target.attached          pid 12098 (nginx, nginx.service): attached: nginx: worker "
        "process (found by exe=/usr/sbin/nginx)")
    assert by_name["target.exited"].endswith(
        "pid 12098 (nginx, nginx.service): was killed by SIGSEGV, running 1 stale file: "
        "/tmp/demo/B/so.so")
    assert by_name["mapping.replaced"].endswith(  # its comm forgotten at its exit, above
        "pid 12098 (nginx.service): /tmp/demo/B/so.so was replaced: it runs inode "
        "2154597, the path now names inode 2154600; content different")
    assert by_name["mapping.overwritten"].split()[1] == "critical"
    assert "(15472 bytes before, being written): the process may crash" in by_name["mapping.overwritten"]
    assert by_name["fd.replaced"].endswith("; identical content, no restart needed")
    assert by_name["mapping.write_refused"].endswith(
        "pid 12098 (nginx.service): the guard refused pid 4242 (cp so2.so /tmp/demo/B/so.so) "
        "writing /tmp/demo/B/so.so (inode 2154597, O_WRONLY|O_TRUNC: ETXTBSY): it would have "
        "crashed the process; replace the file with mv or install instead")
    assert by_name["guard.unjudged"].endswith(
        "allowed pid 0 (?) to open /tmp/demo/B/so.so unjudged: its flags could not be read")
    assert by_name["daemon.started"].endswith("inodewatch 0.1 started, watching exe=/usr/sbin/nginx")
    assert by_name["watch.degraded"].endswith("inotify_watches: 12 paths of 2 targets are not watched")


def test_an_unknown_event_shows_its_fields_readably():
    (line,) = console({"some.future": dict(pid=3, a=None, b=False, c=True, d=[1, {"x": 2}], e_bytes="ff")})
    assert line.endswith("some.future              pid 3: c yes, d [1, {\"x\": 2}]")


def test_a_comm_is_forgotten_when_its_target_ends():
    renderer = ConsoleRenderer()
    renderer(None, "info", {"event": "target.attached", "pid": 5, "comm": "nginx"})
    assert "pid 5 (nginx):" in renderer(None, "info", {"event": "target.exited", "pid": 5, "exit_code": 0})
    assert "pid 5:" in renderer(None, "info", {"event": "mapping.deleted", "pid": 5, "path": "/x"})
    for pid in range(MAX_REMEMBERED + 10):  # a flood of attaches never grows it past the cap
        renderer.comms.get(pid) or renderer(None, "info", {"event": "target.attached", "pid": pid, "comm": "x"})
    assert len(renderer.comms) == MAX_REMEMBERED


@pytest.mark.parametrize(("isatty", "environ", "expected"), [
    (True, {}, True),
    (True, {"TERM": "xterm-256color"}, True),
    (True, {"NO_COLOR": "1"}, False),
    (True, {"NO_COLOR": ""}, True),  # no-color.org: set *and* not empty
    (True, {"TERM": "dumb"}, False),
    (False, {}, False),
])
def test_colour_only_where_wanted(isatty, environ, expected):
    assert wants_colour(isatty, environ) is expected


def test_colour_paints_the_level_alone(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    lines = console({"mapping.overwritten": SAMPLES["mapping.overwritten"],
                     "mapping.deleted": dict(SAMPLES["mapping.deleted"], path=b"/opt/\x1b[31mred.so")},
                    terminal=True)
    assert " \x1b[1;31mcritical\x1b[0m mapping.overwritten" in lines[0]
    assert " \x1b[33mwarning\x1b[0m  mapping.deleted" in lines[1]
    # the name's own escape stays escaped: the level's are the only ones
    assert lines[1].count("\x1b") == 2 and "/opt/\\x1b[31mred.so" in lines[1]
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b" not in "".join(console({"mapping.overwritten": SAMPLES["mapping.overwritten"]},
                                         terminal=True))
