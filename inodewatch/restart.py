"""What a scan's findings mean for the operator: one entry per stale file per process group,
and what to restart to be rid of them.

Pure: scan's process reports in, records out; the renderers (inodewatch.render) print them.

- A process's findings about one held file (a `deleted` and a `replaced` finding for one
  `rm` + `cp`, a `duplicated` beside them) are one `StaleFile`, its state said most telling
  first: "replaced; old inode deleted".
- A master and its children holding the same stale file, in the same unit or container, are
  one `Group` ("nginx: master 1234 and 2 workers"): a child joins the group of its parent
  when the parent holds that file too, so nginx's workers join their master, and a shell's
  unrelated children do not.
- The restart plan names, per unit or container, the command that restarts it
  (`systemctl restart nginx.service`, `systemctl --user -M alice@ restart app.service`,
  `docker restart ID`, ...), and for a process in no unit says so: "pid 1234 (reload), not
  in a unit: restart it yourself".  Files of identical content need no restart: they go to
  a line of their own.  Every name in a command is shell-quoted: units and containers below
  a delegated cgroup are named by whoever holds it.
"""

from __future__ import annotations

import shlex
from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence

from inodewatch.cgroups import Placement
from inodewatch.model import FileId, Finding

# The state words, most telling first (a scan sees no rename: maps shows the new name).
STATES = (("replaced", "replaced"), ("duplicated", "both versions loaded"),
          ("deleted", "old inode deleted"), ("missing", "nothing at the path"))
# Where the group or the command is too long to name every pid.
NAMED_PIDS = 5


class StaleFile(namedtuple("StaleFile", "subject path held kinds content package fd")):
    """One held file that no longer matches the disk (subject: "mapping" or "fd"; path:
    bytes; held: FileId; kinds: frozenset[str], its findings' kinds; content: Content |
    None; package: Package | None; fd: int | None, for one process's fd)."""

    __slots__ = ()

    @property
    def key(self) -> tuple[str, bytes, FileId]:
        return (self.subject, self.path, self.held)

    @property
    def state(self) -> str:
        """e.g. "replaced; old inode deleted"; a file deleted and nothing put back at its
        path is "deleted"."""
        if self.kinds == {"deleted"}:
            return "deleted"
        return "; ".join(text for kind, text in STATES if kind in self.kinds)

    @property
    def needs_restart(self) -> bool:
        return self.content is None or self.content.verdict != "identical"


class Member(namedtuple("Member", "pid comm ppid placement")):
    """A process of a group (pid: int, comm: bytes, ppid: int | None, placement:
    Placement | None)."""

    __slots__ = ()


class Group(namedtuple("Group", "members file")):
    """Processes holding one stale file: members: tuple[Member, ...], the topmost first,
    then by pid; file: StaleFile."""

    __slots__ = ()

    @property
    def top(self) -> Member:
        return self.members[0]

    @property
    def placement(self) -> Placement | None:
        return self.top.placement


class Action(namedtuple("Action", "command note groups")):
    """One entry of the restart plan: command: list[str] | None, the argv that restarts it
    (None: nothing does, the operator must); note: str | None, what to know beside the
    command, or with none the sentence after the process's label ("not in a unit: restart
    it yourself"); groups: list[Group], the stale files behind it."""

    __slots__ = ()


def stale_files(findings: Iterable[Finding]) -> list[StaleFile]:
    """A process's findings, one StaleFile per held file (subject, path, inode)."""
    merged: dict[tuple[str, bytes, FileId], StaleFile] = {}
    for f in findings:
        key = (f.subject, f.path, f.mapped)
        old = merged.get(key)
        if old is None:
            merged[key] = StaleFile(f.subject, f.path, f.mapped, frozenset({f.kind}), f.content,
                                    f.package, f.fd)
        else:
            merged[key] = old._replace(kinds=old.kinds | {f.kind},
                                       content=old.content or f.content,
                                       package=old.package or f.package)
    return list(merged.values())


def groups(reports: Iterable[tuple[Member, Sequence[Finding]]]) -> list[Group]:
    """One Group per stale file per process group (see the module's docstring), ordered by
    placement, then the top process's pid, then path."""
    holders: dict[tuple[str, bytes, FileId], dict[int, tuple[Member, StaleFile]]] = {}
    for member, findings in reports:
        for sf in stale_files(findings):
            holders.setdefault(sf.key, {})[member.pid] = (member, sf)
    found = []
    for held in holders.values():
        def top(pid: int) -> int:
            """The topmost ancestor holding the file; in a loop of parents (pid reuse
            between reads), the lowest pid on the way, which is its own top as well."""
            seen = {pid}
            member = held[pid][0]
            while member.ppid in held and held[member.ppid][0].placement == member.placement:
                if member.ppid in seen:
                    return min(seen)
                seen.add(member.ppid)
                member = held[member.ppid][0]
            return member.pid

        by_top: dict[int, list[int]] = {}
        for pid in held:
            by_top.setdefault(top(pid), []).append(pid)
        for head, pids in by_top.items():
            members = [held[head][0], *(held[p][0] for p in sorted(pids) if p != head)]
            file = held[head][1]
            if len(members) > 1:
                file = file._replace(fd=None)  # each process has its own fd number
            found.append(Group(tuple(members), file))
    found.sort(key=lambda g: (_placement_order(g.placement), g.top.pid, g.file.path))
    return found


