"""The daemon's event loop: one epoll, one handler per fd, one timer mechanism, and every
handler run in isolation.  Standard library only.

The shape is supervisor's `runforever`: each wake-up runs, in this order,
  1. the gap check (`Pulse`: did the loop not run for longer than it meant to wait?),
  2. the handlers of the fds that are ready, by their `order`, then by fd,
  3. the timers that are due (`call_at`, `call_every`), earliest first,
  4. the turn's steps (`every_turn`), in the order they were added.
poll() waits until the earliest timer, or the earliest of the deadlines that the `wake_by`
callables compute each turn (work another object schedules: a paced look, a pending exit).

Isolation: a handler that raises is handed to `on_error` (the daemon logs daemon.error with the
traceback) and the loop carries on.  The same error -- its type and the line that raised it --
REPEATS times within REPEAT_WINDOW s is a loop that cannot make progress: `run` raises
LoopFailed with one line instead of spinning on it.

The clocks are arguments, so tests drive the timers and the gap check without waiting.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import time
import traceback
from collections.abc import Callable

Handler = Callable[[float], None]  # gets the clock's reading at this wake-up
Deadline = Callable[[float], "float | None"]  # when it next needs the loop, if it does

# The loop unresponsive this long beyond the waits it asked for is a gap in watching (the
# daemon stopped, a frozen VM, an overloaded host).
GAP_THRESHOLD = 2.0
REPEATS = 10
REPEAT_WINDOW = 1.0


class LoopFailed(Exception):
    """The same error keeps repeating: the loop stops (the message is one line)."""


class Pulse:
    """Notices when the loop did not run: each `beat` gets the clock and how long the loop
    meant to wait since the last one, and returns the unexplained time when it exceeds the
    threshold (else None)."""

    def __init__(self, now: float, threshold: float = GAP_THRESHOLD) -> None:
        self.last = now
        self.threshold = threshold

    def beat(self, now: float, waited: float, busy: float = 0.0) -> float | None:
        """`busy`: the CPU time the process used since the last beat: time spent working (a
        look at a target mapping 65,000 files takes a second) is no gap."""
        lost = now - self.last - waited - busy
        self.last = now
        return lost if lost > self.threshold else None


class Repeats:
    """Counts each error by what it is and where it was raised; `add` says when one has
    repeated `limit` times within `window` s."""

    def __init__(self, limit: int = REPEATS, window: float = REPEAT_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self.seen: dict[tuple[str, str, int], list[float]] = {}

    @staticmethod
    def key(exc: BaseException) -> tuple[str, str, int]:
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames:
            return (type(exc).__name__, "?", 0)
        return (type(exc).__name__, frames[-1].filename, frames[-1].lineno or 0)

    def add(self, exc: BaseException, now: float) -> bool:
        key = self.key(exc)
        recent = [t for t in self.seen.get(key, []) if now - t < self.window]
        recent.append(now)
        self.seen = {k: v for k, v in self.seen.items() if v and now - v[-1] < self.window}
        self.seen[key] = recent
        return len(recent) >= self.limit


class Timer:
    """A call scheduled by the reactor; `cancel` it to drop it."""

    __slots__ = ("when", "fn", "period", "cancelled")

    def __init__(self, when: float, fn: Handler, period: float | None) -> None:
        self.when = when
        self.fn = fn
        self.period = period
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    def __init__(self, on_error: Callable[[str, BaseException], None],
                 on_gap: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time,
                 repeats: Repeats | None = None) -> None:
        self.on_error = on_error
        self.on_gap = on_gap
        self.clock = clock
        self.cpu = cpu
        self.repeats = repeats or Repeats()
        # epoll, not poll(): a wake-up then costs the kernel the ready fds, not every fd --
        # with a pidfd per target, poll() walked 5,000 fds at each of hundreds of wakes a
        # second under process churn.
        self.poller = select.epoll()
        self.handlers: dict[int, tuple[int, Handler]] = {}  # fd -> (order, handler)
        self.timers: list[tuple[float, int, Timer]] = []  # a heap
        self.sequence = itertools.count()  # ties between timers: first scheduled, first run
        self.steps: list[Handler] = []
        self.deadlines: list[Deadline] = []
        self.pulse = Pulse(clock())
        self.used = cpu()
        self.failed: str | None = None

    # --- what it serves ------------------------------------------------------------------

    def register(self, fd: int, handler: Handler, order: int = 0) -> None:
        """Call `handler` whenever `fd` is readable; lower `order` first."""
        self.handlers[fd] = (order, handler)
        try:
            self.poller.register(fd, select.EPOLLIN)
        except FileExistsError:  # the number of a closed fd whose file is still open (a dup)
            self.poller.modify(fd, select.EPOLLIN)

    def unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.poller.unregister(fd)
            except (FileNotFoundError, OSError):
                pass  # closed already: its file left the epoll set with it

    def pause(self, fd: int, until: float) -> None:
        """Leave `fd` out of the poll set until `until`, then serve it as before.  Nothing is
        called at the resume: epoll is level-triggered, so what queued meanwhile wakes the loop
        at once.  (A read there took a paced fd's next token the moment the pace allowed it,
        and paused it again: after any burst the fd paused and resumed at its pace for good,
        its queue empty -- 20 or 100 wake-ups a second.)"""
        order, handler = self.handlers[fd]
        self.unregister(fd)
        self.call_at(until, lambda _now: self.register(fd, handler, order))

    def close(self) -> None:
        """Release the epoll fd."""
        self.poller.close()

    def serves(self, fd: int) -> bool:
        return fd in self.handlers

    def call_at(self, when: float, fn: Handler) -> Timer:
        return self._schedule(Timer(when, fn, None))

    def call_every(self, period: float, fn: Handler, first: float | None = None) -> Timer:
        """Call `fn` every `period` s from `first` (default: one period from now); each next
        call is one period after the last one ran, never a burst to catch up."""
        return self._schedule(Timer(self.clock() + period if first is None else first, fn, period))

    def every_turn(self, fn: Handler) -> None:
        self.steps.append(fn)

    def wake_by(self, deadline: Deadline) -> None:
        self.deadlines.append(deadline)

    def _schedule(self, timer: Timer) -> Timer:
        heapq.heappush(self.timers, (timer.when, next(self.sequence), timer))
        return timer

    # --- the loop ------------------------------------------------------------------------

    def next_due(self, now: float) -> float | None:
        while self.timers and self.timers[0][2].cancelled:
            heapq.heappop(self.timers)
        due = [self.timers[0][0]] if self.timers else []
        for deadline in self.deadlines:
            if (when := self.call(deadline, now)) is not None:
                due.append(when)
        return min(due) if due else None

    def turn(self) -> None:
        """Wait for the first fd or deadline, then run what is ready (see the docstring)."""
        before = self.clock()
        due = self.next_due(before)
        wait = None if due is None else max(0.0, due - before)  # None: until an fd is ready
        ready = self.poller.poll(-1 if wait is None else wait)
        now = self.clock()
        used = self.cpu()  # a system call: once a wake
        busy, self.used = used - self.used, used
        waited = now - before if wait is None else wait
        if (lost := self.pulse.beat(now, waited, busy)) is not None and self.on_gap is not None:
            self.call(self.on_gap, lost)
        for _order, fd in sorted((self.handlers[fd][0], fd) for fd, _ in ready if fd in self.handlers):
            if fd in self.handlers:  # an earlier handler may have unregistered it
                self.call(self.handlers[fd][1], now)
        self.run_timers()
        for step in self.steps:
            self.call(step, now)

    def run_timers(self) -> None:
        """The timers due now; one scheduled meanwhile for now runs at the next turn."""
        now = self.clock()
        due: list[Timer] = []
        while self.timers and self.timers[0][0] <= now:
            due.append(heapq.heappop(self.timers)[2])
        for timer in due:
            if timer.cancelled:
                continue
            if timer.period is not None:
                timer.when = now + timer.period
                self._schedule(timer)
            self.call(timer.fn, now)

    def run(self, going: Callable[[], bool]) -> None:
        """Turn while `going()`; LoopFailed when one error keeps repeating."""
        while going():
            self.turn()
            if self.failed is not None:
                raise LoopFailed(self.failed)

    def call(self, fn: Callable[[float], object], arg: float) -> object:
        """`fn(arg)`, isolated: what it raises goes to on_error, not up the loop."""
        try:
            return fn(arg)
        except Exception as exc:  # a bug in one handler must not stop the others
            name = handler_name(fn)
            try:
                self.on_error(name, exc)
            except Exception:
                pass  # reporting failed too (the log is broken): the repeat count still holds
            if self.repeats.add(exc, self.clock()) and self.failed is None:
                self.failed = (f"{type(exc).__name__} in {name} {self.repeats.limit} times in "
                               f"{self.repeats.window:g} s: {one_line(exc)}")
            return None


def handler_name(fn: Callable[..., object]) -> str:
    """What the error line calls `fn`: its qualified name, and for a lambda (all alike by
    name) where it was written."""
    name = getattr(fn, "__qualname__", None) or repr(fn)
    code = getattr(fn, "__code__", None)
    if name.endswith("<lambda>") and code is not None:
        name += f" ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
    return name


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, at most 200 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
