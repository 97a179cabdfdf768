"""The watch daemon under test: started as an operator would, its JSON log read as it grows,
and what /proc says of it (the inodes its inotify fd watches, whether it sleeps in poll)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .procs import BenchError, Children, wait_for

Event = dict[str, Any]
LOG_POLL = 0.005  # seconds between reads of the daemon's log (does not enter the results)
CHECKOUT = (sys.executable, "-m", "inodewatch")  # the package this interpreter imports


def event_time(event: Event) -> float:
    """The event's own timestamp (ISO 8601, UTC, microseconds) as seconds since the epoch."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class EventLog:
    """The daemon's JSON log, read as it grows: only complete lines, each parsed once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[Event] = []
        self._file: IO[bytes] | None = None
        self._partial = b""

    def read(self) -> list[Event]:
        """Every event so far (the same list, grown)."""
        if self._file is None:
            try:
                self._file = open(self.path, "rb")
            except FileNotFoundError:
                return self.events
        data = self._partial + self._file.read()
        *done, self._partial = data.split(b"\n")
        self.events += [json.loads(line) for line in done if line]
        return self.events

    def count(self, name: str) -> int:
        """How many `name` events so far."""
        return sum(e["event"] == name for e in self.read())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Daemon:
    """`COMMAND ARGS --log-file LOG` (default: this interpreter's ``-m inodewatch``, run
    from `cwd` so that the package there, or the installed one, is imported), its stderr to
    `err` (None: the benchmark's own)."""

    def __init__(self, children: Children, args: list[str], log: Path, cwd: Path,
                 err: Path | None = None, command: Sequence[str] = CHECKOUT,
                 stop_signal: int = signal.SIGTERM, env: dict[str, str] | None = None) -> None:
        self.children = children
        self.log = EventLog(log)
        self.err_path = err
        self.args = [*command, *args, "--log-file", str(log)]
        out = open(err, "wb") if err is not None else None
        try:
            self.proc = children.spawn(self.args, stop_signal, cwd=cwd, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=out, env=env)
        finally:
            if out is not None:
                out.close()
        self.pid = self.proc.pid

    def stderr(self) -> str:
        """What it wrote to `err` so far ("" when it goes to the benchmark's own)."""
        try:
            return self.err_path.read_text(errors="replace") if self.err_path else ""
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"daemon exited ({self.proc.returncode}): "
                             f"{self.stderr()[-1000:]!r}")

    def attached(self) -> set[int]:
        """The pids of its target.attached events so far."""
        return {e.get("pid") for e in self.log.read() if e["event"] == "target.attached"}

    def wait_event(self, match: Callable[[Event], bool], start: int, timeout: float,
                   give_up: Callable[[], bool] = lambda: False) -> Event | None:
        """The first event at index >= start that matches, or None after `timeout` (or as
        soon as `give_up()` says it will not come)."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            events = self.log.read()
            while i < len(events):
                if match(events[i]):
                    return events[i]
                i += 1
            self.check_alive()
            if time.monotonic() > deadline or give_up():
                return None
            time.sleep(LOG_POLL)

    def wait_ready(self, target: int, inodes: set[int], timeout: float) -> None:
        """target.attached logged for `target`, the watches in place, and asleep in poll
        (target.attached alone is logged before the watches are added)."""
        def attached() -> bool:
            self.check_alive()
            return target in self.attached()
        wait_for(attached, timeout, "target.attached")
        self.wait_idle(inodes, timeout)

    def wait_idle(self, inodes: set[int], timeout: float) -> None:
        """Its inotify fd watches `inodes` and it sleeps in poll."""
        def idle() -> bool:
            self.check_alive()
            return inodes <= inotify_inodes(self.pid) and asleep_in_poll(self.pid)
        wait_for(idle, timeout, f"the daemon to watch inodes {sorted(inodes)} and sleep in poll")

    def stop(self, sig: int | None = None) -> None:
        """Stop it and read its log to the end (up to daemon.stopped after a SIGTERM)."""
        self.children.stop(self.proc, sig)
        self.log.read()
        self.log.close()


def inotify_inodes(pid: int) -> set[int]:
    """Inodes watched by the inotify fds of `pid`, from /proc/PID/fdinfo."""
    found: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"{fd_dir}/{name}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("inotify "):
                found.update(int(field[4:], 16) for field in line.split()
                             if field.startswith("ino:"))
    return found


def asleep_in_poll(pid: int) -> bool:
    """Whether `pid` sleeps (state S) in poll(2), from /proc/PID/stat and wchan."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
    except OSError:
        return False
    return state == "S" and (wchan in ("", "0") or "poll" in wchan)
