"""The report folds brief lives (over within a second, nothing diverged) into one line per
command: a selector matching `nginx -s reload` sees a life per reload (issue 11, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import TIMEOUT
from inodewatch.report import FOLDED_COMMANDS
from test_report import DELETED, HOST, REPLACED, attached, exited, line, report, write


def brief_runs(n: int, comm: str = "nginx", first_pid: int = 5000, start: float = 0.0,
               **exit_fields: Any) -> list[str]:
    """n lives of `comm`, each attached and exited 0.2 s later, one a second."""
    lines = []
    for i in range(n):
        pid, at = first_pid + i, start + i
        lines += [attached(at, pid, comm=comm),
                  exited(at + 0.2, pid, **{"exit_code": 0, **exit_fields})]
    return lines


def test_brief_lives_fold_into_one_line_per_command_and_still_count(tmp_path):
    log = write(tmp_path / "events.json", [
        attached(0, 38314),
        *brief_runs(43),
        *brief_runs(2, comm="logrotate", first_pid=7000, start=50, exit_code=1),
        line(60, "mapping.deleted", 38314, "warning", **DELETED),
        line(60, "mapping.replaced", 38314, "warning", **REPLACED)])
    out = report(str(log))
    assert "pid 5000" not in out and "pid 7001" not in out  # no verdict of their own
    assert "verdict: pid 38314 (reload) was still running old code" in out
    assert ("  nginx: 43 brief lives (43 exited), 2026-01-02T03:04:05.000000Z to "
            "2026-01-02T03:04:47.000000Z") in out
    assert "  logrotate: 2 brief lives (2 exited)" in out
    assert "46 lives: 45 exited, 1 still running stale code" in out  # the tally adds up

    summary = json.loads(report(str(log), "--json").splitlines()[-1])
    assert summary["targets"] == 1 and summary["outcomes"] == {"exited": 45, "running_stale": 1}
    assert summary["brief_lives"] == [
        {"comm": "nginx", "lives": 43, "outcomes": {"exited": 43},
         "first": "2026-01-02T03:04:05.000000Z", "last": "2026-01-02T03:04:47.000000Z"},
        {"comm": "logrotate", "lives": 2, "outcomes": {"exited": 2},
         "first": "2026-01-02T03:04:55.000000Z", "last": "2026-01-02T03:04:56.000000Z"}]


def test_what_tells_something_is_never_folded(tmp_path):
    """A kill, a crash, a divergence, a life of a second or more, a life still running, and
    any life the operator asks for by pid."""
    log = write(tmp_path / "events.json", [
        attached(0, 101), attached(0, 102), attached(0, 103), attached(0, 104), attached(0, 105),
        attached(0, 106), line(0.05, "mapping.deleted", 103, "warning", **DELETED),
        exited(0.1, 101, signal="SIGTERM"), exited(0.1, 102, signal="SIGSEGV"),
        exited(0.1, 103, exit_code=0), exited(0.5, 106, exit_code=0), exited(1.0, 104, exit_code=0)])
    out = report(str(log))
    for pid in (101, 102, 103, 104, 105):
        assert f"verdict: pid {pid} " in out
    assert "pid 106" not in out and "  reload: 1 brief life (1 exited)" in out
    assert "verdict: pid 106 " in report(str(log), "--pid", "106")


def test_an_exit_of_unknown_status_folds_too(tmp_path):
    """In a container every exit has no status (pidfd only): nginx -s reload still folds."""
    log = write(tmp_path / "events.json", brief_runs(3, exit_code=None, source="pidfd"))
    assert "  nginx: 3 brief lives (3 ended, status unknown)" in report(str(log))


def test_hostile_commands_are_escaped_and_their_number_bounded(tmp_path):
    hostile = "ev\nil\x1b[31m\udcff" + "x" * 5000
    lines = brief_runs(2, comm=hostile)
    for i in range(FOLDED_COMMANDS + 30):
        lines += brief_runs(1, comm=f"job{i}", first_pid=10_000 + i, start=10 + i)
    log = write(tmp_path / "events.json", lines)
    out = report(str(log))
    folded = [x for x in out.splitlines() if "brief li" in x and x.startswith("  ")]
    assert len(folded) == FOLDED_COMMANDS + 1  # the commands held, then all the others
    assert "\x1b" not in out and "\nil" not in out
    assert folded[0].startswith("  ev\\x0ail\\x1b[31m") and len(folded[0]) < 400
    assert folded[-1].startswith(f"  other commands (more than {FOLDED_COMMANDS}): 31 brief lives")
    summary = out.splitlines()[-2]
    assert summary == f"{FOLDED_COMMANDS + 32} lives: {FOLDED_COMMANDS + 32} exited"
    as_json = report(str(log), "--json")
    as_json.encode("ascii")
    record = json.loads(as_json.splitlines()[-1])["brief_lives"]
    assert len(record) == FOLDED_COMMANDS + 1 and record[-1]["other_commands"] is True


@pytest.mark.integration
def test_the_real_daemon_sees_brief_lives_and_the_report_folds_them(start_demo, start_watcher,
                                                                   demo_build):
    """A selector (--exe) matching the demo: one long-lived host goes stale by rm+cp, while
    the same program runs five times for under a second (`--ticks 2`) and exits 0."""
    demo = start_demo("hold", interval_ms=60_000)  # no reload: it stays stale
    exe = str(demo_build / "reload")
    watcher = start_watcher(extra=["--exe", exe])
    watcher.log.wait("target.attached", pid=demo.pid)
    brief_pids = []
    for _ in range(5):
        run = subprocess.Popen([exe, "--mode", "hold", "--interval-ms", "300", "--ticks", "2",
                                "--lib", demo.lib], cwd=demo.dir, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        brief_pids.append(run.pid)
        watcher.log.wait("target.attached", pid=run.pid)
        assert run.wait(TIMEOUT) == 0
        watcher.log.wait("target.exited", pid=run.pid)
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    watcher.log.wait("mapping.replaced", pid=demo.pid)
    watcher.stop()
    out = subprocess.run([sys.executable, "-m", "inodewatch", "report", str(watcher.log.path)],
                         capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    assert f"verdict: pid {demo.pid} (reload, uid 0) on {HOST} was still running old code" in out
    for pid in brief_pids:
        assert f"pid {pid} " not in out
    assert "  reload: 5 brief lives (5 exited)" in out
    assert "6 lives: 5 exited, 1 still running stale code" in out
