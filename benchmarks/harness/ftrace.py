"""A private ftrace instance: the kernel's own stamps of chosen syscalls of chosen pids.

Needs root and tracefs.  tracefs is mounted in the benchmark's work directory when it is
not at /sys/kernel/tracing (procs.scratch unmounts it should close() not run).  The trace
clock is ``tai``, converted to time.time() (CLOCK_REALTIME): the kernel's TAI offset is a
whole number of seconds (often 0).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

SYSTEM_TRACEFS = Path("/sys/kernel/tracing")


class TraceInstance:
    """instances/NAME of tracefs, on the tai clock, undone by close() as far as it got."""

    def __init__(self, workdir: Path, name: str, buffer_kb: int) -> None:
        self.mounted: Path | None = None
        self.dir: Path | None = None
        self.enabled: list[Path] = []
        try:
            base = SYSTEM_TRACEFS
            if not (base / "instances").is_dir():
                base = self.mounted = workdir / "tracefs"
                base.mkdir()
                subprocess.run(["mount", "-t", "tracefs", "nodev", str(base)], check=True,
                               capture_output=True)
            self.dir = base / "instances" / name
            self.dir.mkdir()
            (self.dir / "trace_clock").write_text("tai")
            (self.dir / "buffer_size_kb").write_text(str(buffer_kb))
        except BaseException:
            self.close()
            raise
        self.tai_offset = round(time.clock_gettime(time.CLOCK_TAI) - time.time())

    def enable(self, event: str, condition: str) -> None:
        """Trace `event` (e.g. "syscalls/sys_enter_openat") where `condition` holds
        (an ftrace filter, e.g. "common_pid == 42")."""
        assert self.dir is not None
        path = self.dir / "events" / event
        (path / "filter").write_text(condition)
        (path / "enable").write_text("1")
        self.enabled.append(path)

    def clear(self) -> None:
        """Empty the buffer (slow: an RCU grace period)."""
        assert self.dir is not None
        (self.dir / "trace").write_text("")

    def text(self) -> str:
        """The buffer as it is now."""
        assert self.dir is not None
        return (self.dir / "trace").read_text()

    def open_pipe(self) -> int:
        """A non-blocking fd of trace_pipe (reading it consumes the buffer)."""
        assert self.dir is not None
        return os.open(self.dir / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)

    def wall_time(self, stamp: str) -> float:
        """A trace line's stamp as time.time()."""
        return float(stamp) - self.tai_offset

    def disable(self) -> None:
        """Stop tracing (what is in the buffer stays readable)."""
        for path in self.enabled:
            try:
                (path / "enable").write_text("0")
            except OSError:
                pass
        self.enabled = []

    def close(self) -> None:
        self.disable()
        if self.dir is not None:
            try:
                self.dir.rmdir()
            except OSError:
                pass
        if self.mounted is not None:
            subprocess.run(["umount", str(self.mounted)], capture_output=True)
        self.mounted = self.dir = None
