"""One pass over processes: which files each holds that no longer match the disk.

A one-shot scan sees deleted and replaced files directly; a rename it cannot see (maps
simply shows the new name), which is what the watch daemon is for.

`scan_all` spreads a host's processes over the CPUs it may use (`workers.spread`).
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Iterable

from inodewatch import procfs
from inodewatch.model import FileId, Finding, find_divergence
from inodewatch.workers import spread

# Below this many processes a fork (~1 ms, plus a second stat cache) costs more than it saves.
PIDS_PER_WORKER = 100
MAX_WORKERS = 4


TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the checkers only: every scan would pay its import (~6 ms)
    from typing import Any

    from inodewatch.packages import Package


class ProcessReport(namedtuple("ProcessReport", "pid comm findings unknown ppid placement",
                               defaults=((), None, None))):
    """One process scanned (pid: int, comm: bytes, findings: list[Finding], unknown:
    list[procfs.Unknown], the files it holds that were not looked at; ppid: int | None and
    placement: cgroups.Placement | None, its unit and container, read for a process with
    findings only)."""

    __slots__ = ()


class ScanSummary(namedtuple("ScanSummary", "reports kernel_threads unreadable exited",
                             defaults=(0, 0, 0))):
    """reports: list[ProcessReport]; kernel_threads, unreadable, exited (gone between listing
    and reading: not an error under --all): int, the processes skipped."""

    __slots__ = ()

    @property
    def diverged(self) -> list[ProcessReport]:
        return [r for r in self.reports if r.findings]

    @property
    def skipped(self) -> int:
        return self.kernel_threads + self.unreadable + self.exited

    @property
    def restart_needed(self) -> bool:
        """Some finding is not of identical content (scan's exit status 1)."""
        return any(f.needs_restart for r in self.reports for f in r.findings)


class Examined(namedtuple("Examined", "maps_files findings unknown")):
    """One process read: maps_files: bool, whether it maps any file (a kernel thread maps
    none); findings: list[Finding]; unknown: list[procfs.Unknown]."""

    __slots__ = ()


def examine(pid: int, shared: dict[bytes, procfs.OnDisk | None] | None = None) -> Examined:
    """Read one process and compare.  Raises procfs.ProcError.  `shared`: a stat cache for
    the processes of one pass (see procfs.DiskView)."""
    disk = procfs.DiskView(pid, shared)
    mapped = procfs.read_mapped_files(pid, disk)
    open_files = procfs.read_open_files(pid, disk)
    return Examined(bool(mapped or disk.unknown), find_divergence(mapped, open_files, disk),
                    disk.unknown)


def scan_process(pid: int) -> ProcessReport:
    """Scan one process.  Raises procfs.ProcError (ProcessGone, AccessDenied)."""
    st = procfs.read_stat(pid)
    _, findings, unknown = examine(pid)
    return ProcessReport(pid, st.comm, findings, unknown, st.ppid)


def scan_pids(pids: Iterable[int]) -> ScanSummary:
    """Scan the named processes; the first one that cannot be read raises ProcError."""
    return complete(ScanSummary([scan_process(pid) for pid in pids]))


def complete(summary: ScanSummary) -> ScanSummary:
    """What only processes with findings pay for, once the workers are done: where each
    runs (its unit, its container), and every deleted or replaced finding's content judged
    (inodewatch.contentpass): one pass for the whole scan, so an inode many processes hold
    is read once; in the parent, after the workers, for the same reason."""
    if not summary.diverged:
        return summary
    from inodewatch.cgroups import read_placement
    from inodewatch.contentpass import ContentPass  # only a scan with findings pays for it

    judge = ContentPass()
    reports = []
    on_host: dict[int, None] = {}  # processes that see the host's files at their paths
    for r in summary.reports:
        if r.findings:
            view = procfs.DiskView(r.pid)
            r = r._replace(findings=[judge.judge(r.pid, f, view.root, view.mounts)
                                     for f in r.findings],
                           placement=read_placement(r.pid))
            if view.root == b"":
                on_host[r.pid] = None
        reports.append(r)
    summary = summary._replace(reports=reports)
    if not on_host:
        return summary
    from inodewatch.packages import Dpkg, default_cache

    paths = {f.path for r in reports if r.pid in on_host for f in r.findings}
    return attach_packages(summary, Dpkg(cache=default_cache()).owners(paths), on_host)


def attach_packages(summary: ScanSummary, owners: dict[bytes, Package],
                    pids: Iterable[int]) -> ScanSummary:
    """The findings of `pids` with the package owning their path (`owners`: path ->
    Package): only processes in the host's mount namespace, whose paths name the files dpkg
    installed here (a container's files are its image's)."""
    pids = set(pids)
    if not owners:
        return summary
    return summary._replace(reports=[
        r._replace(findings=[f._replace(package=owners.get(f.path)) for f in r.findings])
        if r.pid in pids else r for r in summary.reports])


def scan_all(workers: int | None = None) -> ScanSummary:
    """Scan every user-space process, skipping kernel threads and what cannot be read.

    `workers`: processes to spread the work over (default: one per usable CPU, at most
    MAX_WORKERS, one per PIDS_PER_WORKER processes).
    """
    pids = procfs.list_pids()
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS, len(pids) // PIDS_PER_WORKER)
    if workers <= 1:
        return complete(_scan_share(pids))
    parts = spread(pids, _scan_share, workers, to_plain, from_plain)
    return complete(ScanSummary(
        sorted((r for part in parts for r in part.reports), key=lambda r: r.pid),
        sum(p.kernel_threads for p in parts), sum(p.unreadable for p in parts),
        sum(p.exited for p in parts)))


def _scan_share(pids: Iterable[int]) -> ScanSummary:
    """Cheap for the common case: /proc/PID/stat (comm, the kernel-thread flag) is read only
    for a process with findings, or that maps no file (as kernel threads)."""
    reports: list[ProcessReport] = []
    kernel_threads = unreadable = exited = 0
    shared: dict[bytes, procfs.OnDisk | None] = {}
    for pid in pids:
        try:
            maps_files, findings, unknown = examine(pid, shared)
            if not maps_files and procfs.read_stat(pid).is_kernel_thread:
                kernel_threads += 1
                continue
            st = procfs.read_stat(pid) if findings or unknown else None
            reports.append(ProcessReport(pid, st.comm if st else b"", findings, unknown,
                                         st.ppid if st else None))
        except procfs.ProcessGone:
            exited += 1
        except (procfs.ProcError, OSError):
            # OSError: anything procfs did not foresee about this one process costs that
            # process, counted, never the scan of the others
            unreadable += 1
    return ScanSummary(reports, kernel_threads, unreadable, exited)


def to_plain(summary: ScanSummary) -> tuple[Any, ...]:
    """The summary as builtins only (marshal takes no tuple subclass).  A process with
    nothing to tell, as most are (no findings, nothing unknown, stat not read), travels as
    its pid alone: building and loading a tuple and two lists for each of 5,000 processes
    cost the parent ~10 ms, after its own share."""
    return ([(r.pid, r.comm, [(*f[:3], tuple(f.mapped), f.disk and tuple(f.disk), *f[5:])
                              for f in r.findings], [tuple(u) for u in r.unknown], r.ppid)
             if r.findings or r.unknown or r.comm or r.ppid is not None else r.pid
             for r in summary.reports],
            *summary[1:])


def from_plain(plain: tuple[Any, ...]) -> ScanSummary:
    reports, *counts = plain
    return ScanSummary([ProcessReport(r, b"", [], []) if type(r) is int else _report(*r)
                        for r in reports], *counts)


def _report(pid: int, comm: bytes, findings: list[tuple[Any, ...]],
            unknown: list[tuple[Any, ...]], ppid: int | None) -> ProcessReport:
    return ProcessReport(pid, comm, [Finding(subject, kind, path, FileId(*mapped),
                                             disk and FileId(*disk), *rest)
                                     for subject, kind, path, mapped, disk, *rest in findings],
                         [procfs.Unknown(*u) for u in unknown], ppid)
