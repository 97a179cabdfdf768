"""`inodewatch report` reads as it goes: bounded lines, bounded timelines, bounded lives, files
merged in time order.  Memory is measured on the real command line (its child's peak RSS)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import parse_lines, run_cli
from inodewatch import logread, report
from inodewatch.logread import Counts, bounded_lines, read

T = "2026-01-02T03:{:02d}:{:02d}.{:06d}Z"
MiB = 1 << 20
RSS_BOUND_MB = 300


def stamp(seconds: float) -> str:
    whole = int(seconds)
    return T.format(whole // 60, whole % 60, round((seconds - whole) * 1e6))


def line(seconds: float, event: str, pid: int | None = 7, **fields: object) -> str:
    obj: dict[str, object] = {"timestamp": stamp(seconds), "level": "info", "event": event}
    if pid is not None:
        obj["pid"] = pid
    return json.dumps({**obj, **fields})


def attached(seconds: float, pid: int = 7, **fields: object) -> str:
    return line(seconds, "target.attached", pid,
                **{"comm": "reload", "start_time": "2026-01-02T03:00:00Z", **fields})


def exited(seconds: float, pid: int = 7, **fields: object) -> str:
    return line(seconds, "target.exited", pid, **{"exit_code": 0, "signal": None,
                "status_source": "proc_connector", "stale": [], **fields})


SO = {"path": "/opt/demo/so.so", "mapped_dev": "fe:00", "perms": "r-xp"}


def text_of(*lines: str) -> bytes:
    return "".join(x + "\n" for x in lines).encode()


# Runs a command, its stdout to a file, and says its exit status and peak RSS.  A launcher of
# its own: a child's ru_maxrss counts the pages it shared with its parent before the exec,
# and this test process is large; the launcher is not.
LAUNCH = """import resource, subprocess, sys
with open(sys.argv[1], "wb") as out:
    status = subprocess.run(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=out).returncode
print(status, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_measured(*args: str, out: Path) -> tuple[int, str, float]:
    """The real command line: its exit status, its stdout, and its peak RSS in MB."""
    launched = subprocess.run([sys.executable, "-c", LAUNCH, str(out), sys.executable, "-m",
                               "inodewatch", *args], capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr
    status, rss_kb = map(int, launched.stdout.split())
    return status, out.read_text(), rss_kb / 1024


def gzip_members(path: Path, parts: list[bytes | tuple[bytes, int]]) -> Path:
    """A gzip file of several members (gunzip reads them as one stream): (data, n) is one
    member repeated n times, so a gigabyte costs a megabyte to write."""
    with open(path, "wb") as f:
        for part in parts:
            data, times = part if isinstance(part, tuple) else (part, 1)
            member = gzip.compress(data, compresslevel=9)
            for _ in range(times):
                f.write(member)
    return path


# --- lines ----------------------------------------------------------------------------------


def chunked(data: bytes, size: int):
    stream = io.BytesIO(data)
    return lambda n: stream.read(min(n, size))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"", b" ", b"\t \r", b"a", b"{}", b"x" * 9, b"y" * 10, b"z" * 11,
                                 b"  b" * 4, b"\x00" * 25]), max_size=12),
       st.booleans(), st.integers(1, 7))
def test_bounded_lines_are_the_non_blank_lines_or_none_past_the_cap(pieces, newline_at_end, size):
    data = b"\n".join(pieces) + (b"\n" if newline_at_end else b"")
    expected = [p.lstrip() if len(p.lstrip()) <= 10 else None for p in data.split(b"\n") if p.strip()]
    cap, chunk = logread.LINE_CAP, logread.CHUNK
    logread.LINE_CAP, logread.CHUNK = 10, 4
    try:
        assert list(bounded_lines(chunked(data, size))) == expected
    finally:
        logread.LINE_CAP, logread.CHUNK = cap, chunk


def test_a_line_is_kept_up_to_the_cap_and_one_bad_line_past_it():
    def pad(n: int) -> bytes:
        start = ('{"timestamp": "%s", "event": "x", "pad": "' % stamp(1)).encode()
        return start.ljust(n - 2, b"p") + b'"}'
    at_cap, past = pad(logread.LINE_CAP), pad(logread.LINE_CAP + 1)
    lines = list(bounded_lines(io.BytesIO(at_cap + b"\n" + past + b"\n" + at_cap).read))
    assert lines == [at_cap, None, at_cap]
    events, bad = parse_lines(lines)
    assert len(events) == 2 and bad == 1


@pytest.mark.parametrize("what", ["newlines", "zeros"])
def test_a_gigabyte_gzipped_into_a_megabyte_is_read_in_bounded_memory(what, tmp_path):
    """1 GiB of newlines (was: killed after 300 s) or of zeros, one line with no newline (was:
    2.2 GB RSS), between two real events: the report finishes, the zeros are one bad line."""
    filler = b"\n" * MiB if what == "newlines" else b"\0" * MiB
    log = gzip_members(tmp_path / "events.json.1.gz",
                       [text_of(attached(0)), (filler, 1024), b"\n" + text_of(exited(1))])
    assert log.stat().st_size < 2 * MiB
    status, out, rss = run_measured("report", str(log), out=tmp_path / "out")
    assert status == 0
    assert "verdict: pid 7 (reload) exited with status 0" in out
    bad = 0 if what == "newlines" else 1
    assert out.endswith(f"read 1 file, 2 events, skipped {bad} bad line{'s' if bad != 1 else ''}\n")
    assert rss < RSS_BOUND_MB, f"peak RSS {rss:.0f} MB"


