"""One pass over processes: which files each holds that no longer match the disk.

A one-shot scan sees deleted and replaced files directly; a rename it cannot see (maps
simply shows the new name), which is what the watch daemon is for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from inodewatch import procfs
from inodewatch.model import Finding, find_divergence


@dataclass(frozen=True)
class ProcessReport:
    pid: int
    comm: bytes
    findings: list[Finding]


@dataclass
class ScanSummary:
    reports: list[ProcessReport] = field(default_factory=list)
    kernel_threads: int = 0
    unreadable: int = 0
    exited: int = 0  # gone between listing and reading: not an error under --all

    @property
    def diverged(self) -> list[ProcessReport]:
        return [r for r in self.reports if r.findings]


def examine(pid: int, shared: dict[bytes, os.stat_result | None] | None = None) -> tuple[bool, list[Finding]]:
    """(whether the process maps any file, its divergences).  Raises procfs.ProcError.
    `shared`: a stat cache for the processes of one pass (see procfs.DiskView)."""
    disk = procfs.DiskView(pid, shared)
    mapped = procfs.read_mapped_files(pid, disk)
    open_files = procfs.read_open_files(pid, disk)
    return bool(mapped), find_divergence(mapped, open_files, disk)


def scan_process(pid: int) -> ProcessReport:
    """Scan one process.  Raises procfs.ProcError (ProcessGone, AccessDenied)."""
    st = procfs.read_stat(pid)
    return ProcessReport(pid, st.comm, examine(pid)[1])


def scan_pids(pids: Iterable[int]) -> ScanSummary:
    """Scan the named processes; the first one that cannot be read raises ProcError."""
    summary = ScanSummary()
    for pid in pids:
        summary.reports.append(scan_process(pid))
    return summary


def scan_all() -> ScanSummary:
    """Scan every user-space process, skipping kernel threads and what cannot be read.

    Cheap for the common case: /proc/PID/stat (comm, the kernel-thread flag) is read only
    for a process with findings, or that maps no file (as kernel threads).
    """
    summary = ScanSummary()
    shared: dict[bytes, os.stat_result | None] = {}
    for pid in procfs.list_pids():
        try:
            maps_files, findings = examine(pid, shared)
            if not maps_files and procfs.read_stat(pid).is_kernel_thread:
                summary.kernel_threads += 1
                continue
            comm = procfs.read_stat(pid).comm if findings else b""
            summary.reports.append(ProcessReport(pid, comm, findings))
        except procfs.ProcessGone:
            summary.exited += 1
        except procfs.ProcError:
            summary.unreadable += 1
    return summary
