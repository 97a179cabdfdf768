"""New processes of --unit and --cgroup targets, read from the cgroup file system itself.

Without the proc connector (in a container, or refused), nothing announces a birth; a walk of
all of /proc every --interval would find a unit's restarted process, at the cost of reading
every process of the host each second.  A unit's or a cgroup's processes are listed by its
cgroup: `cgroup.procs` of its directory and of those below it, a few reads per --interval.
(inotify does not work on cgroup.procs, and cgroup.events only says "populated": the reads are
as cheap as anything else.)

Where a unit's directory is: found by walking systemd's slices (the root's *.slice
directories, recursively) for a directory of that name, and remembered: systemd makes it again
at the same place at every start.  The walk never enters a unit's own directory except to read
the processes of a unit that is selected, and then at most MAX_DIRS directories a walk, so a
delegated subtree (Delegate=, user@.service), which its owner may fill with cgroups, costs a
bounded amount.  A user's own units (under user@UID.service) are not looked for here: the
walk of /proc (every 60 s) finds them.

Pure core: `unit_dirs` and `procs_below` take the directory listing and reading functions;
`CgroupWalk` is the thin shell over the real file system.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from inodewatch.matchers import CGROUP_MOUNTS, Selector

MAX_DIRS = 1024  # directories read per walk, all terms together

Lister = Callable[[bytes], list[bytes]]  # a directory's subdirectory names ([] if gone)
Reader = Callable[[bytes], bytes]  # a cgroup.procs file's bytes (b"" if gone)


def covers(selector: Selector) -> bool:
    """Can a walk of cgroups find every process `selector` may match?  Only units and cgroups
    live there; an --exe or --name term needs the walk of /proc."""
    return bool(selector) and not (selector.exes or selector.names)


def unit_dirs(root: bytes, units: Iterable[bytes], listdir: Lister, budget: int = MAX_DIRS) -> dict[bytes, bytes]:
    """unit -> its directory, for the units found under `root`'s slices."""
    wanted = set(units)
    found: dict[bytes, bytes] = {}
    pending = [root]
    while pending and wanted and budget > 0:
        here = pending.pop()
        budget -= 1
        for name in listdir(here):
            path = here + b"/" + name
            if name in wanted:
                found[name] = path
                wanted.discard(name)
            elif name.endswith(b".slice"):
                pending.append(path)
    return found


def procs_below(top: bytes, listdir: Lister, read: Reader, budget: int) -> tuple[set[int], int]:
    """The pids in `top`'s cgroup.procs and its subdirectories', and the budget left."""
    pids: set[int] = set()
    pending = [top]
    while pending and budget > 0:
        here = pending.pop()
        budget -= 1
        pids.update(int(p) for p in read(here + b"/cgroup.procs").split() if p.isdigit())
        pending.extend(here + b"/" + name for name in listdir(here))
    return pids, budget


def cgroup_root(mounts: Iterable[bytes] = CGROUP_MOUNTS) -> bytes | None:
    """The hierarchy systemd keeps its tree in: the unified one (cgroup v2, or hybrid's
    /sys/fs/cgroup/unified), else v1's name=systemd."""
    for mount in mounts:
        if os.path.exists(mount + b"/cgroup.procs"):
            return mount
    return None


def _listdir(path: bytes) -> list[bytes]:
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _read(path: bytes) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)  # a pid is at most 8 bytes: 130,000 of them
    except OSError:
        return b""


class CgroupWalk:
    """The processes of the selector's units and cgroups, for a daemon without the connector."""

    def __init__(self, selector: Selector, root: bytes) -> None:
        self.selector = selector
        self.root = root
        self.units: dict[bytes, bytes] = {}  # unit -> directory, once found

    def tops(self) -> Iterator[bytes]:
        missing = self.selector.units - self.units.keys()
        if missing:
            self.units.update(unit_dirs(self.root, missing, _listdir))
        yield from self.units.values()
        for cgroup in self.selector.cgroups:
            yield self.root + cgroup.rstrip(b"/")

    def pids(self) -> list[int]:
        found: set[int] = set()
        budget = MAX_DIRS
        for top in self.tops():
            pids, budget = procs_below(top, _listdir, _read, budget)
            found |= pids
        return sorted(found)
