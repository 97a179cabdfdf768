"""Unit tests of the daemon's loop (inodewatch.reactor): real fds (socketpairs), a fake clock
for the timers and the gap check, handlers that raise."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from inodewatch.reactor import GAP_THRESHOLD, LoopFailed, Pulse, Reactor, Repeats


class Clock:
    """A clock the test moves; it never moves by itself."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def make(clock: Clock, errors: list[tuple[str, BaseException]] | None = None,
         gaps: list[float] | None = None, **kwargs) -> Reactor:
    return Reactor(on_error=lambda where, exc: (errors if errors is not None else []).append((where, exc)),
                   on_gap=(gaps.append if gaps is not None else None),
                   clock=clock, cpu=lambda: 0.0, **kwargs)


def test_a_readable_fd_runs_its_handler_then_the_timers_then_the_steps(pair):
    clock, ran = Clock(), []
    reactor = make(clock)
    a, b = pair
    reactor.register(a.fileno(), lambda now: (ran.append(("fd", now)), a.recv(100)))
    reactor.call_at(clock.now, lambda now: ran.append(("timer", now)))
    reactor.every_turn(lambda now: ran.append(("step", now)))
    reactor.wake_by(lambda now: now)  # never wait: the clock does not move by itself
    b.send(b"x")
    reactor.turn()
    assert [what for what, _ in ran] == ["fd", "timer", "step"]
    ran.clear()
    reactor.turn()  # nothing readable: the timer is spent, the step runs at every wake
    assert [what for what, _ in ran] == ["step"]


def test_a_handler_that_raises_is_reported_and_the_loop_carries_on(pair):
    clock, errors, ran = Clock(), [], []
    reactor = make(clock, errors)
    a, b = pair
    c, d = socket.socketpair()
    c.setblocking(False)

    def broken(_now: float) -> None:
        a.recv(100)
        raise ValueError("a bug\nover two lines")

    reactor.register(a.fileno(), broken)
    reactor.register(c.fileno(), lambda now: ran.append(c.recv(100)))
    reactor.every_turn(lambda now: ran.append("step"))
    b.send(b"x")
    d.send(b"y")
    reactor.run(going=lambda: not ran or ran[-1] != "step")
    assert ran == [b"y", "step"]
    assert [(where.rsplit(".", 1)[-1], type(exc)) for where, exc in errors] == [("broken", ValueError)]
    c.close()
    d.close()


def test_a_paused_fd_is_served_again_after_its_pause_and_nothing_is_called_at_the_resume(pair):
    clock, ran = Clock(), []
    reactor = make(clock)
    a, b = pair
    reactor.register(a.fileno(), lambda now: ran.append(a.recv(100)), order=1)
    reactor.pause(a.fileno(), until=clock.now + 0.01)
    b.send(b"x")
    reactor.turn()  # out of the poll set: its data waits
    assert ran == [] and not reactor.serves(a.fileno())
    clock.now += 0.01
    reactor.turn()  # the resume: back in the set, no call made for it
    assert ran == [] and reactor.serves(a.fileno())
    reactor.turn()  # level-triggered: what queued meanwhile wakes it at once
    assert ran == [b"x"]


def test_a_lambda_that_raises_is_named_by_where_it_was_written():
    clock, errors = Clock(), []
    reactor = make(clock, errors)
    reactor.every_turn(lambda now: 1 / 0)
    line = sys._getframe().f_lineno - 1
    reactor.wake_by(lambda now: now)  # never wait: the clock does not move by itself
    reactor.turn()
    [(where, _)] = errors
    assert where.endswith(f".<lambda> (test_reactor.py:{line})"), where


def test_the_same_error_repeating_fast_stops_the_loop_with_one_line(pair):
    clock, errors = Clock(), []
    reactor = make(clock, errors, repeats=Repeats(limit=5, window=1.0))
    a, b = pair
    b.send(b"never read")  # stays readable: the handler fails at every wake

    def broken(_now: float) -> None:
        raise KeyError("gone")

    reactor.register(a.fileno(), broken)
    with pytest.raises(LoopFailed) as failed:
        reactor.run(going=lambda: True)
    assert len(errors) == 5
    assert "\n" not in str(failed.value) and "KeyError" in str(failed.value)


