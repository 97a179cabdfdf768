"""The C demo of csrc/: its build, its command line, a demo whose stdout is read as it
comes, and the operator's ``rm so.so; cp so2.so so.so``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from . import REPO
from .procs import BenchError, Children

CSRC = REPO / "csrc"
DEMO = CSRC / "reload"  # the plugin host: --mode hold (dlclose + dlopen each tick) or leak
SO1 = CSRC / "so1.so"  # prints "so1: version 1"
SO2 = CSRC / "so2.so"  # prints "so2: version 2"


def build_demo() -> None:
    """make -s -C csrc (the demo and its two plugins)."""
    subprocess.run(["make", "-s", "-C", str(CSRC)], check=True)


def demo_args(lib: Path, mode: str, interval_ms: int, ticks: int | None = None,
              binary: Path = DEMO) -> list[str]:
    """The demo's command line; `ticks` bounds its life should the benchmark be killed
    without cleaning up."""
    args = [str(binary), "--mode", mode, "--interval-ms", str(interval_ms), "--lib", str(lib)]
    return args + (["--ticks", str(ticks)] if ticks is not None else [])


class Demo:
    """The demo in `workdir`, its stdout lines stamped with time.time() on arrival by a
    thread (the dlopen of each tick prints "soN: version N")."""

    def __init__(self, children: Children, workdir: Path, mode: str, interval_ms: int,
                 lib: Path, ticks: int, **spawn: Any) -> None:
        self.children = children
        self.proc = children.spawn(
            demo_args(lib, mode, interval_ms, ticks), signal.SIGKILL,
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            **{"stderr": subprocess.DEVNULL, **spawn})
        self.pid = self.proc.pid
        self.lines: list[tuple[float, str]] = []  # (arrival time.time(), line)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buffer = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            now = time.time()
            if not chunk:
                break
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            with self._cond:
                self.lines += [(now, line.decode(errors="replace")) for line in done]
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def count(self) -> int:
        """How many lines have come so far."""
        with self._cond:
            return len(self.lines)

    def snapshot(self) -> list[tuple[float, str]]:
        """The lines so far, a copy."""
        with self._cond:
            return list(self.lines)

    def wait_line(self, text: str, after: int, timeout: float) -> int:
        """Index of the first line at index >= after containing `text`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = after
            while True:
                while i < len(self.lines):
                    if text in self.lines[i][1]:
                        return i
                    i += 1
                if self.proc.poll() is not None:
                    raise BenchError(f"demo {self.pid} exited ({self.proc.returncode}) "
                                     f"while waiting for {text!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"timed out waiting for demo output {text!r}")
                self._cond.wait(min(remaining, 0.1))

    def stop(self) -> None:
        self.children.stop(self.proc)
        self._thread.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Replacement(NamedTuple):
    """One `rm so.so; cp so2.so so.so`: time.time() just before each step, and the inodes."""

    t_unlink: float
    t_create: float
    old_ino: int
    new_ino: int


def rm_cp(path: Path, new: Path = SO2) -> Replacement:
    """`rm path; cp new path`, as the shell line does it: the unlink, then the copy's
    create (O_CREAT) right after."""
    old_ino = os.stat(path).st_ino
    t_unlink = time.time()
    os.unlink(path)
    t_create = time.time()
    shutil.copyfile(new, path)
    return Replacement(t_unlink, t_create, old_ino, os.stat(path).st_ino)
