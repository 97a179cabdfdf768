"""`scan --nagios`: the scan as a Nagios / Icinga plugin, one status line with perfdata and
the plugin exit codes (monitoring-plugins' guidelines).

  0 OK        no process needs a restart (nothing stale, or only of identical content)
  1 WARNING   a process may run code that is no longer on disk: content unknown (the file
              was deleted and nothing is at its path, it is not readable, over a budget)
  2 CRITICAL  a process runs code known to differ from the file at its path (content
              different), or two versions of one file at once
  3 UNKNOWN   the scan itself failed (usage, no such process, permission denied)

Pure: the groups and plan of inodewatch.restart in, (exit code, line) out.
"""

from __future__ import annotations

from collections.abc import Sequence

from inodewatch.restart import Action, Group, label
from inodewatch.text import escape_control, terminal_text

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
NAMED = 5  # restart entries named in the line


def severity(group: Group) -> int:
    f = group.file
    if not f.needs_restart:
        return OK
    if "duplicated" in f.kinds or (f.content is not None and f.content.verdict == "different"):
        return CRITICAL
    return WARNING


def _target(action: Action) -> str:
    if action.command is None:
        return label(action.groups[0], terminal_text)
    return escape_control(action.command[-1])  # the unit, container or machine restarted


def status_line(groups: Sequence[Group], actions: Sequence[Action], scanned: int,
                skipped: int) -> tuple[int, str]:
    """(exit code, the line) for one scan: `actions`, the restart plan of `groups`."""
    code = max((severity(g) for g in groups), default=OK)
    stale = {m.pid for g in groups if g.file.needs_restart for m in g.members}
    files = {g.file.key for g in groups if g.file.needs_restart}
    identical = {m.pid for g in groups if not g.file.needs_restart for m in g.members} - stale
    if code == OK:
        text = "no process needs a restart" + (
            f" ({len(identical)} run replaced files of identical content)" if identical else "")
    else:
        named = ", ".join(_target(a) for a in actions[:NAMED])
        more = f" and {len(actions) - NAMED} more" if len(actions) > NAMED else ""
        text = (f"{len(stale)} process{'es' * (len(stale) != 1)} need{'s' * (len(stale) == 1)} "
                f"a restart for {len(files)} stale file{'s' * (len(files) != 1)}; "
                f"restart {named}{more}")
    perfdata = (f"stale_processes={len(stale)};;;0 stale_files={len(files)};;;0 "
                f"restarts={len(actions)};;;0 identical_processes={len(identical)};;;0 "
                f"scanned={scanned};;;0 skipped={skipped};;;0")
    return code, f"INODEWATCH {STATUS[code]} - {_plain(text)} | {perfdata}"


def unknown_line(message: str) -> str:
    return f"INODEWATCH UNKNOWN - {_plain(escape_control(message))}"


def _plain(text: str) -> str:
    """No "|" in the text: it would start the perfdata (a unit below a delegated cgroup may
    be named anything)."""
    return text.replace("|", "\\x7c")
