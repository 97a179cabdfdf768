"""One pass over processes: which files each holds that no longer match the disk.

A one-shot scan sees deleted and replaced files directly; a rename it cannot see (maps
simply shows the new name), which is what the watch daemon is for.

`scan_all` spreads a host's processes over the CPUs it may use: forked workers and the
parent take chunks of pids from one queue (a pipe of chunk numbers), so the faster finish
more and all finish together, and each worker sends its result back through a pipe as plain
tuples (marshal: pickle's import alone would cost a scan more than a worker saves).  Chunks
taken by a worker that fails are scanned again by the parent: a failure costs time, never
findings.
"""

import marshal
import os
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from inodewatch import procfs
from inodewatch.model import FileId, Finding, find_divergence

# Below this many processes a fork (~1 ms, plus a second stat cache) costs more than it saves.
PIDS_PER_WORKER = 100
MAX_WORKERS = 4
# Chunks small enough to even out the end, few enough that their numbers (2 bytes each) fit
# in one atomic pipe write, which never blocks even on the smallest pipe (a page).
CHUNK_PIDS = 16
MAX_CHUNKS = 1000


class ProcessReport(NamedTuple):
    pid: int
    comm: bytes
    findings: list[Finding]


class ScanSummary(NamedTuple):
    reports: list[ProcessReport]
    kernel_threads: int = 0
    unreadable: int = 0
    exited: int = 0  # gone between listing and reading: not an error under --all

    @property
    def diverged(self) -> list[ProcessReport]:
        return [r for r in self.reports if r.findings]


def examine(pid: int, shared: dict[bytes, procfs.OnDisk | None] | None = None) -> tuple[bool, list[Finding]]:
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
    return ScanSummary([scan_process(pid) for pid in pids])


def scan_all(workers: int | None = None) -> ScanSummary:
    """Scan every user-space process, skipping kernel threads and what cannot be read.

    `workers`: processes to spread the work over (default: one per usable CPU, at most
    MAX_WORKERS, one per PIDS_PER_WORKER processes).
    """
    pids = procfs.list_pids()
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS, len(pids) // PIDS_PER_WORKER)
    if workers <= 1:
        return _scan_share(pids)
    size = max(CHUNK_PIDS, -(-len(pids) // MAX_CHUNKS))
    chunks = [pids[i:i + size] for i in range(0, len(pids), size)]
    queue = _work_queue(len(chunks))
    started = [_start_worker(chunks, queue) for _ in range(workers - 1)]
    parts = [_scan_queued(chunks, queue)]
    os.close(queue)
    parts += [part for worker in started if worker is not None
              if (part := _collect(worker)) is not None]
    taken = {number for part in parts for number in part.chunks}
    left = [pid for number, chunk in enumerate(chunks) if number not in taken for pid in chunk]
    summaries = [part.summary for part in parts] + [_scan_share(left)]
    return ScanSummary(
        sorted((r for part in summaries for r in part.reports), key=lambda r: r.pid),
        sum(p.kernel_threads for p in summaries), sum(p.unreadable for p in summaries),
        sum(p.exited for p in summaries))


def _scan_share(pids: Iterable[int]) -> ScanSummary:
    """Cheap for the common case: /proc/PID/stat (comm, the kernel-thread flag) is read only
    for a process with findings, or that maps no file (as kernel threads)."""
    reports: list[ProcessReport] = []
    kernel_threads = unreadable = exited = 0
    shared: dict[bytes, procfs.OnDisk | None] = {}
    for pid in pids:
        try:
            maps_files, findings = examine(pid, shared)
            if not maps_files and procfs.read_stat(pid).is_kernel_thread:
                kernel_threads += 1
                continue
            comm = procfs.read_stat(pid).comm if findings else b""
            reports.append(ProcessReport(pid, comm, findings))
        except procfs.ProcessGone:
            exited += 1
        except procfs.ProcError:
            unreadable += 1
    return ScanSummary(reports, kernel_threads, unreadable, exited)


class Share(NamedTuple):
    summary: ScanSummary
    chunks: list[int]  # the chunk numbers it covers


def _work_queue(count: int) -> int:
    """A pipe holding the chunk numbers 0..count-1, its write end closed: a read of 2 bytes
    takes one number, atomically, whichever process reads it; b"" means no work is left."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"".join(n.to_bytes(2, "little") for n in range(count)))
    os.close(write_end)
    return read_end


def _scan_queued(chunks: list[list[int]], queue: int) -> Share:
    taken: list[int] = []

    def queued_pids() -> Iterator[int]:
        while number := os.read(queue, 2):
            taken.append(int.from_bytes(number, "little"))
            yield from chunks[taken[-1]]
    return Share(_scan_share(queued_pids()), taken)


class Worker(NamedTuple):
    pid: int
    pipe: int  # read end: the worker's Share, marshalled


def _start_worker(chunks: list[list[int]], queue: int) -> Worker | None:
    """Fork a worker scanning chunks from `queue`; None if it cannot be started."""
    read_end, write_end = os.pipe()
    try:
        child = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return None
    if child == 0:
        status = 1
        try:
            os.close(read_end)
            share = _scan_queued(chunks, queue)
            with open(write_end, "wb") as out:
                out.write(marshal.dumps((to_plain(share.summary), share.chunks)))
            status = 0
        finally:
            # never return into the caller's code, nor flush buffers the parent owns
            os._exit(status)
    os.close(write_end)
    return Worker(child, read_end)


def _collect(worker: Worker) -> Share | None:
    """The worker's result; None if it failed."""
    with open(worker.pipe, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(worker.pid, 0)
    if status != 0:
        return None
    try:
        summary, chunks = marshal.loads(data)
        return Share(from_plain(summary), chunks)
    except (EOFError, ValueError, TypeError):
        return None


def to_plain(summary: ScanSummary) -> tuple[Any, ...]:
    """The summary as builtins only (marshal takes no tuple subclass)."""
    return ([(r.pid, r.comm, [(*f[:3], tuple(f.mapped), f.disk and tuple(f.disk), *f[5:])
                              for f in r.findings]) for r in summary.reports],
            *summary[1:])


def from_plain(plain: tuple[Any, ...]) -> ScanSummary:
    reports, *counts = plain
    return ScanSummary(
        [ProcessReport(pid, comm, [Finding(subject, kind, path, FileId(*mapped),
                                           disk and FileId(*disk), *rest)
                                   for subject, kind, path, mapped, disk, *rest in findings])
         for pid, comm, findings in reports],
        *counts)
