"""The daemon's file descriptor budget: one pidfd per target, and a reserve for its own work.

Every target costs the daemon one fd for as long as it is watched (its pidfd); everything
else it opens (a /proc file, an O_PATH open for an inotify watch, the log file at a reopen,
the metrics file) is closed again at once.  A selector anyone can match (`--name`) could
otherwise spend every fd on targets and leave the daemon unable to read /proc or watch a
file for the targets it already has.  So a new selector target is refused while fewer than
RESERVE fds would remain; the daemon says the refusal once (degraded) until `has_room` says
the fds in use dropped well below the line again (recovered).  Targets named by --pid are not
held to the reserve.
"""

from __future__ import annotations

import resource

# fds kept for the daemon's own work: a few are open at once at most (a /proc file and a
# directory, an O_PATH open, the log file being reopened, the metrics file, sd_notify's
# socket); the rest is headroom for what the loop may come to need.
RESERVE = 32


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force.

    The daemon polls with poll(), never select(), so fds beyond 1024 are fine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass  # e.g. an infinite hard limit above fs.nr_open: keep what we have
    return soft


class FdBudget:
    """How many fds may go to targets.

    `in_use` is counted by the caller: the fds it held when the budget was made (`base`)
    plus one per target.  Pure: no fd is counted or opened here."""

    def __init__(self, limit: int, base: int, reserve: int = RESERVE) -> None:
        self.limit = limit
        self.base = base
        self.reserve = reserve

    def admits(self, targets: int) -> bool:
        """May one more selector target get its fd, with `targets` already held?"""
        return self.base + targets + 1 + self.reserve <= self.limit

    def has_room(self, targets: int) -> bool:
        """Whether, after a refusal, there is room again for a reserve's worth of targets
        (a margin, so a flood of short-lived processes does not make it flap)."""
        return self.base + targets + 2 * self.reserve <= self.limit

    def describe(self, targets: int) -> str:
        return (f"out of file descriptors: {self.base + targets} of RLIMIT_NOFILE {self.limit} "
                f"in use, {self.reserve} kept for the daemon's own work; new --exe/--name/"
                "--unit/--cgroup targets are not watched until targets exit (raise "
                "LimitNOFILE= or ulimit -n); the targets already watched still are")
