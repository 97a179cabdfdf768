"""How a --unit target's main process ended, asked of systemd when the kernel did not say.

In a PID namespace other than the initial one (a container) the proc connector is deaf and a
pidfd tells only that the process is gone.  systemd, its parent, reaped it and keeps the
status as the unit's `ExecMainPID`/`ExecMainCode`/`ExecMainStatus`.  We ask with `systemctl
show` (an argument vector; the unit name is data) rather than D-Bus: no D-Bus library to
depend on, and systemctl speaks to the manager as any unprivileged user may.  It runs as a
child whose stdout the daemon's poll loop reads, so the loop never waits on it.

parse_show() is the pure part: the text of `systemctl show`, the pid that exited -> an
ExitStatus with source "systemd", or None when systemd's record is of another process (not
reaped yet: asked again, up to ATTEMPTS times) or says nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess

from inodewatch.exits import ExitStatus

PROPERTIES = ("ExecMainPID", "ExecMainCode", "ExecMainStatus")
ATTEMPTS = 5  # asked at most this often per exit,
RETRY_S = 0.1  # this long apart (systemd reaps at its next SIGCHLD: milliseconds)
TIMEOUT_S = 2.0  # one query's whole life: a hung manager costs an exit's status, not the loop
MAX_OUTPUT = 4096  # three short properties: anything more is not systemctl's answer
# siginfo's si_code for a child, as systemd stores it in ExecMainCode
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3


def query_argv(unit: bytes) -> list[bytes]:
    return [b"systemctl", b"show", b"--property=" + ",".join(PROPERTIES).encode(), b"--", unit]


def parse_show(text: bytes, pid: int) -> ExitStatus | None:
    """`ExecMainPID=7\\nExecMainCode=2\\nExecMainStatus=11\\n` about pid 7 -> killed by
    SIGSEGV; None when the record is not of `pid` or not of an exit."""
    values: dict[str, str] = {}
    for line in text.decode("ascii", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key in PROPERTIES:
            values[key] = value.strip()
    try:
        main_pid, code, status = (int(values[p]) for p in PROPERTIES)
    except (KeyError, ValueError):
        return None
    if main_pid != pid or status < 0:
        return None
    if code == CLD_EXITED and status <= 255:
        return ExitStatus(status, None, False, "systemd")
    if code in (CLD_KILLED, CLD_DUMPED):
        try:
            name = signal.Signals(status).name
        except ValueError:
            name = f"SIG{status}"
        return ExitStatus(None, name, code == CLD_DUMPED, "systemd")
    return None


class UnitQuery:
    """One exit's question to systemd: a `systemctl show` child at a time, retried until its
    record is of this pid, ATTEMPTS are spent or TIMEOUT_S has passed."""

    def __init__(self, pid: int, unit: bytes, now: float) -> None:
        self.pid = pid
        self.unit = unit
        self.deadline = now + TIMEOUT_S
        self.attempts = 0
        self.retry_at: float | None = now  # when to ask (again); None while a child runs
        self.child: subprocess.Popen[bytes] | None = None
        self.output = b""

    def start(self) -> int | None:
        """Ask now: the fd to poll for the answer, or None if systemctl cannot be run."""
        self.attempts += 1
        self.retry_at, self.output = None, b""
        try:
            self.child = subprocess.Popen(query_argv(self.unit), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          env={"PATH": os.defpath, "LC_ALL": "C",
                                               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
        except OSError:
            self.child = None
            return None
        assert self.child.stdout is not None
        os.set_blocking(self.child.stdout.fileno(), False)
        return self.child.stdout.fileno()

    def read(self, now: float) -> ExitStatus | None:
        """Take what the child wrote; at its end, the status if it is this exit's (else a
        retry is due, unless given up: see done())."""
        assert self.child is not None and self.child.stdout is not None
        try:
            chunk = os.read(self.child.stdout.fileno(), MAX_OUTPUT)
        except BlockingIOError:
            return None
        self.output += chunk
        if chunk and len(self.output) <= MAX_OUTPUT:
            return None
        self.finish()
        found = parse_show(self.output, self.pid)
        # No output: systemctl could not ask (e.g. the bus refused a DynamicUser= service):
        # asking again would only delay the exit's line.
        if found is None and self.output and self.attempts < ATTEMPTS:
            self.retry_at = now + RETRY_S
        return found

    def finish(self) -> None:
        """End the child (its answer read, or given up) without waiting on it for long."""
        child, self.child = self.child, None
        if child is None:
            return
        assert child.stdout is not None
        child.stdout.close()
        if child.poll() is None:
            child.kill()  # past its end of output or deadline: nothing more to learn
            child.wait()

    def given_up(self, now: float) -> bool:
        return now >= self.deadline or (self.child is None and self.retry_at is None)
