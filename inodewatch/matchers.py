"""Which processes to watch beyond fixed pids: by executable, by name, by cgroup or unit.

A plugin host is restarted under a new pid; `--exe /usr/sbin/nginx`, `--name reload`,
`--unit nginx.service` or `--cgroup /system.slice/app.slice` follow it.  Matching is pure
(`Selector.match` over a `ProcessFacts`); `read_facts` reads what it needs from /proc.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from inodewatch import procfs
from inodewatch.cgroups import parse_cgroups
from inodewatch.model import DELETED_SUFFIX
from inodewatch.text import safe_text

CGROUP_MOUNTS = (b"/sys/fs/cgroup/unified", b"/sys/fs/cgroup/systemd", b"/sys/fs/cgroup")
COMM_LENGTH = 15  # the kernel keeps TASK_COMM_LEN - 1 bytes of a comm


@dataclass(frozen=True)
class ProcessFacts:
    pid: int
    comm: bytes
    exe: bytes | None  # None: a kernel thread, or not readable
    cgroups: tuple[bytes, ...]  # cgroup paths, v2 and v1's name=systemd


@dataclass(frozen=True)
class Selector:
    exes: frozenset[bytes] = frozenset()
    names: frozenset[bytes] = frozenset()
    cgroups: frozenset[bytes] = frozenset()  # paths below the cgroup root
    units: frozenset[bytes] = frozenset()  # "nginx.service"

    def __bool__(self) -> bool:
        return bool(self.exes or self.names or self.cgroups or self.units)

    def terms(self) -> list[tuple[str, bytes]]:
        """Every term, e.g. ("exe", b"/usr/sbin/nginx"), as match() returns them."""
        return [(kind, value) for kind, values in (
            ("exe", self.exes), ("name", self.names), ("unit", self.units),
            ("cgroup", self.cgroups)) for value in sorted(values)]

    def match(self, facts: ProcessFacts) -> tuple[str, bytes] | None:
        """The selector term the process matches, e.g. ("exe", b"/usr/sbin/nginx"), or None."""
        if facts.exe is not None and facts.exe in self.exes:
            return ("exe", facts.exe)
        if facts.comm in self.names:
            return ("name", facts.comm)
        for path in facts.cgroups:
            for cgroup in self.cgroups:
                if path == cgroup or path.startswith(cgroup.rstrip(b"/") + b"/"):
                    return ("cgroup", cgroup)
            for unit in self.units:
                if unit in path.split(b"/"):
                    return ("unit", unit)
        return None


def term_text(term: tuple[str, bytes]) -> bytes:
    """A term as the daemon's events name it: b"exe=/usr/sbin/nginx"."""
    return b"=".join((term[0].encode(), term[1]))


def operator_named(term: tuple[str, bytes] | None, cgroups: tuple[bytes, ...] = ()) -> bool:
    """Whether a target found by `term` (None: named by --pid) in `cgroups` is one the
    operator chose rather than one any user can make match.

    A cgroup, or a unit of the system's systemd, is where root put the process.  Anyone can
    give a process any comm (prctl) or exec a world-executable file, and start a unit of any
    name under her own systemd (user@UID.service: `systemd-run --user --unit nginx`), so such
    a target may be an attacker's: it gets watches after the operator's own targets and its
    looks are paced apart (inodewatch.watchset, inodewatch.daemon)."""
    if term is None or term[0] == "cgroup":
        return True
    if term[0] != "unit":
        return False
    for path in cgroups:
        parts = path.split(b"/")
        if term[1] in parts and not any(p.startswith(b"user@")
                                        for p in parts[:parts.index(term[1])]):
            return True
    return False


class SelectorError(ValueError):
    """A term that can never match (message is one line)."""


def make_selector(exes: list[str], names: list[str], cgroups: list[str], units: list[str]) -> Selector:
    """Normalise the operator's spelling: absolute exe paths, cgroup paths with or without
    the /sys/fs/cgroup mount, units with or without .service.  A name longer than a comm
    can be (the kernel keeps 15 bytes of it) would never match: SelectorError."""
    for name in names:
        if len(os.fsencode(name)) > COMM_LENGTH:
            raise SelectorError(
                f"--name {name!r} is {len(os.fsencode(name))} bytes, and a process name (comm, "
                f"as ps -o comm shows it) is at most {COMM_LENGTH}: it would never match; give "
                f"its first {COMM_LENGTH} bytes, or --exe")
    return Selector(
        exes=frozenset(os.fsencode(os.path.abspath(e)) for e in exes),
        names=frozenset(map(os.fsencode, names)),
        cgroups=frozenset(cgroup_path(os.fsencode(c)) for c in cgroups),
        units=frozenset(unit_name(os.fsencode(u)) for u in units),
    )


def absent_terms(selector: Selector, pids: list[int] | None = None) -> list[str]:
    """One sentence per --exe, --cgroup or --unit that names nothing existing now (no such
    file, no such cgroup, no process of that unit: `pids`, the processes to look at,
    default all); such a term may still match later (a service started after us)."""
    found = []
    for exe in sorted(selector.exes):
        if not os.path.exists(exe):
            found.append(f"--exe {safe_text(exe)}: no such file now")
    for cgroup in sorted(selector.cgroups):
        if not any(os.path.isdir(mount + cgroup) for mount in CGROUP_MOUNTS):
            found.append(f"--cgroup {safe_text(cgroup)}: no such cgroup now")
    units = Selector(units=selector.units)
    running = set()
    if units:
        for pid in procfs.list_pids() if pids is None else pids:
            try:
                if (term := units.match(read_facts(pid, units))) is not None:
                    running.add(term[1])
            except procfs.ProcError:
                continue
            if running == selector.units:
                break
    for unit in sorted(selector.units - running):
        found.append(f"--unit {safe_text(unit)}: no process of it runs now")
    return found


def cgroup_path(path: bytes) -> bytes:
    for mount in CGROUP_MOUNTS:
        if path == mount or path.startswith(mount + b"/"):
            path = path[len(mount):]
            break
    return b"/" + path.strip(b"/")


def unit_name(unit: bytes) -> bytes:
    """`nginx` and `nginx.service` name the same unit; other suffixes (.scope) are kept."""
    return unit if b"." in unit else unit + b".service"


def read_facts(pid: int, selector: Selector) -> ProcessFacts:
    """What `selector` needs to know of the process, and nothing more (the daemon's walk of
    /proc reads this for every process).  Raises procfs.ProcError when it is gone."""
    comm = procfs.read_stat(pid).comm if selector.names else b""
    exe: bytes | None = None
    if selector.exes:
        try:
            exe = os.readlink(procfs.proc_path(pid, b"exe")).removesuffix(DELETED_SUFFIX)
        except FileNotFoundError:
            raise procfs.ProcessGone(pid, f"no such process: {pid}") from None
        except OSError:
            pass  # a kernel thread has no exe
    cgroups = (parse_cgroups(procfs.read_proc_file(pid, b"cgroup"))
               if selector.cgroups or selector.units else ())
    return ProcessFacts(pid, comm, exe, cgroups)
