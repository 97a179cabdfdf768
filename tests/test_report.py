"""`inodewatch report`: hand-written log lines for each verdict, damaged and rotated logs,
hostile names, filters, JSON; and one real crash logged by the real daemon."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TIMEOUT, parse_lines
from inodewatch.reactor import GAP_THRESHOLD
from inodewatch.logread import read_events
from inodewatch.report import (
    ReportError,
    add_arguments,
    build_timelines,
    run,
    select,
    verdict,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SO = "/opt/demo/so.so"
HOST = os.uname().nodename  # what the real daemon logs as `host`
ATTACH = {"comm": "reload", "exe": "/opt/demo/reload", "cmdline": ["/opt/demo/reload"],
          "start_time": "2026-01-02T03:00:00Z"}


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line(seconds: float, event: str, pid: int | None = 38314, level: str = "info", **fields: Any) -> str:
    obj: dict[str, Any] = {"timestamp": stamp(seconds), "level": level, "event": event}
    if pid is not None:
        obj["pid"] = pid
    return json.dumps({**obj, **fields})


def attached(seconds: float, pid: int = 38314, **fields: Any) -> str:
    return line(seconds, "target.attached", pid, **{**ATTACH, **fields})


def exited(seconds: float, pid: int = 38314, signal: str | None = None, exit_code: int | None = None,
           stale: list[dict[str, Any]] | None = None, source: str = "proc_connector") -> str:
    return line(seconds, "target.exited", pid, "warning" if signal else "info", exit_code=exit_code,
                signal=signal, core_dumped=False, status_source=source, stale=stale or [])


OVERWRITTEN = {"path": SO, "mapped_dev": "fe:00", "mapped_ino": 2146358, "size_before": 15472,
               "size_after": 23696}
DELETED = {"path": SO, "mapped_dev": "fe:00", "mapped_ino": 2146358, "perms": "r--p,r-xp,rw-p"}
REPLACED = {**DELETED, "disk_dev": "fe:00", "disk_ino": 2146377}


def verdicts(*lines: str) -> list[str]:
    events, bad = parse_lines(x.encode() for x in lines)
    assert bad == 0
    return [verdict(t).text for t in build_timelines(events)]


def write(path: Path, lines: list[str], compress: bool = False) -> Path:
    data = "".join(x + "\n" for x in lines).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def report(*argv: str) -> str:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    assert run(parser.parse_args(argv), out) == 0
    return out.getvalue()


# --- verdicts ------------------------------------------------------------------------------


def test_killed_after_overwrite_names_the_file_the_delay_and_the_mapping():
    stale = [{"event": "mapping.overwritten", **OVERWRITTEN, "perms": "r-xp"}]
    assert verdicts(attached(0), line(1, "mapping.overwritten", **OVERWRITTEN),
                    exited(2.2, signal="SIGSEGV", stale=stale)) == [
        "pid 38314 (reload) was killed by SIGSEGV 1.2 s after /opt/demo/so.so "
        "(inode 2146358, mapped r-xp) was overwritten in place"]


def test_overwrite_perms_come_from_an_earlier_mapping_event_or_are_left_out():
    # the daemon's own overwrite events carry no perms, nor does its stale entry
    stale = [{"event": "mapping.overwritten", **OVERWRITTEN}]
    assert verdicts(attached(0), line(1, "mapping.overwritten", **OVERWRITTEN),
                    exited(1.05, signal="SIGBUS", stale=stale)) == [
        "pid 38314 (reload) was killed by SIGBUS 0.050 s after /opt/demo/so.so (inode 2146358) "
        "was overwritten in place"]
    other = {**OVERWRITTEN, "path": "/opt/demo/b.so", "mapped_ino": 7}
    text, = verdicts(attached(0), line(0.5, "mapping.deleted", **{**DELETED, "perms": "r-xp"}),
                     line(1, "mapping.overwritten", **other),
                     line(1.5, "mapping.overwritten", **OVERWRITTEN),
                     exited(2, signal="SIGSEGV", stale=[{"event": "mapping.overwritten", **other}]))
    # the last overwrite before the death is named; the other one is still listed
    assert text == ("pid 38314 (reload) was killed by SIGSEGV 0.500 s after /opt/demo/so.so "
                    "(inode 2146358, mapped r-xp) was overwritten in place, while running 1 stale "
                    "file: /opt/demo/b.so (overwritten in place)")


@pytest.mark.parametrize("signal", ["SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP", "SIGSYS"])
def test_every_fault_signal_after_an_overwrite_is_the_crash(signal):
    text, = verdicts(attached(0), line(1, "mapping.overwritten", **OVERWRITTEN),
                     exited(2, signal=signal))
    assert text.startswith(f"pid 38314 (reload) was killed by {signal} 1.0 s after /opt/demo/so.so")


def test_a_kill_or_an_exit_after_an_overwrite_is_not_blamed_on_it():
    """Seen on nginx: a `kill -9` of a worker 1.8 s after a (false) overwrite was reported as
    crashed_after_overwrite.  Only a fault signal is an overwrite's symptom: a SIGKILL, a
    SIGTERM or an exit gets its ordinary verdict, the overwrite listed as what it ran."""
    stale = [{"event": "mapping.overwritten", **OVERWRITTEN}]
    over = line(1, "mapping.overwritten", **OVERWRITTEN)
    events, _ = parse_lines(x.encode() for x in [
        attached(0), over, exited(2.8, signal="SIGKILL", stale=stale),
        attached(0, pid=7), line(1, "mapping.overwritten", pid=7, **OVERWRITTEN),
        exited(2, pid=7, signal="SIGTERM", stale=stale),
        attached(0, pid=8), line(1, "mapping.overwritten", pid=8, **OVERWRITTEN),
        exited(2, pid=8, exit_code=0, stale=stale)])
    assert [(r.verdict.outcome, r.verdict.text) for r in select(events)] == [
        ("killed", "pid 38314 (reload) was killed by SIGKILL, while running 1 stale file: "
                   "/opt/demo/so.so (overwritten in place)"),
        ("killed", "pid 7 (reload) was killed by SIGTERM, while running 1 stale file: "
                   "/opt/demo/so.so (overwritten in place)"),
        ("exited", "pid 8 (reload) exited with status 0, while running 1 stale file: "
                   "/opt/demo/so.so (overwritten in place)")]


def test_killed_without_overwrite_lists_what_it_was_running():
    stale = [{"event": "mapping.deleted", **DELETED}, {"event": "mapping.replaced", **REPLACED},
             {"event": "fd.deleted", "fd": 3, "path": "/var/log/app.log", "mapped_ino": 9}]
    assert verdicts(attached(0), exited(5, signal="SIGKILL", stale=stale),
                    attached(6, pid=7, comm="nginx"), exited(7, pid=7, signal="SIGTERM")) == [
        "pid 38314 (reload) was killed by SIGKILL, while running 2 stale files: "
        "/opt/demo/so.so (deleted, replaced), /var/log/app.log (fd 3, deleted)",
        "pid 7 (nginx) was killed by SIGTERM"]


def test_normal_and_unknown_exits():
    assert verdicts(attached(0), exited(1, exit_code=0),
                    attached(0, pid=8), exited(1, pid=8, exit_code=3,
                                               stale=[{"event": "mapping.deleted", **DELETED}]),
                    attached(0, pid=9), exited(1, pid=9, source="pidfd")) == [
        "pid 38314 (reload) exited with status 0",
        "pid 8 (reload) exited with status 3, while running 1 stale file: /opt/demo/so.so (deleted)",
        "pid 9 (reload) exited with an unknown status "
        "(seen through a pidfd, without the proc connector)"]


def test_still_running_old_code_at_the_end_of_the_log():
    assert verdicts(attached(0), line(1, "mapping.deleted", **DELETED),
                    line(1.01, "mapping.replaced", **REPLACED)) == [
        "pid 38314 (reload) was still running old code at the end of the log: "
        f"/opt/demo/so.so (deleted, replaced at {stamp(1.01)})"]
    assert verdicts(attached(0), line(1, "fd.deleted", fd=1, path="/tmp/app.log", mapped_ino=4)) == [
        "pid 38314 (reload) was still holding stale files open at the end of the log: "
        f"/tmp/app.log (fd 1, deleted at {stamp(1)})"]


def test_reloaded_after_it_was_replaced():
    assert verdicts(attached(0), line(1, "mapping.replaced", **REPLACED),
                    line(1.3, "mapping.reloaded", path=SO, old_ino=2146358, new_ino=2146377)) == [
        "pid 38314 (reload) reloaded /opt/demo/so.so (inode 2146358 -> 2146377) 0.300 s after it "
        "was replaced; still running at the end of the log"]


def test_nothing_diverged_and_a_reattach_reports_afresh():
    assert verdicts(attached(0)) == [
        "pid 38314 (reload) was still running at the end of the log; nothing diverged"]
    # the daemon restarted and no longer saw the divergence: it is gone
    assert verdicts(attached(0), line(1, "mapping.deleted", **DELETED), attached(2))[0].endswith(
        "nothing diverged")


def test_a_restored_reattach_keeps_what_was_diverged_and_a_lost_target_ends_its_life():
    """A daemon restarted with its state file re-attaches with restored: true and does not
    repeat what it logged before: the divergence is still live.  A target gone meanwhile is
    target.lost: its life ends there, how is unknown."""
    assert verdicts(attached(0), line(1, "mapping.deleted", **DELETED), attached(2, restored=True)) == [
        "pid 38314 (reload) was still running old code at the end of the log: "
        f"/opt/demo/so.so (deleted at {stamp(1)})"]
    lives = build_timelines(parse_lines(x.encode() for x in [
        attached(0), line(1, "mapping.deleted", **DELETED),
        line(5, "target.lost", level="warning", detail="it ended while the daemon was not running",
             stale=[{"event": "mapping.deleted", **DELETED}]),
        attached(6, comm="other")])[0])
    assert [(verdict(t).outcome, verdict(t).text) for t in lives] == [
        ("lost", "pid 38314 (reload) ended while the daemon was not running, how is unknown, "
                 "while running 1 stale file: /opt/demo/so.so (deleted)"),
        ("running", "pid 38314 (other) was still running at the end of the log; nothing diverged")]


def test_pid_reuse_starts_a_new_life():
    lives = build_timelines(parse_lines(x.encode() for x in [
        attached(0), exited(1, signal="SIGKILL"), attached(2, comm="other"),
        attached(3, comm="third", start_time="2026-01-02T04:00:00Z"),
        attached(4, comm="third", start_time="2026-01-02T04:00:00Z")])[0])
    assert [(t.pid, t.comm, len(t.events)) for t in lives] == [
        (38314, "reload", 2), (38314, "other", 1), (38314, "third", 2)]
    assert [verdict(t).outcome for t in lives] == ["killed", "running", "running"]


# --- the daemon's pauses ---------------------------------------------------------------------


def gap(seconds: float, gap_s: object = 27.3) -> str:
    return line(seconds, "watch.gap", None, "warning", gap_s=gap_s,
                detail="the daemon did not run for 27.3 s")


def test_no_interval_is_computed_across_a_pause_of_the_daemon():
    """SIGSTOP the daemon after it logged the write, the crash is logged when it resumes: the
    0.002 s between the two lines is not how long the process lived after the write."""
    assert verdicts(attached(0), line(1, "mapping.overwritten", **OVERWRITTEN), gap(28.3),
                    exited(28.302, signal="SIGSEGV")) == [
        "pid 38314 (reload) was killed by SIGSEGV after /opt/demo/so.so (inode 2146358) was "
        "overwritten in place (the interval is unknown: the daemon was paused 27.3 s in between)"]
    # two pauses in between: their lengths add up; a gap_s that is not a number has none
    assert verdicts(attached(0), line(1, "mapping.overwritten", **OVERWRITTEN), gap(30, 3),
                    gap(40, 4.5), exited(41, signal="SIGSEGV"))[0].endswith(
        "(the interval is unknown: the daemon was paused 7.5 s in between)")
    assert verdicts(attached(0), line(1, "mapping.overwritten", **OVERWRITTEN), gap(30, "long"),
                    exited(41, signal="SIGSEGV"))[0].endswith(
        "(the interval is unknown: the daemon was paused in between)")


def test_what_is_logged_as_the_daemon_resumes_has_no_known_time():
    """The daemon was stopped, the file written and the process killed meanwhile: its re-read at
    the resume logs both with the resume's time (the issue's "0.002 s after")."""
    assert verdicts(attached(0), gap(30), line(30.001, "mapping.overwritten", **OVERWRITTEN),
                    exited(30.003, signal="SIGSEGV")) == [
        "pid 38314 (reload) was killed by SIGSEGV after /opt/demo/so.so (inode 2146358) was "
        "overwritten in place (the interval is unknown: the write was logged as the daemon "
        "resumed from a pause of 27.3 s)"]
    # well after the resume, the daemon was watching again: the interval is known
    assert verdicts(attached(0), gap(30), line(40, "mapping.overwritten", **OVERWRITTEN),
                    exited(40.5, signal="SIGSEGV"))[0].endswith(
        "0.500 s after /opt/demo/so.so (inode 2146358) was overwritten in place")


def test_a_reload_across_a_pause_has_no_known_delay():
    assert verdicts(attached(0), line(1, "mapping.replaced", **REPLACED), gap(31),
                    line(31.01, "mapping.reloaded", path=SO, old_ino=2146358, new_ino=2146377)) == [
        "pid 38314 (reload) reloaded /opt/demo/so.so (inode 2146358 -> 2146377) after it was "
        "replaced (the interval is unknown: the daemon was paused 27.3 s in between); still "
        "running at the end of the log"]
    assert verdicts(attached(0), gap(31), line(31.5, "mapping.replaced", **REPLACED),
                    line(32, "mapping.reloaded", path=SO, old_ino=2146358, new_ino=2146377))[0] == (
        "pid 38314 (reload) reloaded /opt/demo/so.so (inode 2146358 -> 2146377) after it was "
        "replaced (the interval is unknown: the replacement was logged as the daemon resumed "
        "from a pause of 27.3 s); still running at the end of the log")


def test_a_pause_is_listed_among_the_daemon_warnings(tmp_path):
    log = write(tmp_path / "events.json", [attached(0), gap(30), exited(31, exit_code=0)])
    out = report(str(log))
    assert out.endswith("daemon warnings:\n"
                        f"  {stamp(30)}  watch.gap            gap_s=27.3 detail=the daemon did not "
                        "run for 27.3 s\n1 life: 1 exited\nread 1 file, 3 events, skipped 0 bad lines\n")
    summary = json.loads(report(str(log), "--json").splitlines()[-1])
    assert [w["event"] for w in summary["warnings"]] == ["watch.gap"]


# --- whose process, in which mount namespace --------------------------------------------------

HOST_NS, OWN_NS = 4026531841, 4026532577


def started(seconds: float, mnt_ns: int = HOST_NS) -> str:
    return line(seconds, "daemon.started", None, version="0.1.0", targets=[], mnt_ns=mnt_ns)


def test_a_target_in_another_mount_namespace_is_said_so(tmp_path):
    """A user in `unshare -Urm` can bind her own file over any path in her namespace: the
    crash story is about her file, whatever the path says."""
    theirs = {"uid": 1001, "mnt_ns": OWN_NS}
    log = write(tmp_path / "events.json", [
        started(0), attached(1, **theirs), line(2, "mapping.overwritten", **OVERWRITTEN, **theirs),
        line(2.5, "target.exited", level="warning", exit_code=None, signal="SIGSEGV",
             core_dumped=False, status_source="proc_connector", stale=[], **theirs)])
    out = report(str(log))
    assert out.startswith("pid 38314 (reload, uid 1001)\n")
    assert ("  verdict: pid 38314 (reload, uid 1001) was killed by SIGSEGV 0.500 s after "
            "/opt/demo/so.so (inode 2146358) was overwritten in place; note: this process runs in "
            f"another mount namespace (mnt:[{OWN_NS}]) than the daemon's (mnt:[{HOST_NS}]): its "
            "/opt/demo/so.so is not necessarily the host's file\n") in out
    target = json.loads(report(str(log), "--json").splitlines()[0])
    assert (target["uid"], target["mnt_ns"], target["foreign_namespace"]) == (1001, OWN_NS, True)


def test_a_target_in_the_daemons_namespace_or_an_unknown_one_has_no_note(tmp_path):
    ours = {"uid": 0, "mnt_ns": HOST_NS}
    lines = [started(0), attached(1, **ours), line(2, "mapping.deleted", **DELETED, **ours)]
    target = json.loads(report(str(write(tmp_path / "a.json", lines)), "--json").splitlines()[0])
    assert (target["uid"], target["foreign_namespace"]) == (0, False)
    assert "note:" not in target["verdict"] and target["verdict"].startswith("pid 38314 (reload, uid 0)")
    # the daemon.started line rotated away: whose namespace it was is unknown, nothing said
    target = json.loads(report(str(write(tmp_path / "b.json", lines[1:])), "--json").splitlines()[0])
    assert target["foreign_namespace"] is None and "note:" not in target["verdict"]
    # an old log without uid or mnt_ns: as before
    target = json.loads(report(str(write(tmp_path / "c.json", [attached(1)])), "--json").splitlines()[0])
    assert (target["uid"], target["mnt_ns"], target["foreign_namespace"]) == (None, None, None)


def test_the_note_names_what_the_verdict_names():
    theirs = {"uid": 1001, "mnt_ns": OWN_NS}
    other = {**DELETED, "path": "/opt/demo/b.so", "mapped_ino": 7}
    text, = verdicts(started(0), attached(1, **theirs), line(2, "mapping.deleted", **DELETED, **theirs),
                     line(3, "mapping.deleted", **other, **theirs))
    assert text.endswith("(mnt:[4026531841]): the files named here are not necessarily the host's")
    text, = verdicts(started(0), attached(1, **theirs))
    assert text == ("pid 38314 (reload, uid 1001) was still running at the end of the log; nothing "
                    f"diverged; note: this process runs in another mount namespace (mnt:[{OWN_NS}]) "
                    f"than the daemon's (mnt:[{HOST_NS}]): the paths in its events are not "
                    "necessarily the host's files")



def test_the_same_pid_on_two_hosts_is_two_targets(tmp_path):
    """Two hosts' logs read together (issue 12 item 4): pid 1234 on web-1 and pid 1234 on
    web-2 are two processes, interleaved in time.  Each host's daemon.started and watch.gap
    are its own: web-2's pause says nothing of web-1's crash, and a target is in another
    mount namespace only against its own host's daemon."""
    def on(host: str, seconds: float, event: str, pid: int | None = 1234, **fields: Any) -> str:
        return line(seconds, event, pid, **fields, host=host, boot_id=f"boot-{host}")
    web1 = write(tmp_path / "web-1.json", [
        on("web-1", 0, "daemon.started", None, mnt_ns=HOST_NS),
        on("web-1", 1, "target.attached", **ATTACH, uid=0, mnt_ns=HOST_NS),
        on("web-1", 2, "mapping.overwritten", **OVERWRITTEN, mnt_ns=HOST_NS),
        on("web-1", 3, "target.exited", exit_code=None, signal="SIGSEGV", core_dumped=False,
           status_source="proc_connector", stale=[], mnt_ns=HOST_NS)])
    web2 = write(tmp_path / "web-2.json", [
        on("web-2", 0, "daemon.started", None, mnt_ns=OWN_NS),
        on("web-2", 1.5, "target.attached", **ATTACH, uid=33, mnt_ns=HOST_NS),
        on("web-2", 2.5, "watch.gap", None, level="warning", gap_s=5.0),
        on("web-2", 2.6, "mapping.deleted", **DELETED, mnt_ns=HOST_NS)])
    out = report(str(web1), str(web2))
    verdicts_seen = [x for x in out.splitlines() if x.startswith("  verdict: ")]
    assert verdicts_seen == [
        "  verdict: pid 1234 (reload, uid 0) on web-1 was killed by SIGSEGV 1.0 s after "
        "/opt/demo/so.so (inode 2146358) was overwritten in place",
        "  verdict: pid 1234 (reload, uid 33) on web-2 was still running old code at the end of "
        "the log: /opt/demo/so.so (deleted at 2026-01-02T03:04:07.600000Z); note: this process "
        f"runs in another mount namespace (mnt:[{HOST_NS}]) than the daemon's (mnt:[{OWN_NS}]): "
        "its /opt/demo/so.so is not necessarily the host's file"]
    assert "pid 1234 (reload, uid 0) on web-1\n" in out and "pid 1234 (reload, uid 33) on web-2\n" in out
    targets = [json.loads(x) for x in report(str(web2), str(web1), "--json").splitlines()[:2]]
    assert [(x["host"], x["pid"], x["outcome"], x["foreign_namespace"]) for x in targets] == [
        ("web-1", 1234, "crashed_after_overwrite", False), ("web-2", 1234, "running_stale", True)]
    # an old log, without host: no "on", `host` null, as before
    target = json.loads(report(str(write(tmp_path / "old.json", [attached(1)])), "--json").splitlines()[0])
    assert target["host"] is None and target["verdict"].startswith("pid 38314 (reload) was")


