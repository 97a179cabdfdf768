"""Events into systemd's journal with their priority and fields (the native protocol).

Under a unit with `StandardOutput=journal`, stdout is a stream to journald that gives every
line the unit's one priority (6, info): `journalctl -p crit` would never find an in-place
overwrite.  When `$JOURNAL_STREAM` names our stdout (journald sets it to the stream's
``DEV:INODE``) and no log file was asked for, each event is instead one datagram on
journald's native socket (`/run/systemd/journal/socket`), carrying

* ``MESSAGE``: the very JSON line a log file would get, so ``journalctl -o cat`` still prints
  pure JSON lines (for jq, or ``inodewatch report``) and ``-o short`` shows it after the
  usual prefix;
* ``PRIORITY``: from the event's level (critical 2, error 3, warning 4, info 6, debug 7);
* ``MESSAGE_ID``: one per event kind (`message_id`), for ``journalctl MESSAGE_ID=...`` and
  catalogs;
* ``SYSLOG_IDENTIFIER=inodewatch``, and every top-level field of the JSON object as
  ``INODEWATCH_<KEY>`` (``INODEWATCH_EVENT=mapping.overwritten``, ``INODEWATCH_PID``,
  ``INODEWATCH_PATH``, ``INODEWATCH_MAPPED_INO``...): strings as they are in the JSON (a
  non-UTF-8 name as ``\\xNN`` text, with its ``..._BYTES`` hex field beside it), numbers and
  booleans as JSON writes them, lists and objects as JSON text.

Encoding (the protocol's rules, `encode_field`): ``NAME=value\\n``, or, for a value with a
newline (a file name may have one), ``NAME\\n`` + its length as 64-bit little endian + the
bytes + ``\\n``.  Field names are upper-case letters, digits and ``_``, not starting with
``_`` (journald's trusted fields) and at most 64 characters.

An entry too big for one datagram goes as a sealed memfd passed with SCM_RIGHTS, as
sd_journal_send does.  The socket is non-blocking: when journald's queue is full (any local
user can flood that socket), or the socket is missing, the line goes to stdout after all,
prefixed with its priority as ``<N>`` (journald's `SyslogLevelPrefix=`, on by default): the
stream is ours alone, so the event is kept, at its priority, only without its fields.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import struct
from collections.abc import Mapping

from inodewatch.eventlog import LogSink

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

SOCKET = "/run/systemd/journal/socket"
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
IDENTIFIER = "inodewatch"
PREFIX = "INODEWATCH_"
NAME_MAX = 64  # journald refuses longer field names
_NOT_NAME = re.compile(r"[^A-Z0-9_]")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
# a send that fails with these is too big for a datagram: the memfd carries it instead
_TOO_BIG = (errno.EMSGSIZE, errno.ENOBUFS)


def priority(level: str) -> int:
    """The syslog priority of an event level (unknown levels are info)."""
    return PRIORITIES.get(level, 6)


def message_id(event: str) -> str:
    """MESSAGE_ID of an event kind: the first 128 bits of SHA-256("inodewatch:" + event), in
    hex, so it is stable across versions and anyone can compute it."""
    return hashlib.sha256(f"inodewatch:{event}".encode()).hexdigest()[:32]


def field_name(key: str) -> str:
    """INODEWATCH_<KEY>: upper case, every other character `_`, at most NAME_MAX long."""
    return (PREFIX + _NOT_NAME.sub("_", key.upper()))[:NAME_MAX]


def field_value(value: Any) -> bytes:
    """A JSON value as journal field bytes: strings as they are, the rest as JSON text."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("utf-8", "backslashreplace")


def encode_field(name: str, value: bytes) -> bytes:
    """One field in the native protocol; binary-safe when the value holds a newline."""
    key = name.encode("ascii")
    if b"\n" in value:
        return key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return key + b"=" + value + b"\n"


def encode_entry(level: str, event: Mapping[str, Any], line: str) -> bytes:
    """The datagram for one event: `event` is the JSON object `line` was rendered from."""
    parts = [encode_field("MESSAGE", line.encode("utf-8", "backslashreplace")),
             encode_field("PRIORITY", str(priority(level)).encode()),
             encode_field("SYSLOG_IDENTIFIER", IDENTIFIER.encode())]
    if isinstance(name := event.get("event"), str):
        parts.append(encode_field("MESSAGE_ID", message_id(name).encode()))
    seen = set()
    for key, value in event.items():
        if key == "level":
            continue  # it is PRIORITY
        field = field_name(key)
        if field not in seen:  # two keys that map to one name: the first wins
            seen.add(field)
            parts.append(encode_field(field, field_value(value)))
    return b"".join(parts)


def stream_is_stdout(environ: Mapping[str, str], stdout_stat: os.stat_result) -> bool:
    """Does $JOURNAL_STREAM (``DEV:INODE``, decimal) name this stdout?  A child of a unit
    inherits the variable with another stdout: then it is not ours."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        return bool(sep) and (int(dev), int(ino)) == (stdout_stat.st_dev, stdout_stat.st_ino)
    except ValueError:
        return False


def render(_logger: Any, level: str, event: dict[str, Any]) -> tuple[tuple[str], dict[str, Any]]:
    """structlog's last processor for a JournalSink: the JSON line, and the object it came
    from (`fields`), so the sink can make the entry's fields."""
    return (json.dumps(event),), {"fields": event}


class JournalSink(LogSink):
    """stdout when it is journald's stream: events as native entries (see module doc)."""

    def __init__(self, address: str = SOCKET, stream: IO[str] | None = None) -> None:
        super().__init__(stream=stream)  # stdout (fd 1): the fallback; `stream` for tests
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                  | socket.SOCK_NONBLOCK)
        self.fallbacks = 0  # lines that went to the stream instead (tests, metrics)

    @classmethod
    def for_stdout(cls, environ: Mapping[str, str] | None = None) -> JournalSink | None:
        """A JournalSink if stdout is journald's stream (and fd 1 is open), else None."""
        try:
            stdout_stat = os.fstat(1)
        except OSError:
            return None
        if not stream_is_stdout(os.environ if environ is None else environ, stdout_stat):
            return None
        return cls()

    def _send(self, level: str, line: str, fields: Mapping[str, Any] | None) -> None:
        if fields is None:  # not from the journal renderer: plain text
            fields = {}
        data = encode_entry(level, fields, line)
        try:
            try:
                self.sock.sendto(data, self.address)
            except OSError as exc:
                if exc.errno not in _TOO_BIG:
                    raise
                self._send_memfd(data)
        except OSError:  # queue full (EAGAIN), no journald (ENOENT, ECONNREFUSED), ...
            self.fallbacks += 1
            LogSink.msg(self, f"<{priority(level)}>{line}")

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("inodewatch-journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # journald takes only a sealed memfd
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))],
                              0, self.address)
        finally:
            os.close(fd)

    def critical(self, line: str, fields: Mapping[str, Any] | None = None) -> None:
        self._send("critical", line, fields)

    def error(self, line: str, fields: Mapping[str, Any] | None = None) -> None:
        self._send("error", line, fields)

    def warning(self, line: str, fields: Mapping[str, Any] | None = None) -> None:
        self._send("warning", line, fields)

    def info(self, line: str, fields: Mapping[str, Any] | None = None) -> None:
        self._send("info", line, fields)

    def debug(self, line: str, fields: Mapping[str, Any] | None = None) -> None:
        self._send("debug", line, fields)

    msg = info

    def close(self) -> None:
        self.sock.close()
        super().close()