def test_many_targets_that_never_end_are_held_to_the_memory_budget(tmp_path):
    """100,000 targets attached, each with a 2 KiB command line, none ending: held whole they
    take ~400 MB; the report keeps to its budget, printing the least recently active lives
    early, as they were, saying so."""
    args = json.dumps(["/opt/app/worker", "x" * 2048])
    template = ('{"timestamp": "2026-01-02T03:04:05.%06dZ", "level": "info", "event": '
                '"target.attached", "pid": %d, "comm": "worker", "cmdline": ' + args + "}\n")
    with gzip.open(tmp_path / "events.json.gz", "wt", compresslevel=1) as f:
        for pid in range(1, 100_001):
            f.write(template % (pid % 1_000_000, pid))
    status, out, rss = run_measured("report", "--json", str(tmp_path / "events.json.gz"),
                                    out=tmp_path / "out")
    assert status == 0
    records = out.splitlines()
    assert len(records) == 100_001
    summary = json.loads(records[-1])
    assert (summary["events"], summary["targets"]) == (100_000, 100_000)
    first, last = json.loads(records[0]), json.loads(records[-2])
    assert "not followed further" in first["verdict"]
    assert last["verdict"].endswith("was still running at the end of the log; nothing diverged")
    assert rss < RSS_BOUND_MB, f"peak RSS {rss:.0f} MB"


# --- timelines ------------------------------------------------------------------------------


def test_a_long_life_shows_its_first_and_last_events_and_is_judged_on_all(tmp_path):
    cycles = [attached(0)]
    for i in range(500):  # a hold-mode host: replaced, reloaded, 500 times
        t = 1 + i
        cycles += [line(t, "mapping.replaced", **SO, mapped_ino=100 + i, disk_ino=101 + i),
                   line(t + 0.25, "mapping.reloaded", path=SO["path"], old_ino=100 + i,
                        new_ino=101 + i)]
    log = tmp_path / "events.json"
    log.write_bytes(text_of(*cycles))
    out = run_cli("report", str(log)).stdout.splitlines()
    assert out[0] == "pid 7 (reload)"
    assert out[1 + report.FIRST_SHOWN] == "  ... 961 events not shown ..."
    assert len(out) == 1 + report.FIRST_SHOWN + 1 + report.LAST_SHOWN + 4
    assert out[-5].endswith("inode 599 -> 600")
    assert out[-2] == "1 life: 1 reloaded"
    assert out[-4] == ("  verdict: pid 7 (reload) reloaded /opt/demo/so.so (inode 599 -> 600) "
                       "0.250 s after it was replaced; still running at the end of the log")
    record, summary = map(json.loads, run_cli("report", "--json", str(log)).stdout.splitlines())
    assert (record["events_not_shown"], record["not_shown_after"]) == (961, report.FIRST_SHOWN)
    assert record["timeline"] == [json.loads(x) for x in cycles[:20] + cycles[-20:]]
    assert summary["events"] == 1001


def test_a_crash_after_many_events_is_still_told(tmp_path):
    lines = [attached(0)] + [line(1 + i / 1000, "fd.deleted", fd=3, path=f"/var/log/{i}.log",
                                  mapped_ino=i) for i in range(300)]
    lines += [line(2, "mapping.deleted", **SO, mapped_ino=5),
              line(3, "mapping.overwritten", path=SO["path"], mapped_ino=9, size_before=1,
                   size_after=2),
              line(3.5, "target.exited", exit_code=None, signal="SIGSEGV",
                   status_source="proc_connector", stale=[])]
    log = tmp_path / "events.json"
    log.write_bytes(text_of(*lines))
    out = run_cli("report", str(log)).stdout
    assert ("verdict: pid 7 (reload) was killed by SIGSEGV 0.500 s after /opt/demo/so.so "
            "(inode 9) was overwritten in place\n") in out
    assert "... 264 events not shown ..." in out


def test_a_running_target_with_more_divergences_than_remembered_says_so():
    lines = [attached(0)] + [line(1 + i / 100, "fd.deleted", fd=i, path=f"/var/log/{i}.log",
                                  mapped_ino=i) for i in range(report.MAX_REMEMBERED + 5)]
    events, _ = parse_lines(x.encode() for x in lines)
    text = report.verdict(report.build_timelines(events)[0]).text
    assert text.count("(fd ") == report.MAX_REMEMBERED
    assert "/var/log/4.log" not in text and f"/var/log/{report.MAX_REMEMBERED + 4}.log" in text
    assert text.endswith(f", and 5 older divergences not kept (more than "
                         f"{report.MAX_REMEMBERED} at once)")