# --- reading -------------------------------------------------------------------------------


def test_rotated_files_in_any_order_are_read_oldest_first(tmp_path):
    oldest = write(tmp_path / "events.json.2.gz", [line(0, "daemon.started", None), attached(1)],
                   compress=True)
    older = write(tmp_path / "events.json.1", [line(2, "mapping.deleted", **DELETED),
                                               line(3, "mapping.replaced", **REPLACED)])
    # the same microsecond at both sides of a rotation keeps the files' order
    current = write(tmp_path / "events.json", [line(3, "mapping.overwritten", **OVERWRITTEN),
                                               exited(4, signal="SIGSEGV")])
    names = ["daemon.started", "target.attached", "mapping.deleted", "mapping.replaced",
             "mapping.overwritten", "target.exited"]
    paths = [str(p) for p in (oldest, older, current)]
    for order in ([2, 1, 0], [0, 2, 1], [1, 0, 2]):
        events, skipped = read_events([paths[i] for i in order])
        assert ([e.name for e in events], skipped) == (names, 0)
    out = report(*reversed(paths))
    assert "killed by SIGSEGV 1.0 s after /opt/demo/so.so" in out
    assert out.endswith("read 3 files, 6 events, skipped 0 bad lines\n")


def test_bad_lines_are_counted_and_skipped(tmp_path):
    good = [attached(0), exited(2, exit_code=0)]
    bad = [
        line(1, "mapping.deleted", **DELETED)[:40],  # truncated
        "garbage \x00 here",
        "[1, 2, 3]",
        '"just a string"',
        json.dumps({"timestamp": stamp(1), "level": "info"}),  # no event
        json.dumps({"event": "mapping.deleted", "pid": 1}),  # no timestamp
        json.dumps({"event": "x", "timestamp": "yesterday"}),
        json.dumps({"event": "x", "timestamp": 17}),
        json.dumps({"event": "x", "timestamp": stamp(1), "pid": "38314"}),
        json.dumps({"event": "x", "timestamp": stamp(1), "pid": True}),
        '{"event": "x", "timestamp": "%s", "size_after": NaN}' % stamp(1),
        "[" * 100_000,
    ]
    data = b"\n".join([good[0].encode(), *(b.encode() for b in bad),
                       b'{"event": "mapping.deleted", "path": "/opt/\xff\xfe.so"}',  # not UTF-8
                       b"\xc3\x28 \x80\x81", b"", b"   ", good[1].encode(), b'{"event": "cut'])
    log = tmp_path / "events.json"
    log.write_bytes(data)
    events, skipped = read_events([str(log)])
    assert [e.name for e in events] == ["target.attached", "target.exited"]
    assert skipped == len(bad) + 3  # blank lines are not bad lines
    assert report(str(log)).endswith(f"read 1 file, 2 events, skipped {skipped} bad lines\n")


