"""The event log: structlog set up to write one safe JSON object (or console line) per event.

File names come from untrusted users.  Before any renderer sees an event, `paths_to_text`
turns every `bytes` value into valid Unicode text (non-UTF-8 bytes as ``\\xNN``) and adds a
lossless ``<key>_bytes`` hex field when the name was not UTF-8; the console renderer also gets
`escape_control` so no escape sequence reaches a terminal raw.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Mapping, MutableMapping

from inodewatch.text import escape_control, is_utf8, safe_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the checkers only: every scan would pay its import (~6 ms)
    from typing import IO, Any

LEVEL_ORDER = ("timestamp", "level", "event", "pid")


def _to_text(value: Any, key: str, out: MutableMapping[str, Any]) -> Any:
    if isinstance(value, bytes):
        if not is_utf8(value):
            out[f"{key}_bytes"] = value.hex()
        return safe_text(value)
    if isinstance(value, dict):
        converted: dict[str, Any] = {}
        for k, v in value.items():
            converted[k] = _to_text(v, k, converted)
        return converted
    if isinstance(value, (list, tuple)):
        return [_to_text(v, key, {}) for v in value]
    return value


def paths_to_text(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every bytes value becomes text, losslessly (see module doc)."""
    for key in list(event):
        event[key] = _to_text(event[key], key, event)
    return event


def _escape_all(value: Any) -> Any:
    if isinstance(value, str):
        return escape_control(value)
    if isinstance(value, dict):
        return {k: _escape_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_all(v) for v in value]
    return value


def escape_for_terminal(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor for the console renderer: no raw control character survives."""
    for key in list(event):
        event[key] = _escape_all(event[key])
    return event


def order_keys(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """timestamp, level, event, pid first: what a human scanning the log reads first."""
    ordered = {k: event[k] for k in LEVEL_ORDER if k in event}
    ordered.update((k, v) for k, v in event.items() if k not in ordered)
    return ordered


def add_timestamp(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """ISO 8601, UTC, microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes it."""
    # time, not datetime: `scan --json` would pay datetime's import (~2 ms) at every run
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    event["timestamp"] = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{ns // 1000:06d}Z"
    return event


def render_json(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return json.dumps(event)


# Everything after the level: shared by the daemon's structlog logger and `scan --json`, which
# formats its few lines without paying structlog's import (asyncio and all) at every scan.
JSON_PROCESSORS = (add_timestamp, paths_to_text, order_keys, render_json)


def format_event(level: str, name: str, fields: MutableMapping[str, Any]) -> str:
    """One JSON line, exactly as the daemon's logger writes it."""
    event: Any = {"event": name, **fields, "level": level}
    for processor in JSON_PROCESSORS:
        event = processor(None, level, event)
    return event


class LogSink:
    """Where rendered lines go: stdout, or an append-only file that SIGHUP can reopen.

    Lines are written with one unbuffered os.write each, so a failed write leaves nothing
    queued to grow or to replay later.  A write that fails (disk full, closed stdout) is
    reported once on stderr, and again once it works after failing; the daemon keeps
    watching.  A log file deleted under the daemon is noticed (`check`) and recreated.
    `stream` is for tests and in-process callers that want the lines in a file object.
    """

    def __init__(self, path: str | None = None, stream: IO[str] | None = None) -> None:
        self.path = path
        self.stream = stream
        self.fd: int | None = None
        self._failing = False
        if path is not None:
            self.fd = self._open(path)
        elif sys.stdout is None:  # started with stdout closed: lines have nowhere to go
            self._report(OSError(errno.EBADF, "standard output is closed"))
        elif stream is None:
            self.fd = 1

    @staticmethod
    def _open(path: str) -> int:
        # O_NOFOLLOW: never write through a symlink planted where the log file should be.
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)

    def isatty(self) -> bool:
        if self.stream is not None:
            return self.stream.isatty()
        return self.fd is not None and self.path is None and os.isatty(self.fd)

    def reopen(self) -> None:
        """After logrotate moved the file away: continue in a new file at the same path."""
        if self.path is None:
            return
        try:
            new = self._open(self.path)
        except OSError as exc:
            self._report(exc)
            return
        old, self.fd = self.fd, new
        if old is not None:
            os.close(old)

    def check(self) -> None:
        """Recreate the log file if it was deleted under us (else lines go nowhere visible)."""
        if self.path is None or self.fd is None:
            return
        try:
            deleted = os.fstat(self.fd).st_nlink == 0
        except OSError:
            deleted = True
        if deleted:
            print(f"inodewatch: the event log {self.path} was deleted; writing a new one",
                  file=sys.stderr, flush=True)
            self.reopen()

    def msg(self, line: str) -> None:
        if self.fd is None and self.stream is None:
            return  # stdout was closed at start: said once, nothing to write to
        data = line + "\n"
        try:
            if self.stream is not None:
                self.stream.write(data)
                self.stream.flush()
            else:
                assert self.fd is not None
                os.write(self.fd, data.encode("utf-8", "backslashreplace"))
        except (OSError, ValueError) as exc:
            self._report(exc)
        else:
            if self._failing:
                self._failing = False
                print("inodewatch: the event log is writable again", file=sys.stderr, flush=True)

    info = warning = error = critical = debug = msg

    def _report(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"inodewatch: cannot write the event log: {reason}; still watching",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.path is not None and self.fd is not None:
            os.close(self.fd)
            self.fd = None


def choose_format(fmt: str, sink: LogSink) -> str:
    """"auto" means console on a terminal, JSON everywhere else (files, pipes, journald)."""
    if fmt != "auto":
        return fmt
    return "console" if sink.isatty() else "json"


def origin() -> dict[str, str]:
    """Where the events happen: the host name and this boot's id (the kernel's boot_id, which
    a container shares with its host), for logs merged from many machines."""
    from inodewatch.state import read_boot_id

    return {"host": os.uname().nodename, "boot_id": read_boot_id()}


def with_origin(where: Mapping[str, str]) -> Any:
    """structlog processor: `where` (see `origin`) at the end of every event."""
    def add_origin(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.update(where)
        return event
    return add_origin


def make_logger(sink: LogSink, fmt: str, where: Mapping[str, str] | None = None) -> Any:
    """A structlog logger writing to `sink`; fmt is "json", "journal" (JSON lines with their
    fields, for journal.JournalSink) or "console".  `where` (see `origin`) is added to every
    JSON event; a console is read where it runs."""
    import structlog

    processors: list[Any] = [structlog.processors.add_log_level]
    if fmt == "console":
        from inodewatch.console import ConsoleRenderer, wants_colour

        processors += [add_timestamp, paths_to_text, escape_for_terminal,
                       ConsoleRenderer(colour=wants_colour(sink.isatty()))]
    else:
        if where:
            processors.append(with_origin(where))
        if fmt == "journal":
            from inodewatch import journal

            processors += [*JSON_PROCESSORS[:-1], journal.render]
        else:
            processors += JSON_PROCESSORS
    return structlog.wrap_logger(sink, processors=processors, cache_logger_on_first_use=True)
