"""Spread one job over forked worker processes: a list of ints (pids) cut into chunks.

The workers and the parent take chunks from one queue, a pipe of chunk numbers, so the faster
ones take more and all finish together (a forked worker pays copy-on-write faults; a CPU may
be busy elsewhere).  Each worker sends its result back through its own pipe with marshal --
pickle's import alone would cost a one-shot command more than a worker saves -- so results
travel as builtins (`encode` / `decode`).  The chunks a failed worker took are done again by
the parent: a failure costs time, never results.
"""

from __future__ import annotations

import marshal
import os
import signal
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing for the checkers only: a one-shot scan would pay its import
    from typing import Any, TypeVar
    T = TypeVar("T")

# Chunks small enough to even out the end, few enough that their numbers (2 bytes each) fit
# in one atomic pipe write, which never blocks even on the smallest pipe (a page).
CHUNK_ITEMS = 16
MAX_CHUNKS = 1000


class Part(namedtuple("Part", "result chunks")):
    """What one process did: result: T, and chunks: list[int], the numbers of the chunks it
    covers."""

    __slots__ = ()


class Worker(namedtuple("Worker", "pid pipe")):
    """A forked worker (pid: int) and the read end of its pipe (pipe: int)."""

    __slots__ = ()


def spread(items: list[int], job: Callable[[Iterable[int]], T], workers: int,
           encode: Callable[[T], Any], decode: Callable[[Any], T]) -> list[T]:
    """`job` over all of `items` in `workers` processes, this one included: one result per
    process that took part, and one for whatever failed workers left undone."""
    size = max(CHUNK_ITEMS, -(-len(items) // MAX_CHUNKS))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    queue = _work_queue(len(chunks))
    started = [w for w in (_start_worker(chunks, queue, job, encode) for _ in range(workers - 1))
               if w is not None]
    parts: list[Part] = []
    pending = list(started)  # not reaped yet: their pids cannot have been reused
    try:
        parts.append(_take(chunks, queue, job))
        while pending:
            if (part := _collect(pending.pop(0), decode)) is not None:
                parts.append(part)
    except BaseException:
        for worker in pending:  # our own share failed (or Ctrl-C): no strays, no zombies
            _abandon(worker)
        raise
    finally:
        os.close(queue)
    done = {number for part in parts for number in part.chunks}
    left = [item for number, chunk in enumerate(chunks) if number not in done for item in chunk]
    return [part.result for part in parts] + [job(left)]


def _work_queue(count: int) -> int:
    """A pipe holding the chunk numbers 0..count-1, its write end closed: a read of 2 bytes
    takes one number, atomically, whichever process reads it; b"" means no work is left."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"".join(n.to_bytes(2, "little") for n in range(count)))
    os.close(write_end)
    return read_end


def _take(chunks: list[list[int]], queue: int, job: Callable[[Iterable[int]], T]) -> Part:
    """`job` over the items of every chunk this process takes from the queue."""
    taken: list[int] = []

    def queued_items() -> Iterator[int]:
        while number := os.read(queue, 2):
            taken.append(int.from_bytes(number, "little"))
            yield from chunks[taken[-1]]
    return Part(job(queued_items()), taken)


def _start_worker(chunks: list[list[int]], queue: int, job: Callable[[Iterable[int]], T],
                  encode: Callable[[T], Any]) -> Worker | None:
    """Fork a worker taking chunks from `queue`; None if it cannot be started."""
    try:
        read_end, write_end = os.pipe()
    except OSError:
        return None  # out of fds: the parent does the work
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
            part = _take(chunks, queue, job)
            with open(write_end, "wb") as out:
                out.write(marshal.dumps((encode(part.result), part.chunks)))
            status = 0
        finally:
            # never return into the caller's code, nor flush buffers the parent owns
            os._exit(status)
    os.close(write_end)
    return Worker(child, read_end)


def _collect(worker: Worker, decode: Callable[[Any], T]) -> Part | None:
    """The worker's part; None if it failed.  The data decides, not the exit status (which
    is lost when whoever started us ignores SIGCHLD): a worker writes only once its job is
    done, and a cut-off marshal stream does not load."""
    with open(worker.pipe, "rb") as pipe:
        data = pipe.read()
    _reap(worker.pid)
    try:
        result, chunks = marshal.loads(data)
        return Part(decode(result), chunks)
    except (EOFError, ValueError, TypeError):
        return None


def _abandon(worker: Worker) -> None:
    """Stop a worker whose result is no longer wanted, close its pipe, reap it."""
    os.kill(worker.pid, signal.SIGKILL)
    os.close(worker.pipe)
    _reap(worker.pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # SIGCHLD ignored by whoever started us: the kernel reaped it already
