"""Where a process belongs, from /proc/PID/cgroup: its systemd unit, the unit inside its user
manager, its login session, its container.

`parse_cgroups` takes the lines that say where systemd put the process (cgroup v2's
"0::/path" and v1's name=systemd hierarchy); `place` reads a path as systemd and the
container runtimes lay it out, which is pure and tested on captured text; `read_placement`
is the one read.  Paths are relative to the reader's cgroup namespace, so on the host a
container's processes show the container's cgroup; inside a container they show "/".

The layout, top down (slices, `*.slice`, are only grouping and are skipped):

    /system.slice/nginx.service                              unit nginx.service
    /user.slice/user-1000.slice/session-3.scope              unit session-3.scope
    /user.slice/user-1000.slice/user@1000.service/app.slice/x.service
                                                  unit user@1000.service, user_unit x.service
    /system.slice/docker-ID.scope  /docker/ID                docker ID
    /machine.slice/libpod-ID.scope[/container]  /libpod_parent/libpod-ID    podman ID
    /kubepods.slice/.../cri-containerd-ID.scope  (crio-ID.scope: cri-o)  containerd ID
    /kubepods/besteffort/podUID/ID                           kubernetes ID (cgroupfs driver)
    /system.slice/containerd.service/kubepods-...-podUID.slice:cri-containerd:ID  (v1)
    /lxc.payload.NAME  /lxc/NAME                             lxc NAME
    /machine.slice/machine-NAME.scope  .../systemd-nspawn@NAME.service  machined NAME
      (.../payload/system.slice/nginx.service below it: container_unit nginx.service)

The first container on the way down wins: it is the one the host can restart.  A runtime's
monitor (conmon's libpod-conmon-ID.scope, lxc.monitor.NAME) is not the container.  Names
below a delegated cgroup (a user's own manager, a container) are chosen by whoever holds it:
they are data, quoted and escaped wherever they are shown.
"""

from __future__ import annotations

import re
from collections import namedtuple

from inodewatch import procfs

# Kinds of units that have a cgroup of their own (slices are skipped as grouping).
UNIT_SUFFIXES = (b".service", b".scope", b".socket", b".mount", b".swap")
SLICE = b".slice"

HEX_ID = rb"[0-9a-f]{64}"
# (runtime, pattern of one component: group 1 is the id)
CONTAINER_UNITS = (
    ("docker", re.compile(rb"docker-(" + HEX_ID + rb")\.scope")),
    ("podman", re.compile(rb"libpod-(" + HEX_ID + rb")(?:\.scope)?")),
    ("containerd", re.compile(rb"cri-containerd-(" + HEX_ID + rb")\.scope")),
    ("cri-o", re.compile(rb"crio-(" + HEX_ID + rb")\.scope")),
    ("lxc", re.compile(rb"lxc\.payload\.(.+)")),
    ("machined", re.compile(rb"machine-(.+)\.scope")),
    ("machined", re.compile(rb"systemd-nspawn@(.+)\.service")),
)
# runc's systemd driver on cgroup v1 spells a container "SLICE:RUNTIME:ID" in one component
COLON_FORM = re.compile(rb".+\.slice:(cri-containerd|crio|docker):(" + HEX_ID + rb")")
COLON_RUNTIMES = {b"cri-containerd": "containerd", b"crio": "cri-o", b"docker": "docker"}
ID_ONLY = re.compile(HEX_ID)
POD = re.compile(rb"pod[0-9a-f_-]+")
USER_MANAGER = re.compile(rb"user@([0-9]+)\.service")
ESCAPE = re.compile(rb"\\x([0-9a-f]{2})")


