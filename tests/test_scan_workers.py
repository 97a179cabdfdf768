"""`scan_all` spread over forked workers: the same findings as one process, and a worker
that fails (or cannot be forked) leaves its share to the parent instead of losing it."""

from __future__ import annotations

import marshal
import os

import pytest

from inodewatch import procfs, scan
from inodewatch.model import FileId, Finding

pytestmark = pytest.mark.integration


def demos_with_divergence(start_demo, n: int = 6) -> dict[int, bytes]:
    """n leak demos, every other one with its library deleted: pid -> library path."""
    demos = [start_demo("leak") for _ in range(n)]
    for demo in demos[::2]:
        os.unlink(demo.lib)
    return {demo.pid: demo.lib for demo in demos}


def findings_of(summary: scan.ScanSummary, pids: dict[int, bytes]) -> dict[int, list[Finding]]:
    return {r.pid: r.findings for r in summary.reports if r.pid in pids}


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_find_what_one_process_finds(start_demo, workers):
    demos = demos_with_divergence(start_demo)
    alone = scan.scan_all(workers=1)
    spread = scan.scan_all(workers=workers)
    assert set(findings_of(alone, demos)) == set(demos)  # every demo was scanned
    assert findings_of(spread, demos) == findings_of(alone, demos)
    deleted = {pid for pid, found in findings_of(spread, demos).items()
               if [f.event for f in found] == ["mapping.deleted"]}
    assert deleted == set(list(demos)[::2])
    pids = [r.pid for r in spread.reports]
    assert pids == sorted(pids)


def test_a_failing_worker_leaves_its_share_to_the_parent(start_demo, monkeypatch):
    demos = demos_with_divergence(start_demo)
    parent = os.getpid()

    def fail_in_worker(summary: scan.ScanSummary) -> tuple:
        if os.getpid() != parent:
            raise RuntimeError("worker broke")
        return real_to_plain(summary)
    real_to_plain = scan.to_plain
    monkeypatch.setattr(scan, "to_plain", fail_in_worker)
    spread = scan.scan_all(workers=3)
    assert set(findings_of(spread, demos)) == set(demos)
    assert sum(1 for found in findings_of(spread, demos).values() if found) == 3


def test_no_fork_means_one_process(start_demo, monkeypatch):
    demos = demos_with_divergence(start_demo)

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    spread = scan.scan_all(workers=2)
    assert set(findings_of(spread, demos)) == set(demos)


def test_plain_round_trip_keeps_hostile_bytes_and_every_field():
    summary = scan.ScanSummary(
        [scan.ProcessReport(7, b"re\x1bload\xff", [
            Finding("mapping", "replaced", b"/opt/a\nb \xff.so", FileId(64768, 12),
                    FileId(64768, 13), perms=("r--p", "r-xp")),
            Finding("fd", "renamed", b"/x (deleted)", FileId(1, 2), None, b"/y", (), 4)],
            [procfs.Unknown("mapping", b"/long\xff", procfs.TOO_LONG),
             procfs.Unknown("fd", b"", procfs.UNREADABLE, b"Input/output error")]),
         scan.ProcessReport(8, b"", [], []), scan.ProcessReport(9, b"x", [], [], 1)],
        kernel_threads=3, unreadable=1, exited=2)
    # through marshal, as a worker sends it: a field marshal cannot take would make every
    # worker fail, silently (the parent redoes their work)
    back = scan.from_plain(marshal.loads(marshal.dumps(scan.to_plain(summary))))
    assert back == summary
    assert type(back.reports[0].findings[0].mapped) is FileId
    assert type(back.reports[0].unknown[0]) is procfs.Unknown


@pytest.mark.parametrize("per_worker", [1, 10**9])
def test_default_worker_count_on_any_host(start_demo, monkeypatch, per_worker):
    """A small host (fewer processes than one worker's share) scans in one process; a big
    one in several."""
    demos = demos_with_divergence(start_demo, 2)
    monkeypatch.setattr(scan, "PIDS_PER_WORKER", per_worker)
    assert set(findings_of(scan.scan_all(), demos)) == set(demos)
