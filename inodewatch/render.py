"""What `inodewatch scan` prints: a readable table, or the daemon's JSON event lines; then a
line per reason files were not looked at, and the summary (both on stderr with --json)."""

from __future__ import annotations

import sys

from inodewatch import procfs
from inodewatch.model import Finding
from inodewatch.scan import ScanSummary
from inodewatch.text import terminal_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the checkers only: every scan would pay its import (~6 ms)
    from typing import IO


def describe(f: Finding) -> str:
    """One short human sentence of what a finding means."""
    held = f"inode {f.mapped.ino}"
    if f.kind == "deleted":
        return f"{held} has no link left: the process runs a deleted file"
    if f.kind == "replaced":
        return f"{held} held, path now names inode {f.disk.ino if f.disk else '?'}"
    if f.kind == "renamed":
        return f"{held} now lives at {terminal_text(f.new_path or b'')}"
    return f"{held} held, nothing at the path"


def content_note(f: Finding) -> str:
    """What the content comparison says of a finding, for the table ("" if not judged)."""
    if f.content is None:
        return ""
    if f.content.verdict == "identical":
        return "; identical content, no restart needed"
    if f.content.verdict == "different":
        return "; content different"
    return f"; content unknown ({f.content.reason})" if f.content.reason else "; content unknown"


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


def print_scan_table(summary: ScanSummary, out: IO[str] = sys.stdout) -> None:
    rows = [
        (str(r.pid), terminal_text(r.comm), f.event,
         terminal_text(f.path) + (f" (fd {f.fd})" if f.fd is not None else ""),
         describe(f) + (f" [{','.join(f.perms)}]" if f.perms else "") + content_note(f))
        for r in summary.reports for f in r.findings
    ]
    if rows:
        header = ("PID", "COMM", "EVENT", "PATH", "DETAIL")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4], file=out)
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
