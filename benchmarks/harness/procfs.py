"""What /proc says of a process's CPU and memory, and of the machine's load."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM), 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def mapped_inodes(pid: int) -> set[int]:
    """The inodes `pid` maps, from /proc/PID/maps."""
    inodes = set()
    for line in Path(f"/proc/{pid}/maps").read_bytes().splitlines():
        fields = line.split(None, 5)
        if len(fields) >= 5 and fields[4] != b"0":
            inodes.add(int(fields[4]))
    return inodes


def loadavg_text() -> str:
    """The 1, 5 and 15 minute load averages, as the kernel writes them ("0.52 0.31 0.20")."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(v) for v in loadavg_text().split()]


def system_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class Meter:
    """One process's CPU (utime + stime) and memory over a window that starts now; its
    VmRSS is sampled at each `sample()` and during `sleep_until`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = cpu_seconds(pid)
        self.t0 = time.monotonic()
        self.max_rss_kb = status_kb(pid, "VmRSS")

    def sample(self) -> None:
        self.max_rss_kb = max(self.max_rss_kb, status_kb(self.pid, "VmRSS"))

    def sleep_until(self, deadline: float, check: Callable[[], None] = lambda: None,
                    every: float = 1.0) -> None:
        """Sleep up to the time.monotonic() `deadline`, each `every` s calling `check`
        (which raises if something died) and sampling VmRSS."""
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(every, left))
            check()
            self.sample()

    def cpu(self) -> float:
        """CPU seconds used since the start."""
        return cpu_seconds(self.pid) - self.cpu0

    def wall(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.t0

    def hwm_kb(self) -> int:
        """VmHWM: the peak resident size of its whole life."""
        return status_kb(self.pid, "VmHWM")