def test_a_truncated_gzip_keeps_its_lines_and_counts_the_damage(tmp_path):
    lines = [attached(i / 100) for i in range(2000)]
    whole = gzip.compress("".join(x + "\n" for x in lines).encode())
    log = tmp_path / "events.json.1.gz"
    log.write_bytes(whole[:len(whole) // 2])
    events, skipped = read_events([str(log)])
    assert 0 < len(events) < len(lines) and skipped == 1
    assert [e.fields for e in events] == [json.loads(x) for x in lines[:len(events)]]
    log.write_bytes(b"\x1f\x8b" + bytes(random.Random(1).randrange(256) for _ in range(500)))
    assert read_events([str(log)]) == ([], 1)


def test_a_missing_or_unreadable_log_is_a_one_line_error(tmp_path):
    for path, reason in ((tmp_path / "nope.json", "No such file or directory"),
                         (tmp_path, "Is a directory")):
        with pytest.raises(ReportError) as err:
            report(str(path))
        assert str(err.value) == f"cannot read {path}: {reason}"
    log = write(tmp_path / "events.json", [attached(0)])
    with pytest.raises(ReportError, match="--since is after --until"):
        report(str(log), "--since", stamp(5), "--until", stamp(1))


# --- output --------------------------------------------------------------------------------


HOSTILE = "/opt/\x1b[31mred\x1b]0;title\x07\n\u202e.so"


def test_control_characters_from_the_log_are_escaped_in_text(tmp_path):
    evil = {**DELETED, "path": HOSTILE, "path_bytes": HOSTILE.encode().hex()}
    log = write(tmp_path / "events.json", [
        attached(0, comm="re\x1bload", cmdline=["/opt/x\n", "--lib", HOSTILE]),
        line(1, "mapping.deleted", **evil),
        line(1.5, "mapping.renamed", path=HOSTILE, new_path=HOSTILE + ".old", mapped_ino=1),
        line(1.6, "mapping.overwritten", **{**OVERWRITTEN, "path": HOSTILE}),
        line(1.7, "watch.degraded", None, "warning", detail="limit\x1b[2J"),
        exited(2, signal="SIG\x1bSEGV", stale=[{"event": "mapping.deleted", **evil}]),
        line(3, "x\x1b.y", 5, weird="\x9b\u2067", nested={"k": ["\x07"]})])
    out = report(str(log))
    assert all(ch.isprintable() or ch == "\n" for ch in out), repr(out)
    assert "\\x1b[31mred\\x1b]0;title\\x07\\x0a\\u202e.so" in out
    # not a fault signal's name: no crash verdict, but every name in it escaped
    assert ("pid 38314 (re\\x1bload) was killed by SIG\\x1bSEGV, while running 1 stale file: "
            "/opt/\\x1b[31mred") in out
    assert "limit\\x1b[2J" in out and "\\x9b\\u2067" in out


def test_pid_since_and_until_filter_the_report(tmp_path):
    log = write(tmp_path / "events.json", [
        attached(0), attached(0, pid=7), line(1, "mapping.replaced", **REPLACED),
        line(2, "mapping.replaced", pid=7, **REPLACED),
        line(3, "mapping.overwritten", **OVERWRITTEN), exited(4, signal="SIGSEGV"),
        line(5, "daemon.stopped", None, reason="SIGTERM", targets=[7])])
    out = report(str(log), "--pid", "7")
    assert "pid 7 (reload)" in out and "pid 38314" not in out
    # --since trims the timeline, not the history: the target is still judged on it all
    out = report(str(log), "--since", stamp(2.5))
    assert "pid 7" not in out and "target.attached" not in out
    assert "was killed by SIGSEGV 1.0 s after /opt/demo/so.so" in out
    assert out.count("mapping.") == 1
    # --until judges the targets as they were then; naive times are UTC, offsets are understood
    until = (T0 + timedelta(seconds=1.5)).astimezone(timezone(timedelta(hours=2)))
    out = report(str(log), "--until", until.isoformat())
    assert ("verdict: pid 38314 (reload) was still running old code at "
            f"{stamp(1.5)}: /opt/demo/so.so (replaced at {stamp(1)})") in out
    assert "verdict: pid 7 (reload) was still running at " + stamp(1.5) in out
    naive = (T0 + timedelta(seconds=1.5)).replace(tzinfo=None).isoformat()
    assert report(str(log), "--until", naive) == out
    assert report(str(log), "--since", stamp(6)).startswith("no target events\n")


def test_a_bad_time_is_a_usage_error(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["x.json", "--since", "last tuesday"])
    assert "not an ISO 8601 time: 'last tuesday'" in capsys.readouterr().err
    midnight = T0.replace(hour=0, minute=0, second=0)
    assert parser.parse_args(["x.json", "--since", "2026-01-02"]).since == midnight


def test_json_is_one_target_per_line_then_a_summary(tmp_path):
    log = write(tmp_path / "events.json", [
        attached(0), line(0.5, "watch.degraded", None, "warning", detail="polling"),
        line(1, "mapping.overwritten", **{**OVERWRITTEN, "path": HOSTILE}), exited(2, signal="SIGSEGV"),
        attached(3, pid=7), "not json"])
    out = report(str(log), "--json")
    out.encode("ascii")
    first, second, summary = map(json.loads, out.splitlines())
    assert first["type"] == "target" and first["pid"] == 38314 and first["comm"] == "reload"
    assert first["outcome"] == "crashed_after_overwrite"
    assert "SIGSEGV" in first["verdict"] and "\\x1b" in first["verdict"]
    assert [e["event"] for e in first["timeline"]] == ["target.attached", "mapping.overwritten",
                                                       "target.exited"]
    assert first["timeline"][1]["path"] == HOSTILE  # the timeline is the log, lossless
    assert (second["pid"], second["outcome"]) == (7, "running")
    assert summary == {"type": "summary", "files": 1, "events": 5, "skipped": 1, "targets": 2,
                       "outcomes": {"crashed_after_overwrite": 1, "running": 1},
                       "warnings": [json.loads(line(0.5, "watch.degraded", None, "warning",
                                                         detail="polling"))]}


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),  # the daemon never logs NaN: not JSON
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
names = st.sampled_from(["target.attached", "target.exited", "mapping.deleted", "mapping.replaced",
                         "mapping.renamed", "mapping.overwritten", "mapping.reloaded", "fd.deleted",
                         "watch.degraded", "x"])
keys = st.sampled_from(["path", "new_path", "fd", "mapped_ino", "old_ino", "new_ino", "perms", "comm",
                        "cmdline", "signal", "exit_code", "core_dumped", "status_source", "stale",
                        "start_time", "level", "detail"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), names, st.none() | st.integers(1, 3),
                          st.dictionaries(keys, values, max_size=6)), max_size=8))
