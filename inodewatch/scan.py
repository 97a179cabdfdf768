"""One pass over processes: which files each holds that no longer match the disk.

A one-shot scan sees deleted and replaced files directly; a rename it cannot see (maps
simply shows the new name), which is what the watch daemon is for.
"""

from __future__ import annotations

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


def process_findings(pid: int) -> list[Finding]:
    """Every divergence of one process.  Raises procfs.ProcError."""
    disk = procfs.DiskView(pid)
    mapped = procfs.read_mapped_files(pid, disk)
    open_files = procfs.read_open_files(pid, disk)
    return find_divergence(mapped, open_files, disk)


def scan_process(pid: int) -> ProcessReport:
    """Scan one process.  Raises procfs.ProcError (ProcessGone, AccessDenied)."""
    st = procfs.read_stat(pid)
    return ProcessReport(pid, st.comm, process_findings(pid))


def scan_pids(pids: Iterable[int]) -> ScanSummary:
    """Scan the named processes; the first one that cannot be read raises ProcError."""
    summary = ScanSummary()
    for pid in pids:
        summary.reports.append(scan_process(pid))
    return summary


def scan_all() -> ScanSummary:
    """Scan every user-space process, skipping kernel threads and what cannot be read."""
    summary = ScanSummary()
    for pid in procfs.list_pids():
        try:
            st = procfs.read_stat(pid)
            if st.is_kernel_thread:
                summary.kernel_threads += 1
                continue
            summary.reports.append(ProcessReport(pid, st.comm, process_findings(pid)))
        except procfs.ProcessGone:
            summary.exited += 1
        except procfs.ProcError:
            summary.unreadable += 1
    return summary
