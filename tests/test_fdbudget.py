"""The fd budget: targets get fds while a reserve stays for the daemon's own work."""

from __future__ import annotations

import subprocess
import sys

from inodewatch.fdbudget import FdBudget


def test_targets_are_admitted_until_only_the_reserve_is_left() -> None:
    budget = FdBudget(limit=128, base=10, reserve=32)
    assert budget.admits(85)  # the 86th target's fd leaves exactly 32
    assert not budget.admits(86)


def test_room_again_needs_a_margin() -> None:
    budget = FdBudget(limit=128, base=10, reserve=32)
    assert not budget.has_room(80)  # one exit frees one fd: not yet, or it would flap
    assert budget.has_room(54)


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    code = ("import resource; from inodewatch.fdbudget import raise_fd_limit; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 256)); "
            "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split(None, 1) == ["256", "(256, 256)\n"]