def test_any_well_formed_event_with_any_fields_never_crashes_the_report(entries):
    lines = [json.dumps({**fields, "timestamp": stamp(t), "event": name}
                        | ({"pid": pid} if pid is not None else {})) for t, name, pid, fields in entries]
    events, bad = parse_lines(x.encode() for x in lines)
    assert bad == 0
    for r in select(events):
        assert r.verdict.text.isprintable()


# --- a real crash --------------------------------------------------------------------------


@pytest.mark.integration
def test_a_real_cp_in_place_crash_is_told_as_such(start_demo, start_watcher, tmp_path):
    demo = start_demo("leak", interval_ms=200)
    watcher = start_watcher(demo.pid)
    demo.copy_lib("so2.so")
    watcher.log.wait("target.exited", pid=demo.pid)
    assert watcher.proc.wait(timeout=TIMEOUT) == 0  # the last target gone, the daemon stopped
    # rotate the real log: the first half compressed, as logrotate would leave it
    lines = watcher.log.path.read_bytes().splitlines(keepends=True)
    rotated = tmp_path / "events.json.1.gz"
    rotated.write_bytes(gzip.compress(b"".join(lines[:2])))
    watcher.log.path.write_bytes(b"".join(lines[2:]))
    paths = [str(watcher.log.path), str(rotated)]

    out = report(*paths, "--pid", str(demo.pid))
    verdict_line = next(x for x in out.splitlines() if x.startswith("  verdict: "))
    # the real daemon logs whose process it is and where: the uid and host are in the verdict
    assert verdict_line.startswith(
        f"  verdict: pid {demo.pid} (reload, uid {os.getuid()}) on {HOST} was killed by SIG")
    assert any(f"killed by {sig} " in verdict_line for sig in ("SIGSEGV", "SIGBUS"))
    assert f"after {os.fsdecode(demo.lib)} (inode {os.stat(demo.lib).st_ino}" in verdict_line
    assert verdict_line.endswith("was overwritten in place")
    assert out.endswith(f"read 2 files, {len(lines)} events, skipped 0 bad lines\n")

    target, summary = map(json.loads, report(*paths, "--json").splitlines())
    assert (target["pid"], target["outcome"]) == (demo.pid, "crashed_after_overwrite")
    # overwrite_closed: cp closed the file before the demo's next tick crashed it, as a rule
    assert [e["event"] for e in target["timeline"] if e["event"] != "mapping.overwrite_closed"] == [
        "target.attached", "mapping.overwritten", "target.exited"]
    assert (summary["files"], summary["skipped"], summary["targets"]) == (2, 0, 1)


