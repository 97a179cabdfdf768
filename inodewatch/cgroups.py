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

from collections import namedtuple

from inodewatch import procfs

# Kinds of units that have a cgroup of their own (slices are skipped as grouping).
UNIT_SUFFIXES = (b".service", b".scope", b".socket", b".mount", b".swap")
SLICE = b".slice"

# (runtime, prefix, suffix, hexid) of the one component that names a container; the id
# between prefix and suffix is 64 hex digits where `hexid` (checked without regular
# expressions: each costs ~0.1 ms to compile, and every scan with findings imports this)
CONTAINER_UNITS = (
    ("docker", b"docker-", b".scope", True),
    ("podman", b"libpod-", b".scope", True),
    ("podman", b"libpod-", b"", True),  # podman's cgroupfs driver: /libpod_parent/libpod-ID
    ("containerd", b"cri-containerd-", b".scope", True),
    ("cri-o", b"crio-", b".scope", True),
    ("lxc", b"lxc.payload.", b"", False),
    ("machined", b"machine-", b".scope", False),
    ("machined", b"systemd-nspawn@", b".service", False),
)
# runc's systemd driver on cgroup v1 spells a container "SLICE:RUNTIME:ID" in one component
COLON_RUNTIMES = {b"cri-containerd": "containerd", b"crio": "cri-o", b"docker": "docker"}
HEX = b"0123456789abcdef"


def _hexid(name: bytes) -> bool:
    return len(name) == 64 and not name.strip(HEX)


def _manager_uid(unit: bytes) -> int | None:
    """1000 for b"user@1000.service", else None."""
    if unit.startswith(b"user@") and unit.endswith(b".service") and unit[5:-8].isdigit():
        return int(unit[5:-8])
    return None


def _unescape(name: bytes) -> bytes:
    """systemd's unit name escapes: "\\x2d" is "-"."""
    parts = name.split(b"\\x")
    out = [parts[0]]
    for part in parts[1:]:
        code = part[:2]
        out.append(bytes([int(code, 16)]) + part[2:] if len(code) == 2 and not code.strip(HEX)
                   else b"\\x" + part)
    return b"".join(out)


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
        return _manager_uid(self.unit or b"")


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
        for runtime, prefix, suffix, hexid in CONTAINER_UNITS:
            if part.startswith(prefix) and part.endswith(suffix) and len(part) > len(prefix) + len(suffix):
                name = part[len(prefix):len(part) - len(suffix)]
                if hexid and not _hexid(name):
                    continue
                return i, runtime, _unescape(name) if runtime == "machined" else name
        slice_, _, rest = part.partition(b":")
        runtime_name, _, cid = rest.partition(b":")
        if slice_.endswith(SLICE) and runtime_name in COLON_RUNTIMES and _hexid(cid):
            return i, COLON_RUNTIMES[runtime_name], cid
        parent = parts[i - 1] if i else b""
        if _hexid(part):
            if parent == b"docker":
                return i, "docker", part
            if (parent.startswith(b"pod") and not parent[3:].strip(HEX + b"_-")
                    and b"kubepods" in parts[:i]):
                return i, "kubernetes", part
        if parent == b"lxc" and i == 1:  # LXC before 4.0: /lxc/NAME
            return i, "lxc", part
    return None


def place(path: bytes) -> Placement | None:
    """Where the cgroup `path` puts a process; None at the root (or nothing known)."""
    parts = [p for p in path.split(b"/") if p]
    unit = _first_unit(parts)
    user_unit = None
    if unit is not None and _manager_uid(unit) is not None:
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
