"""workers.spread on a plain job: every item done exactly once, whichever process did it."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

from inodewatch import workers


def squares(items: Iterable[int]) -> list[int]:
    return [i * i for i in items]


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 500, 40_000])
@pytest.mark.parametrize("processes", [2, 4])
def test_every_item_once(count, processes):
    parts = workers.spread(list(range(count)), squares, processes, list, list)
    assert sorted(x for part in parts for x in part) == [i * i for i in range(count)]
    # at most 1000 chunks whatever the count: the queue is one atomic pipe write
    assert len(parts) <= processes + 1


def test_a_failing_worker_leaves_its_chunks_to_the_parent():
    parent = os.getpid()

    def fails_in_workers(items: Iterable[int]) -> list[int]:
        done = squares(items)
        if os.getpid() != parent:
            raise RuntimeError("worker broke")
        return done
    parts = workers.spread(list(range(300)), fails_in_workers, 3, list, list)
    assert sorted(x for part in parts for x in part) == [i * i for i in range(300)]


def test_a_worker_result_that_does_not_decode_is_done_again():
    def bad_decode(plain: list[int]) -> list[int]:
        raise ValueError("garbled")
    parts = workers.spread(list(range(300)), squares, 2, list, bad_decode)
    assert sorted(x for part in parts for x in part) == [i * i for i in range(300)]


def test_started_with_sigchld_ignored():
    """A parent that ignores SIGCHLD passes that on through exec: the kernel reaps the
    workers itself and waitpid finds none.  The results still count."""
    import signal
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        parts = workers.spread(list(range(300)), squares, 3, list, list)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert sorted(x for part in parts for x in part) == [i * i for i in range(300)]
    assert parts[-1] == []  # nothing judged failed and redone


def test_a_failing_own_share_leaves_no_worker_behind():
    parent = os.getpid()

    def fails_in_parent(items: Iterable[int]) -> list[int]:
        done = squares(items)
        if os.getpid() == parent:
            raise RuntimeError("parent broke")
        return done
    def children() -> set[str]:  # live and zombie ones alike
        with open(f"/proc/self/task/{parent}/children") as f:
            return set(f.read().split())
    fds_before, children_before = set(os.listdir("/proc/self/fd")), children()
    with pytest.raises(RuntimeError):
        workers.spread(list(range(300)), fails_in_parent, 3, list, list)
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert children() <= children_before  # every worker stopped and reaped