def _paused(watcher, stimulus) -> None:
    """SIGSTOP the daemon, do `stimulus`, keep it stopped past the gap threshold, SIGCONT."""
    watcher.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        stimulus()
        # The pause itself is the stimulus: it must outlast the gap threshold.
        time.sleep(max(0.0, GAP_THRESHOLD + 0.5 - (time.monotonic() - stopped)))
    finally:
        watcher.proc.send_signal(signal.SIGCONT)


@pytest.mark.integration
def test_a_crash_while_the_daemon_was_paused_has_no_interval(start_demo, start_watcher):
    """The write is logged, then the daemon is stopped and the process crashes: the exit is
    logged at the resume, after watch.gap.  The report names the pause, not "0.002 s"."""
    demo = start_demo("leak", interval_ms=60_000)  # ticks only when told
    watcher = start_watcher(demo.pid, extra=["--interval", "0.2"])
    demo.copy_lib("so2.so")
    watcher.log.wait("mapping.overwritten", pid=demo.pid)

    def crash() -> None:
        demo.proc.send_signal(signal.SIGUSR1)  # its next dlopen runs the overwritten code
        demo.wait_exit()
    _paused(watcher, crash)
    watcher.log.wait("target.exited", pid=demo.pid)
    assert watcher.proc.wait(timeout=TIMEOUT) == 0
    names = watcher.log.names()
    assert names.index("mapping.overwritten") < names.index("watch.gap") < names.index("target.exited")
    out = report(str(watcher.log.path))
    verdict_line = next(x for x in out.splitlines() if x.startswith("  verdict: "))
    assert re.fullmatch(
        rf"  verdict: pid {demo.pid} \(reload, uid {os.getuid()}\) on {re.escape(HOST)} was killed by "
        rf"SIG(SEGV|BUS) after "
        rf"{re.escape(os.fsdecode(demo.lib))} \(inode \d+[^)]*\) was overwritten in place "
        r"\(the interval is unknown: the daemon was paused \d+\.\d s in between\)", verdict_line)
    assert "daemon warnings:" in out and "watch.gap" in out.split("daemon warnings:")[1]