class Placement(namedtuple("Placement", "unit user_unit container_runtime container_id "
                                        "container_unit", defaults=(None,) * 5)):
    """Where a process runs (each a bytes name, or None): unit, its systemd unit
    (b"nginx.service", b"user@1000.service", b"session-3.scope", b"docker-ID.scope");
    user_unit, the unit inside the user manager when unit is user@UID.service;
    container_runtime (str: "docker", "podman", "containerd", "cri-o", "kubernetes", "lxc",
    "machined") and container_id (the runtime's id, or the container's name for lxc and
    machined); container_unit, the unit inside the container when one runs systemd."""

    __slots__ = ()

    def fields(self) -> dict[str, object]:
        """The event fields: only those known."""
        return {k: v for k, v in zip(self._fields, self) if v is not None}

    @property
    def manager_uid(self) -> int | None:
        """The uid of the user manager (user@UID.service) the process runs under."""
        m = USER_MANAGER.fullmatch(self.unit or b"")
        return int(m.group(1)) if m else None


def parse_cgroups(data: bytes) -> tuple[bytes, ...]:
    """The paths of /proc/PID/cgroup that say where systemd put the process: the v2 line
    ("0::/path") and v1's name=systemd hierarchy."""
    paths = []
    for line in data.splitlines():
        _, _, rest = line.partition(b":")
        controllers, _, path = rest.partition(b":")
        if controllers in (b"", b"name=systemd"):
            paths.append(path)
    return tuple(paths)


def _is_unit(name: bytes) -> bool:
    return name.endswith(UNIT_SUFFIXES)


def _first_unit(parts: list[bytes]) -> bytes | None:
    """The first unit below the slices (None when another kind of directory comes first)."""
    for part in parts:
        if not part.endswith(SLICE):
            return part if _is_unit(part) else None
    return None


def _container(parts: list[bytes]) -> tuple[int, str, bytes] | None:
    """(index of its component, runtime, id) of the outermost container on the path."""
    for i, part in enumerate(parts):
        for runtime, pattern in CONTAINER_UNITS:
            if m := pattern.fullmatch(part):
                name = m.group(1)
                if runtime == "machined":
                    name = ESCAPE.sub(lambda e: bytes([int(e.group(1), 16)]), name)
                return i, runtime, name
        if m := COLON_FORM.fullmatch(part):
            return i, COLON_RUNTIMES[m.group(1)], m.group(2)
        parent = parts[i - 1] if i else b""
        if ID_ONLY.fullmatch(part):
            if parent == b"docker":
                return i, "docker", part
            if POD.fullmatch(parent) and b"kubepods" in parts[:i]:
                return i, "kubernetes", part
        if parent == b"lxc" and i == 1:  # LXC before 4.0: /lxc/NAME
            return i, "lxc", part
    return None


def place(path: bytes) -> Placement | None:
    """Where the cgroup `path` puts a process; None at the root (or nothing known)."""
    parts = [p for p in path.split(b"/") if p]
    unit = _first_unit(parts)
    user_unit = None
    if unit is not None and USER_MANAGER.fullmatch(unit):
        below = parts[parts.index(unit) + 1:]
        user_unit = next((p for p in below if not p.endswith(SLICE) and _is_unit(p)), None)
    found = _container(parts)
    runtime = container_id = container_unit = None
    if found is not None:
        at, runtime, container_id = found
        container_unit = next((p for p in parts[at + 1:] if _is_unit(p)), None)
    if unit is None and found is None:
        return None
    return Placement(unit, user_unit, runtime, container_id, container_unit)


def place_paths(paths: tuple[bytes, ...]) -> Placement | None:
    """The placement of a process from parse_cgroups' paths: the deepest one decides (on a
    hybrid host the v1 name=systemd path and the v2 one are the same, or v2's is "/")."""
    if not paths:
        return None
    return place(max(paths, key=lambda p: p.count(b"/") - (p == b"/")))


def read_placement(pid: int) -> Placement | None:
    """Where the process runs, None when it is nowhere in particular or cannot be read."""
    try:
        return place_paths(parse_cgroups(procfs.read_proc_file(pid, b"cgroup")))
    except procfs.ProcError:
        return None
