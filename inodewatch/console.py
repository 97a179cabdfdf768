"""The console log (`--log-format console`, the default on a terminal): one line per event,
its time, level and name, then a sentence, as the report's timeline reads; never a Python
value's repr (no `None`, `False`, `[{'event': ...}]`).

`ConsoleRenderer` is the last structlog processor: it gets the event after `paths_to_text`
and `escape_for_terminal`, so every string in it is already inert text; it adds colour to
the level alone, when asked (`wants_colour`: a terminal, NO_COLOR unset, TERM not "dumb").
It remembers each target's comm from its target.attached (forgotten at its exit: bounded by
the targets watched, and by MAX_REMEMBERED whatever happens), so every line can say whose
file it is: "pid 1234 (nginx, nginx.service)".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from inodewatch.events import SUBJECTS

# ANSI SGR per level: bold red, red, yellow, green, dim.
COLOURS = {"critical": "1;31", "error": "31", "warning": "33", "info": "32", "debug": "2"}
MAX_REMEMBERED = 65536
# Fields every line has, or that the sentence of a known event says itself.
PLAIN = {"timestamp", "level", "event", "pid"}
HIDDEN_SUFFIX = "_bytes"  # lossless copies of names, for JSON readers


def wants_colour(isatty: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Colour on a terminal, unless NO_COLOR is set to anything (no-color.org) or TERM is
    "dumb"."""
    return isatty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def _text(value: Any) -> str:
    """A field's value as an operator reads it: text as is, numbers, JSON for structures."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _file(e: Mapping[str, Any]) -> str:
    path = _text(e.get("path", "?"))
    return f"fd {e['fd']} ({path})" if e.get("fd") is not None else path


def _content(e: Mapping[str, Any]) -> str:
    verdict = e.get("content")
    if verdict == "identical":
        return "; identical content, no restart needed"
    if verdict == "unknown" and e.get("content_reason"):
        return f"; content unknown ({_text(e['content_reason'])})"
    return f"; content {_text(verdict)}" if verdict is not None else ""


def _stale(e: Mapping[str, Any]) -> str:
    stale = e.get("stale")
    if not isinstance(stale, list) or not stale:
        return ""
    paths = list(dict.fromkeys(_text(s.get("path", "?")) for s in stale if isinstance(s, dict)))
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f", running {_plural(len(paths), 'stale file')}: {shown}"


def _exit(e: Mapping[str, Any]) -> str:
    if e.get("signal"):
        how = f"was killed by {_text(e['signal'])}" + (" (core dumped)" if e.get("core_dumped") else "")
    elif e.get("exit_code") is not None:
        how = f"exited with status {_text(e['exit_code'])}"
    else:
        how = "exited, its status unknown" + (
            " (lost in a queue overrun)" if e.get("status_source") == "lost" else "")
    return how + _stale(e)


def _attached(e: Mapping[str, Any]) -> str:
    cmdline = e.get("cmdline")
    command = (" ".join(map(_text, cmdline)) if isinstance(cmdline, list) and cmdline
               else _text(e.get("exe", "?")))
    how = "now runs" if e.get("exec") else "attached:"
    extra = [f"found by {_text(e['selector'])}"] if e.get("selector") else []
    if e.get("reattached"):
        extra.append("in the place of one that exited")
    if e.get("restored"):
        extra.append("its history restored from the state file")
    if e.get("truncated"):
        extra.append("command line cut at 4 KiB")
    return f"{how} {command}" + (f" ({'; '.join(extra)})" if extra else "")


def _writer(e: Mapping[str, Any]) -> str:
    cmdline = e.get("writer_cmdline")
    command = (" ".join(map(_text, cmdline)) if isinstance(cmdline, list) and cmdline
               else _text(e.get("writer_comm") or e.get("writer_exe") or "?"))
    return f"pid {_text(e.get('writer_pid', '?'))} ({command})"


def _divergence(kind: str, e: Mapping[str, Any]) -> str | None:
    f = _file(e)
    held = f"inode {_text(e.get('mapped_ino', '?'))}"
    if kind == "deleted":
        return f"{f} was deleted: it runs {held}, which has no link left{_content(e)}"
    if kind == "replaced":
        return (f"{f} was replaced: it runs {held}, the path now names inode "
                f"{_text(e.get('disk_ino', '?'))}{_content(e)}")
    if kind == "renamed":
        return f"{f} was renamed: {held} now lives at {_text(e.get('new_path', '?'))}"
    if kind == "missing":
        return f"nothing is at {f} any more: {held} is linked elsewhere"
    if kind == "duplicated":
        return (f"two versions of {f} are loaded at once: inodes {_text(e.get('old_ino', '?'))} "
                f"and {_text(e.get('new_ino', '?'))}")
    if kind == "overwritten":
        after = e.get("size_after")
        sizes = f"{_text(e.get('size_before', '?'))} bytes before" + (
            f", {_text(after)} after" if after is not None else ", being written")
        return (f"{f} ({held}) was overwritten in place ({sizes}"
                f"{', truncated first' if e.get('truncated') else ''}): the process may crash")
    if kind == "write_refused":
        return (f"the guard refused {_writer(e)} writing {f} ({held}, "
                f"{_text(e.get('flags', '?'))}: {_text(e.get('errno', '?'))}): it would have crashed "
                "the process; replace the file with mv or install instead")
    if kind == "overwrite_closed":
        return (f"the writer of {f} closed it: {_text(e.get('size_before', '?'))} -> "
                f"{_text(e.get('size_after', '?'))} bytes"
                + (", truncated first" if e.get("truncated") else ""))
    if kind == "reloaded":
        return (f"{f} reloaded: inode {_text(e.get('old_ino', '?'))} -> "
                f"{_text(e.get('new_ino', '?'))}")
    if kind == "content":
        return f"{f} ({_text(e.get('kind', '?'))}) judged again{_content(e)}"
    return None


def _daemon(name: str, e: Mapping[str, Any]) -> str | None:
    if name == "daemon.started":
        watched = [f"pid {p}" for p in e.get("targets") or []] + [_text(t) for t in e.get("selectors") or []]
        return f"inodewatch {_text(e.get('version', '?'))} started, watching " + (
            ", ".join(watched) or "nothing yet")
    if name == "daemon.stopped":
        left = e.get("targets") or []
        return f"stopped: {_text(e.get('reason', '?'))}" + (
            f"; {_plural(len(left), 'target')} still running" if left else "")
    if name == "daemon.error":  # the traceback stays in the JSON log and the journal
        return (f"a bug in {_text(e.get('handler', '?'))}: {_text(e.get('error', '?'))}; still "
                "watching (please report it, with the traceback its JSON line carries)")
    if name == "guard.started":
        return (f"guarding the targets' mapped files (helper pid {_text(e.get('helper_pid', '?'))}; "
                f"a refused writer gets {_text(e.get('errno', '?'))})")
    if name == "guard.unjudged":
        return (f"allowed {_writer(e)} to open {_text(e.get('path', '?'))} unjudged: "
                + _text(e.get("detail", "")))
    if name in ("guard.dropped", "guard.stopped"):
        return _text(e.get("detail", ""))
    if name == "watch.gap":
        return _text(e.get("detail", f"the daemon did not run for {_text(e.get('gap_s'))} s"))
    if name in ("watch.overflow", "watch.degraded", "watch.recovered"):
        what = f"{_text(e['resource'])}: " if e.get("resource") else ""
        return what + _text(e.get("detail", ""))
    return None


def sentence(e: Mapping[str, Any], comm: str | None = None) -> str:
    """The sentence of one event (its fields already text); `comm`: the target's, if known."""
    name = str(e.get("event", "?"))
    subject, _, kind = name.partition(".")
    said: str | None = None
    if subject in SUBJECTS:
        said = _divergence(kind, e)
    elif name == "target.attached":
        said = _attached(e)
    elif name == "target.exited":
        said = _exit(e)
    elif name == "target.lost":
        said = f"{_text(e.get('detail', 'is gone'))}{_stale(e)}"
    else:
        said = _daemon(name, e)
    if said is None:  # an event this version does not know: its fields, readably
        said = ", ".join(f"{k} {_text(v)}" for k, v in e.items()
                         if k not in PLAIN and not k.endswith(HIDDEN_SUFFIX)
                         and v is not None and v is not False)
    if e.get("pid") is None:
        return said
    where = [comm] if comm else []
    where += [_text(e[k]) for k in ("unit", "user_unit") if e.get(k)]
    if e.get("container_runtime"):
        where.append(f"{_text(e['container_runtime'])} {_text(e.get('container_id', '?'))[:12]}")
    return f"pid {e['pid']}" + (f" ({', '.join(where)})" if where else "") + f": {said}"


class ConsoleRenderer:
    """structlog processor: the event dict -> "TIME LEVEL EVENT  pid N (comm): sentence"."""

    def __init__(self, colour: bool = False) -> None:
        self.colour = colour
        self.comms: dict[int, str] = {}

    def __call__(self, _logger: Any, _name: str, event: Mapping[str, Any]) -> str:
        name = str(event.get("event", "?"))
        pid = event.get("pid")
        if name == "target.attached" and isinstance(pid, int) and isinstance(event.get("comm"), str):
            if len(self.comms) < MAX_REMEMBERED or pid in self.comms:
                self.comms[pid] = event["comm"]
        comm = self.comms.get(pid) if isinstance(pid, int) else None
        if name in ("target.exited", "target.lost") and isinstance(pid, int):
            self.comms.pop(pid, None)
        level = str(event.get("level", "info"))
        shown = f"{level:<8}"
        if self.colour and level in COLOURS:
            shown = f"\x1b[{COLOURS[level]}m{level}\x1b[0m{' ' * (8 - len(level))}"
        return f"{event.get('timestamp', '')} {shown} {name:<24} {sentence(event, comm)}"