def test_past_the_budget_lives_over_are_printed_first_then_idle_ones_judged_early(monkeypatch):
    monkeypatch.setattr(report, "LIVES_BUDGET", 64 * 1024)
    lines = []
    for pid in range(1, 201):  # ended lives: printed whole, never dropped
        lines += [attached(pid / 1000, pid=pid), exited(pid / 1000 + 0.0005, pid=pid)]
    for pid in range(1000, 1200):  # never ending: the least recently active judged early
        lines += [attached(1 + pid / 1000, pid=pid)]
    events, _ = parse_lines(x.encode() for x in lines)
    done: list[report.Timeline] = []
    tracker = report.Tracker(report.Window(), report.AS_EVENTS, lambda life: None, done.append)
    for e in events:
        tracker.feed(e)
        assert tracker.budget.used <= report.LIVES_BUDGET
    tracker.close()
    assert len(done) == 400 and len({t.seq for t in done}) == 400
    verdicts = {t.pid: report.verdict(t).text for t in done}
    assert all(verdicts[pid].endswith("exited with status 0") for pid in range(1, 201))
    dropped = [pid for pid in range(1000, 1200) if "not followed further" in verdicts[pid]]
    assert dropped and dropped == list(range(1000, 1000 + len(dropped)))  # oldest first
    assert verdicts[1199].endswith("at the end of the log; nothing diverged")


def test_targets_are_printed_in_the_order_they_began(monkeypatch):
    lines = [attached(0, pid=1), attached(1, pid=2), exited(2, pid=2), attached(3, pid=3),
             exited(20, pid=3), exited(40, pid=1)]
    events, _ = parse_lines(x.encode() for x in lines)
    out = io.StringIO()
    printer = report.Printer(out, as_json=True)
    report.track(events, report.Window(), report.AsJson(), printer.begin, printer.done)
    assert [json.loads(x)["pid"] for x in out.getvalue().splitlines()] == [1, 2, 3]
    # past HOLD_BUDGET waiting behind pid 1, the finished ones go out as they are
    monkeypatch.setattr(report, "HOLD_BUDGET", 100)
    out = io.StringIO()
    printer = report.Printer(out, as_json=True)
    report.track(events, report.Window(), report.AsJson(), printer.begin, printer.done)
    assert [json.loads(x)["pid"] for x in out.getvalue().splitlines()] == [2, 3, 1]


def test_a_second_word_on_an_exit_joins_the_life_within_linger():
    """Two daemons watching one process both log its exit: one target, not two."""
    lines = [attached(0), exited(1), exited(1.2, exit_code=None, signal="SIGKILL"),
             attached(30, comm="next")]
    events, _ = parse_lines(x.encode() for x in lines)
    lives = report.build_timelines(events)
    assert [(t.comm, len(t.events)) for t in lives] == [("reload", 3), ("next", 1)]


# --- files in time order --------------------------------------------------------------------


def test_two_daemons_logs_are_merged_by_time_and_a_pipe_is_read_once(tmp_path):
    a = tmp_path / "a.json"
    a.write_bytes(text_of(attached(0, pid=1), line(2, "mapping.deleted", pid=1, **SO, mapped_ino=1),
                          exited(4, pid=1)))
    fifo = tmp_path / "b.fifo"
    os.mkfifo(fifo)
    b = text_of(attached(1, pid=2), line(3, "mapping.deleted", pid=2, **SO, mapped_ino=2),
                exited(5, pid=2))

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(b)
    writer = threading.Thread(target=write)
    writer.start()
    try:
        counts = Counts()
        events = list(read([str(fifo), str(a)], counts))
    finally:
        writer.join(timeout=30)
    assert [(e.pid, e.time.second) for e in events] == [(1, 0), (2, 1), (1, 2), (2, 3), (1, 4), (2, 5)]
    assert (counts.events, counts.bad, counts.out_of_order) == (6, 0, 0)


def test_a_line_older_than_the_one_before_is_taken_in_log_order_and_counted(tmp_path):
    log = tmp_path / "events.json"
    # the wall clock stepped back by 0.5 s between the overwrite and the exit
    log.write_bytes(text_of(attached(0), line(2, "mapping.overwritten", path=SO["path"], mapped_ino=9,
                                              size_before=1, size_after=2),
                            line(1.5, "target.exited", exit_code=None, signal="SIGSEGV", stale=[])))
    events = list(read([str(log)], counts := Counts()))
    assert [e.name for e in events] == ["target.attached", "mapping.overwritten", "target.exited"]
    assert counts.out_of_order == 1
    out = run_cli("report", str(log)).stdout
    assert "was killed by SIGSEGV" in out
    assert out.endswith("read 1 file, 3 events, skipped 0 bad lines; 1 line older than the line "
                        "before (taken in log order)\n")
    summary = json.loads(run_cli("report", "--json", str(log)).stdout.splitlines()[-1])
    assert summary["out_of_order"] == 1
