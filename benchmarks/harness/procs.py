"""The processes a benchmark starts, its scratch directory, and waiting on a condition.

Every process goes through ``Children.spawn`` with the signal that stops it, so that a
benchmark stops all of them at the end, also on Ctrl-C or SIGTERM
(``sigterm_as_interrupt``).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """Something other than the measured figure went wrong (a process died, a wait timed out)."""


def say(who: str, message: str) -> None:
    """A progress line on stderr (stdout carries the results)."""
    print(f"{who}: {message}", file=sys.stderr, flush=True)


def poll(predicate: Callable[[], T], timeout: float, every: float) -> T:
    """`predicate()` every `every` s until it is true or `timeout` s have passed (it is
    asked once more then); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.005) -> T:
    """The first true value of `predicate()`; BenchError after `timeout` seconds."""
    value = poll(predicate, timeout, every)
    if not value:
        raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
    return value


def wait_until(predicate: Callable[[], object], timeout: float, every: float = 0.05) -> bool:
    """Whether `predicate()` came true within `timeout` seconds."""
    return bool(poll(predicate, timeout, every))


class Children:
    """Every process a benchmark starts, each with the signal that stops it (SIGKILL for a
    demo, which has nothing to say; SIGTERM for a daemon, which then logs its last lines)."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[Any], int, bool]] = []

    def spawn(self, args: list[str], stop_signal: int = signal.SIGTERM, group: bool = False,
              **popen: Any) -> subprocess.Popen[Any]:
        """Popen(args, **popen), remembered.  `group`: it leads a session of its own
        (start_new_session) and stopping it signals the whole process group."""
        proc = subprocess.Popen(args, start_new_session=group, **popen)
        self.procs.append((proc, stop_signal, group))
        return proc

    def forget(self, proc: subprocess.Popen[Any]) -> None:
        """No longer ours to stop (reaped elsewhere, e.g. by os.wait4)."""
        self.procs = [entry for entry in self.procs if entry[0] is not proc]

    def stop(self, proc: subprocess.Popen[Any], sig: int | None = None) -> None:
        """Stop `proc` with `sig` (default: its own stop signal), SIGKILL after 5 s."""
        entry = next((e for e in self.procs if e[0] is proc), (proc, signal.SIGTERM, False))
        sig = entry[1] if sig is None else sig
        try:
            if entry[2]:
                os.killpg(proc.pid, sig)  # the group outlives its leader: always signalled
            elif proc.poll() is None:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.forget(proc)

    def stop_all(self) -> None:
        """Stop every process still remembered, the last started first."""
        for proc, _, _ in list(reversed(self.procs)):
            self.stop(proc)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()


def die_with_parent() -> None:
    """preexec_fn of a demo: SIGKILL it when the benchmark dies, whatever kills it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def as_user(user: str) -> list[str]:
    """The command prefix that runs what follows as `user` (uid, gid, no other groups)."""
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
            "--"]


@contextmanager
def exits(who: str, interrupted: str = "interrupted; stopping every process started"
          ) -> Iterator[None]:
    """The benchmarks' ends: Ctrl-C (or SIGTERM, see sigterm_as_interrupt) exits 130 and a
    BenchError 1, each with one line on stderr; the clean-up of the enclosing blocks runs
    on the way out."""
    try:
        yield
    except KeyboardInterrupt:
        say(who, interrupted)
        raise SystemExit(130) from None
    except BenchError as exc:
        say(who, str(exc))
        raise SystemExit(1) from None


def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt, so the same clean-up runs as on Ctrl-C."""
    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)


@contextmanager
def scratch(prefix: str, who: str, keep: bool = False, mode: int | None = None,
            parent: Path | None = None) -> Iterator[Path]:
    """A fresh temporary directory, removed at the end unless `keep`; anything still mounted
    in it (a tracefs of ftrace.TraceInstance) is unmounted first, and if that fails the
    directory is left in place (rmtree would descend into the mount)."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if mode is not None:
        root.chmod(mode)
    try:
        yield root
    finally:
        mounts = [p for p in root.iterdir() if os.path.ismount(p)] if root.is_dir() else []
        for mount in mounts:
            subprocess.run(["umount", str(mount)], capture_output=True)
        stuck = [m for m in mounts if os.path.ismount(m)]
        if keep:
            say(who, f"kept {root}")
        elif stuck:
            say(who, f"could not unmount {stuck[0]}; left {root} in place")
        else:
            shutil.rmtree(root, ignore_errors=True)
