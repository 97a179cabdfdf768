"""The end of a report: how many lives ended how, and the brief ones folded per command.

A selector follows whatever matches it: `--exe /usr/sbin/nginx` also catches every
`nginx -s reload`, which forks, signals the master and exits in milliseconds.  Such a life
never diverged and lasted under BRIEF seconds; it says nothing about stale code, so the text
report folds those of one command into one line ("43 lives of /usr/sbin/nginx -s reload:
each exited within a second, nothing diverged"), and ends with the tally of every life's
outcome.  Pure: report's TargetReports in, lines and counts out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from inodewatch.text import escape_control

BRIEF = 1.0  # seconds from attach to exit
# The tally's order and words, per report outcome.
OUTCOMES = (
    ("crashed_after_overwrite", "crashed after an overwrite"),
    ("killed", "killed"),
    ("exited", "exited"),
    ("exit_unknown", "ended, status unknown"),
    ("lost", "ended while the daemon was down"),
    ("running_duplicated", "running two versions at once"),
    ("running_stale", "still running stale code"),
    ("reloaded", "reloaded"),
    ("running", "running"),
)
ENDED = {"exited", "killed", "exit_unknown"}
DIVERGED = ("mapping.", "fd.")


def _command(report: Any) -> str:
    for e in reversed(report.timeline.events):
        if e.name == "target.attached":
            cmdline = e.fields.get("cmdline")
            if isinstance(cmdline, list) and cmdline and all(isinstance(a, str) for a in cmdline):
                return " ".join(cmdline)
            for key in ("exe", "comm"):
                if isinstance(e.fields.get(key), str):
                    return e.fields[key]
    return "?"


def brief(report: Any) -> bool:
    """A life that ended within BRIEF seconds of its first event, nothing diverged in it."""
    events = report.timeline.events
    if report.verdict.outcome not in ENDED or not events:
        return False
    if any(e.name.startswith(DIVERGED) for e in events):
        return False
    end = events[-1]
    stale = end.fields.get("stale")
    if end.name != "target.exited" or (isinstance(stale, list) and stale):
        return False
    return (end.time - events[0].time).total_seconds() < BRIEF


def fold(reports: Sequence[Any]) -> tuple[list[Any], Counter[str]]:
    """(the reports to show one by one, the brief lives counted per command).  A command
    with a single brief life keeps it: folding one into one line gains nothing."""
    folded = Counter(_command(r) for r in reports if brief(r))
    keep = [r for r in reports if not (brief(r) and folded[_command(r)] > 1)]
    return keep, Counter({c: n for c, n in folded.items() if n > 1})


def folded_lines(folded: Counter[str]) -> list[str]:
    return [f"{n} lives of {escape_control(command)}: each ended within a second, "
            "nothing diverged" for command, n in sorted(folded.items(), key=lambda kv: (-kv[1], kv[0]))]


def outcomes(reports: Iterable[Any]) -> dict[str, int]:
    """outcome -> lives, every life counted (the folded ones too), in the tally's order."""
    counts = Counter(r.verdict.outcome for r in reports)
    return {key: counts[key] for key, _ in OUTCOMES if counts[key]}


def tally_line(counts: dict[str, int]) -> str:
    words = dict(OUTCOMES)
    total = sum(counts.values())
    return (f"{total} li{'ves' if total != 1 else 'fe'}: "
            + (", ".join(f"{n} {words[k]}" for k, n in counts.items()) or "none"))