def test_an_error_now_and_then_never_stops_the_loop():
    clock, errors = Clock(), []
    reactor = make(clock, errors, repeats=Repeats(limit=3, window=1.0))

    def broken(_now: float) -> None:
        raise RuntimeError("once a second")

    reactor.call_every(1.0, broken, first=clock.now)
    for _ in range(10):
        reactor.run_timers()
        clock.now += 1.0
    assert len(errors) == 10 and reactor.failed is None


def test_timers_run_earliest_first_and_a_cancelled_one_never():
    clock, ran = Clock(), []
    reactor = make(clock)
    reactor.call_at(clock.now + 2, lambda now: ran.append("second"))
    reactor.call_at(clock.now + 1, lambda now: ran.append("first"))
    reactor.call_at(clock.now + 1.5, lambda now: ran.append("cancelled")).cancel()
    assert reactor.next_due(clock.now) == clock.now + 1
    clock.now += 5
    reactor.run_timers()
    assert ran == ["first", "second"] and reactor.next_due(clock.now) is None


def test_a_periodic_timer_late_by_many_periods_runs_once_not_in_a_burst():
    clock, ran = Clock(), []
    reactor = make(clock)
    reactor.call_every(1.0, lambda now: ran.append(now))
    clock.now += 30  # the loop did not run for 30 periods
    reactor.run_timers()
    reactor.run_timers()
    assert ran == [clock.now] and reactor.next_due(clock.now) == clock.now + 1.0


def test_poll_waits_for_the_nearest_deadline_a_callable_computes():
    clock = Clock()
    reactor = make(clock)
    reactor.call_at(clock.now + 50, lambda now: None)
    reactor.wake_by(lambda now: now + 3)
    reactor.wake_by(lambda now: None)  # nothing scheduled there
    assert reactor.next_due(clock.now) == clock.now + 3


def test_handlers_of_ready_fds_run_in_their_order(pair):
    clock, ran = Clock(), []
    reactor = make(clock)
    a, b = pair
    c, d = socket.socketpair()
    reactor.register(a.fileno(), lambda now: (ran.append("late"), a.recv(9)), order=2)
    reactor.register(c.fileno(), lambda now: (ran.append("early"), c.recv(9)), order=0)
    b.send(b"x")
    d.send(b"x")
    reactor.turn()
    assert ran == ["early", "late"]
    reactor.unregister(c.fileno())
    assert not reactor.serves(c.fileno()) and reactor.serves(a.fileno())
    c.close()
    d.close()


def test_a_turn_that_came_late_is_a_gap():
    clock, gaps = Clock(), []
    reactor = make(clock, gaps=gaps)
    reactor.call_at(clock.now, lambda now: None)  # due at once: the poll does not wait
    clock.now += GAP_THRESHOLD + 5  # frozen meanwhile
    reactor.turn()
    assert len(gaps) == 1 and gaps[0] == pytest.approx(GAP_THRESHOLD + 5)


def test_a_loop_that_waited_as_asked_has_no_gap():
    pulse = Pulse(now=100.0)
    assert pulse.beat(101.0, waited=1.0) is None
    assert pulse.beat(101.5, waited=0.0) is None  # half a second of work is no gap
    assert pulse.beat(131.5, waited=1.0) == 29.0  # SIGSTOP for 29 s beyond its wait
    assert pulse.beat(132.5, waited=1.0) is None
    assert pulse.beat(140.0, waited=0.0, busy=7.5) is None  # 7.5 s of CPU: work, no gap


def test_a_gap_shorter_than_the_threshold_is_no_gap():
    pulse = Pulse(now=0.0)
    assert pulse.beat(GAP_THRESHOLD - 0.01, waited=0.0) is None
    assert pulse.beat(2 * GAP_THRESHOLD + 0.01, waited=0.0) is not None
