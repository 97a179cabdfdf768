"""What `inodewatch scan` prints: a readable table (one row per stale file per process group,
then what to restart: inodewatch.restart), or the daemon's JSON event lines; then a line per
reason files were not looked at, and the summary (both on stderr with --json)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from inodewatch import procfs
from inodewatch.model import Content
from inodewatch.scan import ScanSummary
from inodewatch.text import escape_control, terminal_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the checkers only: every scan would pay its import (~6 ms)
    from typing import IO

    # (the table's alone: `scan --json` does not pay for it, ~1 ms with shlex)
    from inodewatch.restart import Group, StaleFile


def content_text(content: Content | None) -> str:
    """What the content comparison says of a stale file, for the table ("-" if not judged)."""
    if content is None:
        return "-"
    if content.verdict == "unknown" and content.reason:
        return f"unknown ({content.reason})"
    return content.verdict


def summary_line(summary: ScanSummary) -> str:
    scanned = len(summary.reports)
    findings = sum(len(r.findings) for r in summary.reports)
    skipped = []
    if summary.kernel_threads:
        skipped.append(f"{summary.kernel_threads} kernel threads")
    if summary.unreadable:
        skipped.append(f"{summary.unreadable} unreadable")
    if summary.exited:
        skipped.append(f"{summary.exited} exited meanwhile")
    identical = sum(not f.needs_restart for r in summary.reports for f in r.findings)
    line = (f"scanned {scanned} processes: {len(summary.diverged)} diverged, "
            f"{findings} findings" + (f" ({identical} of identical content)" if identical else ""))
    return line + (f"; skipped {', '.join(skipped)}" if skipped else "")


# Why files were not looked at, as the start of the line that counts them.
NOT_LOOKED_AT = {
    procfs.TOO_LONG: f"names of {procfs.PATH_MAX} bytes or more (readlink and stat refuse them)",
    procfs.UNREADABLE: "could not be read",
    procfs.UNTRUSTED_MOUNT: "on FUSE/network mounts (a stat there may never return)",
}

# Pids (and mount points, errors) named in one line at most: the line is a pointer, not a list.
NAMED = 5


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def unknown_lines(summary: ScanSummary) -> list[str]:
    """One line per reason files were not looked at: how many, in which processes, and what
    the reason names (errors); a file that was not looked at is neither reported nor cleared."""
    by_reason: dict[str, tuple[list[procfs.Unknown], dict[int, None]]] = {}
    for r in summary.reports:
        for u in r.unknown:
            files, pids = by_reason.setdefault(u.reason, ([], {}))
            files.append(u)
            pids[r.pid] = None
    lines = []
    for reason, (files, pids) in by_reason.items():
        wheres = list(dict.fromkeys(terminal_text(u.where) for u in files if u.where))
        lines.append(
            f"{NOT_LOOKED_AT.get(reason, reason)}, not looked at: {len(files)} "
            f"file{'s' * (len(files) != 1)} in {len(pids)} process{'es' * (len(pids) != 1)} "
            f"(pid {_some([str(p) for p in pids])})" + (f": {_some(wheres)}" if wheres else ""))
    return lines


def _file_text(sf: StaleFile) -> str:
    return terminal_text(sf.path) + (f" (fd {sf.fd})" if sf.fd is not None else "")


def _with_package(sf: StaleFile) -> str:
    return _file_text(sf) + (f" ({escape_control(str(sf.package))})" if sf.package else "")


def user_name(uid: int) -> str:
    """The login name of `uid` for `systemctl --user -M NAME@`, else the number."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def restart_lines(all_groups: list[Group], name_of: Callable[[int], str] = user_name) -> list[str]:
    """The "To restart" section (the command, then the processes and files behind it, per
    unit or container), and a line for what needs no restart (identical content)."""
    from inodewatch.restart import command_text, label, plan

    actions, identical = plan(all_groups, name_of)
    lines = ["To restart:"] if actions else []
    for action in actions:
        if action.command is None:
            head = max(action.groups, key=lambda g: len(g.members))
            lines.append(f"  {label(head, terminal_text)}, {escape_control(action.note or '')}")
            lines += [f"      {_with_package(g.file)}" for g in action.groups]
            continue
        note = f"  # {escape_control(action.note)}" if action.note else ""
        lines.append(f"  {escape_control(command_text(action.command))}{note}")
        lines += [f"      {label(g, terminal_text)}: {_with_package(g.file)}" for g in action.groups]
    if identical:
        named = [f"{label(g, terminal_text)} {_file_text(g.file)}" for g in identical]
        lines.append("No restart needed (identical content): " + _some(named))
    return lines


def scan_groups(summary: ScanSummary) -> list[Group]:
    """The scan's stale files per process group (inodewatch.restart)."""
    from inodewatch.restart import Member, groups

    return groups((Member(r.pid, r.comm, r.ppid, r.placement), r.findings)
                  for r in summary.reports if r.findings)


def print_scan_table(summary: ScanSummary, out: IO[str] = sys.stdout) -> None:
    """One row per stale file per process group, then what to restart, then the files not
    looked at and the summary."""
    from inodewatch.restart import label

    all_groups = scan_groups(summary)
    rows = [(label(g, terminal_text), _file_text(g.file), g.file.state,
             escape_control(content_text(g.file.content)),
             escape_control(str(g.file.package)) if g.file.package else "-")
            for g in all_groups]
    if rows:
        header = ("PROCESS", "FILE", "STATE", "CONTENT", "PACKAGE")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4], file=out)
        print(file=out)
    for line in restart_lines(all_groups):
        print(line, file=out)
    for line in unknown_lines(summary):
        print(line, file=out)
    print(summary_line(summary), file=out)


def print_scan_events(summary: ScanSummary, out: IO[str] = sys.stdout) -> None:
    """The findings as JSON lines of the same schema the daemon logs; the summary to stderr."""
    from inodewatch.eventlog import format_event

    for r in summary.reports:
        for f in r.findings:
            where = r.placement.fields() if r.placement is not None else {}
            print(format_event(f.level, f.event, {"pid": r.pid, "comm": r.comm, **where,
                                                  **f.fields()}), file=out)
    for line in unknown_lines(summary):
        print(line, file=sys.stderr)
    print(summary_line(summary), file=sys.stderr)
