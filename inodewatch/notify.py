"""sd_notify(3) without a package: readiness, status and watchdog pings to systemd.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` names a socket in the abstract namespace).  systemd
identifies the sender by the credentials the kernel attaches, so with ``NotifyAccess=main``
only the daemon's own process may send.

Rules this module keeps, because a notify failure must never take the daemon down:

* Without ``$NOTIFY_SOCKET`` (not started by systemd, or not ``Type=notify``) every method
  is a no-op.  A ``NOTIFY_SOCKET`` this module cannot use (neither a path nor ``@name``, e.g.
  systemd 254's ``vsock:`` addresses) is treated the same way.
* A send never raises: errors are counted in ``Notifier.failures`` and the call returns False.
* Sends never block the poll loop for long: the socket has a short timeout.
* The socket is close-on-exec (and so never reaches a child process); it is opened lazily and
  ``sendto`` names the address each time, so a ``systemctl daemon-reexec`` (which binds the
  notify socket anew) does not leave us talking to a dead socket.
* The environment is left as it is (``NOTIFY_SOCKET`` is not unset): only the fd matters for
  children, and it is never inherited.
* Status text is one line: line breaks and tabs become spaces, other control and format
  characters are escaped (``\\x1b``, ``\\u202e``), because a status may quote a file name and
  file names are untrusted.

The watchdog: ``WATCHDOG_USEC`` is honoured only when ``WATCHDOG_PID`` is unset or names this
very process (the variables leak into children, which must not think the watchdog is
theirs).  ``watchdog_interval()`` is the recommended ping period, half the timeout;
``watchdog()`` sends ``WATCHDOG=1`` only when the watchdog is ours.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

from inodewatch.text import escape_control

SEND_TIMEOUT = 1.0  # seconds: a full systemd queue must not stall the daemon's loop
STATUS_MAX = 1024  # characters: systemctl status shows one line; a path can be 4096 bytes
_BREAKS = re.compile(r"[\r\n\t]+")


def _socket_address(value: str | None) -> bytes | None:
    """The sockaddr_un path for $NOTIFY_SOCKET, or None when it is unset or unusable."""
    if not value:
        return None
    raw = os.fsencode(value)
    if raw.startswith(b"@"):
        raw = b"\0" + raw[1:]
    elif not raw.startswith(b"/"):
        return None  # e.g. "vsock:2:1234" (systemd >= 254): not for a host daemon
    if len(raw) < 2:
        return None
    return raw


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC if it is valid and meant for `pid`, else None."""
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner != "":
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def one_line(text: str) -> str:
    """Status text safe for a single ``STATUS=`` line."""
    text = _BREAKS.sub(" ", text).strip()
    text = escape_control(text)  # ESC, NUL, bidi overrides, U+2028, lone surrogates...
    if len(text) > STATUS_MAX:
        text = text[: STATUS_MAX - 1] + "\u2026"
    return text


class Notifier:
    """Talks to systemd's notify socket; every method is a no-op without one."""

    def __init__(self, address: bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if address is not None else None
        self.failures = 0
        self.last_error: OSError | None = None
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (os.environ by default)."""
        env = os.environ if environ is None else environ
        address = _socket_address(env.get("NOTIFY_SOCKET"))
        usec = _watchdog_usec(env, os.getpid() if pid is None else pid)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # --- the messages -----------------------------------------------------------------

    def ready(self, status: str = "") -> bool:
        """READY=1 (and STATUS= when given): start-up is complete."""
        return self._send(["READY=1", *self._status_line(status)])

    def status(self, text: str) -> bool:
        """STATUS=text: one line shown by `systemctl status`."""
        return self._send(self._status_line(text) or ["STATUS="])

    def watchdog(self) -> bool:
        """WATCHDOG=1, when the watchdog is ours (see watchdog_interval)."""
        if self.watchdog_usec is None:
            return False
        return self._send(["WATCHDOG=1"])

    def stopping(self, status: str = "") -> bool:
        """STOPPING=1 (and STATUS= when given): a clean stop has begun."""
        return self._send(["STOPPING=1", *self._status_line(status)])

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), None when no watchdog."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, fields: Mapping[str, str]) -> bool:
        """Any other sd_notify fields (e.g. {"RELOADING": "1"}); values made one line."""
        return self._send([f"{key}={one_line(value)}" for key, value in fields.items()])

    # --- plumbing ---------------------------------------------------------------------

    @staticmethod
    def _status_line(text: str) -> list[str]:
        return [f"STATUS={one_line(text)}"] if text else []

    def _send(self, lines: list[str]) -> bool:
        if self.address is None:
            return False
        message = "\n".join(lines).encode("utf-8", "backslashreplace")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT)
                self._sock = sock
            self._sock.sendto(message, self.address)
            return True
        except (OSError, ValueError) as exc:  # ValueError: an address with a NUL inside
            self.failures += 1
            self.last_error = exc if isinstance(exc, OSError) else OSError(str(exc))
            self.close()  # start afresh at the next message
            return False

    def fileno(self) -> int | None:
        """The socket's fd once a message was sent (tests check it is close-on-exec)."""
        return self._sock.fileno() if self._sock is not None else None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
