"""The pacer: a burst at once, then a share of the clock, a large cost paid off as debt."""

from __future__ import annotations

from inodewatch.pacing import Bucket


def test_a_burst_goes_at_once_then_the_rate_rules():
    bucket = Bucket(capacity=0.5, now=0.0)
    for _ in range(4):  # four looks of 125 ms at once
        assert bucket.allows(0.0, rate=0.25)
        bucket.take(0.125, 0.0, rate=0.25)
    assert bucket.allows(0.0, rate=0.25)  # balance 0: one more may start
    bucket.take(0.125, 0.0, rate=0.25)
    assert not bucket.allows(0.0, rate=0.25)
    assert bucket.ready_at(0.0, rate=0.25) == 0.5  # 125 ms of debt at a quarter of the clock
    assert bucket.allows(0.5, rate=0.25)


def test_one_huge_cost_is_debt_paid_off_at_the_rate():
    bucket = Bucket(capacity=0.5, now=0.0)
    bucket.take(2.0, 0.0, rate=0.25)  # a look at a process mapping 65,000 files
    assert bucket.ready_at(1.0, rate=0.25) == 6.0
    assert not bucket.allows(5.5, rate=0.25)
    assert bucket.allows(6.0, rate=0.25)


def test_the_balance_never_grows_past_the_capacity():
    bucket = Bucket(capacity=0.5, now=0.0)
    assert bucket.allows(3600.0, rate=1.0)
    bucket.take(0.75, 3600.0, rate=1.0)
    assert not bucket.allows(3600.0, rate=1.0)