@pytest.mark.integration
def test_a_write_and_a_crash_during_a_pause_have_no_interval(start_demo, start_watcher):
    """The issue's case: both happen while the daemon is stopped, both are logged at the
    resume with its time, milliseconds apart."""
    demo = start_demo("leak", interval_ms=100)
    watcher = start_watcher(demo.pid, extra=["--interval", "0.2"])

    def overwrite_and_crash() -> None:
        demo.copy_lib("so2.so")
        demo.wait_exit()
    _paused(watcher, overwrite_and_crash)
    watcher.log.wait("target.exited", pid=demo.pid)
    assert watcher.proc.wait(timeout=TIMEOUT) == 0
    out = report(str(watcher.log.path))
    verdict_line = next(x for x in out.splitlines() if x.startswith("  verdict: "))
    assert re.search(r"was overwritten in place \(the interval is unknown: the write was logged as "
                     r"the daemon resumed from a pause of \d+\.\d s\)$", verdict_line), verdict_line


@pytest.mark.integration
def test_a_spoofed_plugin_in_a_users_own_namespace_is_told_as_hers(attacker, demo_build,
                                                                   start_watcher):
    """The issue's spoof: a user in `unshare -Urm` binds her own .so over a root-owned plugin
    path, runs the demo on it, overwrites her copy: the crash story names the real path, and
    the report says the path is hers, in her mount namespace."""
    base = Path(tempfile.mkdtemp(prefix="iw-spoof-"))
    try:
        base.chmod(0o755)
        real = base / "plugins" / "so.so"  # the host's plugin, root's, untouched
        real.parent.mkdir(mode=0o755)
        shutil.copy(demo_build / "so1.so", real)
        home = base / "home"
        home.mkdir()
        for name in ("reload", "so1.so", "so2.so"):
            shutil.copy(demo_build / name, home / name)
        mine = home / "mine.so"
        shutil.copy(demo_build / "so1.so", mine)
        for path in (home, *home.iterdir()):
            os.chown(path, attacker.uid, attacker.gid)
        script = (f"mount --bind {mine} {real} && exec {home}/reload --mode leak "
                  f"--interval-ms 100 --lib {real}")
        host = subprocess.Popen([*attacker.argv, "unshare", "-Urm", "sh", "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert host.stdout is not None
            while b"so1: version 1" not in host.stdout.readline():
                assert host.poll() is None, "the demo in its own namespace did not start"
            watcher = start_watcher(host.pid)
            shutil.copyfile(home / "so2.so", mine)  # her copy, written in place
            watcher.log.wait("target.exited", pid=host.pid)
            assert watcher.proc.wait(timeout=TIMEOUT) == 0
        finally:
            host.kill()
            host.wait()
            if host.stdout:
                host.stdout.close()
        own_ns, theirs = os.stat("/proc/self/ns/mnt").st_ino, watcher.log.find("target.attached")
        assert theirs is not None and theirs["mnt_ns"] != own_ns
        out = report(str(watcher.log.path))
        verdict_line = next(x for x in out.splitlines() if x.startswith("  verdict: "))
        assert re.fullmatch(
            rf"  verdict: pid {host.pid} \(reload, uid {attacker.uid}\) on {re.escape(HOST)} was killed "
            rf"by SIG(SEGV|BUS) "
            rf"[\d.]+ s after {re.escape(str(real))} \(inode (\d+), mapped [^)]+\) was overwritten "
            rf"in place; note: this process runs in another mount namespace "
            rf"\(mnt:\[{theirs['mnt_ns']}\]\) than the daemon's \(mnt:\[{own_ns}\]\): its "
            rf"{re.escape(str(real))} is not necessarily the host's file", verdict_line), verdict_line
        inode = int(re.search(r"\(inode (\d+),", verdict_line).group(1))
        assert inode == mine.stat().st_ino != real.stat().st_ino  # hers, not the host's
        target = json.loads(report(str(watcher.log.path), "--json").splitlines()[0])
        assert (target["uid"], target["foreign_namespace"]) == (attacker.uid, True)
    finally:
        shutil.rmtree(base)


def test_two_versions_loaded_at_once_is_a_state_of_its_own():
    dup = {"path": SO, "old_ino": 2146358, "new_ino": 2146377, "perms": "r--p,r-xp,rw-p"}
    reports = select(parse_lines(x.encode() for x in [
        attached(0), line(1, "mapping.deleted", **DELETED), line(1, "mapping.replaced", **REPLACED),
        line(2, "mapping.duplicated", **dup),
        attached(0, pid=7), line(1, "mapping.duplicated", pid=7, **dup),
        line(3, "mapping.reloaded", pid=7, path=SO, old_ino=2146358, new_ino=2146377)])[0])
    assert [(r.verdict.outcome, r.verdict.text) for r in reports] == [
        ("running_duplicated", "pid 38314 (reload) was still running two versions of "
                               "/opt/demo/so.so (inode 2146358 and 2146377) at once at the end of the log"),
        ("reloaded", "pid 7 (reload) reloaded /opt/demo/so.so (inode 2146358 -> 2146377) 2.0 s after "
                     "it was loaded twice, inode 2146358 beside 2146377; still running at the end of the log")]
    assert "inode 2146358 and inode 2146377 both mapped [r--p,r-xp,rw-p]" in report_text(reports)


def report_text(reports) -> str:
    """The timelines' detail columns (render_text of the old whole-log report is gone)."""
    from inodewatch.report import describe
    return "\n".join(describe(e) for r in reports for e in r.timeline.events)


def test_the_daemons_newer_events_are_described():
    """overwrite_closed (the size at the writer's close), an overwrite seen as it began (no
    size yet), and content identity on deleted/replaced findings and their later verdict."""
    reports = select(parse_lines(x.encode() for x in [
        attached(0),
        line(1, "mapping.overwritten", **{**OVERWRITTEN, "size_after": None}),
        line(1.1, "mapping.overwrite_closed", **OVERWRITTEN, truncated=True),
        line(2, "mapping.deleted", **DELETED, content="unknown", content_reason="nothing at the path"),
        line(3, "mapping.replaced", **REPLACED, content="identical"),
        line(4, "fd.content", fd=3, kind="replaced", **REPLACED, content="different")])[0])
    assert report_text(reports).splitlines()[1:] == [
        "/opt/demo/so.so: inode 2146358 written in place, 15472 -> ? bytes",
        "/opt/demo/so.so: inode 2146358 closed by its writer, 15472 -> 23696 bytes, truncated first",
        "/opt/demo/so.so: inode 2146358 deleted [r--p,r-xp,rw-p], content unknown (nothing at the path)",
        "/opt/demo/so.so: inode 2146358 held, path now names inode 2146377, identical content, "
        "no restart needed",
        "fd 3 /opt/demo/so.so: inode 2146358 replaced, content different"]