def _placement_order(p: Placement | None) -> tuple[bytes, ...]:
    return () if p is None else tuple(v if isinstance(v, bytes) else (v or "").encode()
                                      for v in p)


def label(group: Group, text: Callable[[bytes], str]) -> str:
    """"pid 4242 (reload)", "nginx: master 1234 and 2 workers (1240, 1241)", or, when the
    children run other programs, "pid 1234 (bash) and 2 children (1240, 1241)"."""
    top = group.top
    if len(group.members) == 1:
        return f"pid {top.pid} ({text(top.comm)})"
    rest = group.members[1:]
    pids = ", ".join(str(m.pid) for m in rest[:NAMED_PIDS]) + (
        f" and {len(rest) - NAMED_PIDS} more" if len(rest) > NAMED_PIDS else "")
    if all(m.comm == top.comm for m in rest):
        workers = "worker" if len(rest) == 1 else "workers"
        return f"{text(top.comm)}: master {top.pid} and {len(rest)} {workers} ({pids})"
    children = "child" if len(rest) == 1 else "children"
    return f"pid {top.pid} ({text(top.comm)}) and {len(rest)} {children} ({pids})"


# --- the restart plan --------------------------------------------------------------------


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _container_command(p: Placement, user: str | None) -> tuple[list[str], str | None]:
    cid = _name(p.container_id or b"")
    runtime = p.container_runtime
    if runtime == "docker":
        return ["docker", "restart", cid], None
    if runtime == "podman":
        return ["podman", "restart", cid], f"as {user}: a rootless container" if user else None
    if runtime in ("containerd", "cri-o", "kubernetes"):
        return ["crictl", "stop", cid], "the kubelet starts it again, as the pod's restartPolicy says"
    if runtime == "lxc":
        return ["lxc-stop", "--reboot", "--name", cid], None
    # machined: a systemd-nspawn container (or a VM) registered with systemd-machined
    if p.container_unit is not None and p.container_unit.endswith(b".service"):
        return ["systemctl", "-M", cid, "restart", _name(p.container_unit)], None
    return ["machinectl", "reboot", cid], None


Key = tuple[str, object]


def _action(group: Group, user_name: Callable[[int], str]) -> tuple[Key, list[str] | None, str | None]:
    """(what the plan merges on, the command, its note) for one group's placement."""
    p = group.placement
    yourself: Key = ("pid", group.top.pid)
    if p is None:
        return yourself, None, "not in a unit: restart it yourself"
    uid = p.manager_uid
    user = (user_name(uid) if uid is not None else None)
    if p.container_runtime is not None:
        command, note = _container_command(p, user)
        return ("container", (p.container_runtime, p.container_id)), command, note
    unit = _name(p.unit or b"")
    if uid is not None:
        inner = _name(p.user_unit) if p.user_unit is not None else "init.scope"
        manager = ["systemctl", "--user", "-M", f"{user}@"]
        if inner == "init.scope":  # the user's manager itself
            return ("user", (uid, inner)), [*manager, "daemon-reexec"], None
        if inner.endswith(".service"):
            return ("user", (uid, inner)), [*manager, "restart", inner], None
        return yourself, None, f"in {inner} of {user}: restart it yourself"
    if unit == "init.scope":
        return ("unit", unit), ["systemctl", "daemon-reexec"], "systemd itself (pid 1)"
    if unit.endswith(".service"):
        return ("unit", unit), ["systemctl", "restart", unit], None
    if unit.startswith("session-") and unit.endswith(".scope"):
        return yourself, None, f"in login session {unit}: restart it yourself (or log in again)"
    return yourself, None, f"in {unit}: restart it yourself"


KIND_ORDER = {"unit": 0, "user": 1, "container": 2, "pid": 3}


def plan(all_groups: Iterable[Group],
         user_name: Callable[[int], str]) -> tuple[list[Action], list[Group]]:
    """(the restart plan, the groups whose stale files are all of identical content).

    Commands first (system units, then user units, then containers, each sorted), then the
    processes the operator must restart themselves; a process to be restarted for one file
    is not listed again for its files of identical content."""
    actions: dict[Key, Action] = {}
    identical = []
    for group in all_groups:
        if not group.file.needs_restart:
            identical.append(group)
            continue
        key, command, note = _action(group, user_name)
        actions.setdefault(key, Action(command, note, [])).groups.append(group)
    restarted = {m.pid for a in actions.values() for g in a.groups for m in g.members}
    identical = [g for g in identical if not {m.pid for m in g.members} <= restarted]
    # within a kind the keys' values are of one type (a unit's name, a pid, ...): comparable
    ranked = sorted(actions.items(), key=lambda kv: (KIND_ORDER[kv[0][0]], kv[0][1]))
    return [a for _k, a in ranked], identical


def command_text(command: Sequence[str]) -> str:
    """The argv as one shell line, every word quoted where it needs it."""
    return " ".join(shlex.quote(word) for word in command)
