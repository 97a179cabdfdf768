"""Where a process belongs, from /proc/PID/cgroup text as the kernel prints it on hosts run by
systemd, docker, podman, containerd/CRI-O under Kubernetes, LXC and systemd-machined.

The kubepods v1 (colon form), CRI-O and old-LXC paths are as published in those projects'
bug reports (opentelemetry-java#4507, runc#4620, netdata#3199; the name=systemd line, cut from
some of those excerpts, has the same path); the others follow the layouts systemd, docker,
podman and LXC create, a line per hierarchy as /proc prints them (some hierarchies left out).
A v1 line other than name=systemd (a controller's hierarchy) never decides."""

from __future__ import annotations

import os

import pytest

from inodewatch.cgroups import Placement, parse_cgroups, place_paths, read_placement

ID = "0f99ad5f45163ed14ab8eaf92ed34bb4a631d007f8755a7d79be614bcb0df0ef"
BID = ID.encode()


def placed(text: str) -> Placement | None:
    return place_paths(parse_cgroups(text.encode()))


SERVICE_V2 = "0::/system.slice/nginx.service\n"

SERVICE_HYBRID = """\
12:memory:/system.slice/nginx.service
11:pids:/system.slice/nginx.service
5:cpu,cpuacct:/system.slice/nginx.service
1:name=systemd:/system.slice/nginx.service
0::/system.slice/nginx.service
"""

# cgroup v1 alone (no unified line): only name=systemd says where systemd put it
SERVICE_V1 = """\
4:memory:/system.slice/nginx.service
1:name=systemd:/system.slice/system-getty.slice/getty@tty1.service
"""

SESSION = "0::/user.slice/user-1000.slice/session-3.scope\n"
USER_UNIT = ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
             "app-org.gnome.Terminal.slice/gnome-terminal-server.service\n")
USER_MANAGER = "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"

DOCKER_SYSTEMD = f"0::/system.slice/docker-{ID}.scope\n"
DOCKER_CGROUPFS_V1 = f"""\
12:pids:/docker/{ID}
11:memory:/docker/{ID}
1:name=systemd:/docker/{ID}
0::/system.slice/containerd.service
"""
PODMAN = f"0::/machine.slice/libpod-{ID}.scope/container\n"
PODMAN_CONMON = f"0::/machine.slice/libpod-conmon-{ID}.scope\n"
PODMAN_ROOTLESS = f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
PODMAN_CGROUPFS = f"0::/libpod_parent/libpod-{ID}\n"

KUBEPODS_SYSTEMD = ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-"
                    f"podff49d0be_16b7_4a49_bb9e_8ec1f1f4e27f.slice/cri-containerd-{ID}.scope\n")
KUBEPODS_CGROUPFS = f"""\
11:memory:/kubepods/besteffort/pod0125ec2f-b64a-4868-8f5b-94b56cbab864/{ID}
1:name=systemd:/kubepods/besteffort/pod0125ec2f-b64a-4868-8f5b-94b56cbab864/{ID}
"""
KUBEPODS_COLON_V1 = ("1:name=systemd:/system.slice/containerd.service/kubepods-burstable-"
                     f"podff49d0be_16b7_4a49_bb9e_8ec1f1f4e27f.slice:cri-containerd:{ID}\n")
CRIO_ID = "5eed917563583925ffdbd40a64efb2aaffe58638e57add8becaf460fe74f5b1c"
CRIO_PATH = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda5c1f8d5_1919_"
             f"434d_add7_4afaafdaef89.slice/crio-{CRIO_ID}.scope")
CRIO = f"13:freezer:{CRIO_PATH}\n11:files:/\n1:name=systemd:{CRIO_PATH}\n"

LXC = "0::/lxc.payload.web/system.slice/nginx.service\n"
LXC_MONITOR = "0::/lxc.monitor.web\n"
LXC_OLD = "4:memory:/lxc/deloittedigi/system.slice/php7.1-fpm.service\n1:name=systemd:/lxc/deloittedigi/system.slice/php7.1-fpm.service\n"

NSPAWN = "0::/machine.slice/systemd-nspawn@debian.service/payload/system.slice/nginx.service\n"
MACHINE_SCOPE = "0::/machine.slice/machine-qemu\\x2d1\\x2ddebian12.scope/libvirt/emulator\n"

INSIDE_A_CONTAINER = "0::/\n"


@pytest.mark.parametrize(("text", "expected"), [
    (SERVICE_V2, Placement(b"nginx.service")),
    (SERVICE_HYBRID, Placement(b"nginx.service")),
    (SERVICE_V1, Placement(b"getty@tty1.service")),
    (SESSION, Placement(b"session-3.scope")),
    (USER_UNIT, Placement(b"user@1000.service", b"gnome-terminal-server.service")),
    (USER_MANAGER, Placement(b"user@1000.service", b"init.scope")),
    (DOCKER_SYSTEMD, Placement(f"docker-{ID}.scope".encode(), None, "docker", BID)),
    (DOCKER_CGROUPFS_V1, Placement(None, None, "docker", BID)),
    (PODMAN, Placement(f"libpod-{ID}.scope".encode(), None, "podman", BID)),
    (PODMAN_CONMON, Placement(f"libpod-conmon-{ID}.scope".encode())),
    (PODMAN_ROOTLESS, Placement(b"user@1000.service", f"libpod-{ID}.scope".encode(), "podman", BID)),
    (PODMAN_CGROUPFS, Placement(None, None, "podman", BID)),
    (KUBEPODS_SYSTEMD, Placement(f"cri-containerd-{ID}.scope".encode(), None, "containerd", BID)),
    (KUBEPODS_CGROUPFS, Placement(None, None, "kubernetes", BID)),
    (KUBEPODS_COLON_V1, Placement(b"containerd.service", None, "containerd", BID)),
    (CRIO, Placement(f"crio-{CRIO_ID}.scope".encode(), None, "cri-o", CRIO_ID.encode())),
    (LXC, Placement(None, None, "lxc", b"web", b"nginx.service")),
    (LXC_MONITOR, None),
    (LXC_OLD, Placement(None, None, "lxc", b"deloittedigi", b"php7.1-fpm.service")),
    (NSPAWN, Placement(b"systemd-nspawn@debian.service", None, "machined", b"debian",
                       b"nginx.service")),
    (MACHINE_SCOPE, Placement(b"machine-qemu\\x2d1\\x2ddebian12.scope", None, "machined",
                              b"qemu-1-debian12")),
    (INSIDE_A_CONTAINER, None),
    ("", None),
])
def test_placements(text, expected):
    assert placed(text) == expected


def test_fields_carry_only_what_is_known():
    assert Placement(b"nginx.service").fields() == {"unit": b"nginx.service"}
    assert placed(PODMAN_ROOTLESS).fields() == {
        "unit": b"user@1000.service", "user_unit": f"libpod-{ID}.scope".encode(),
        "container_runtime": "podman", "container_id": BID}
    assert placed(USER_UNIT).manager_uid == 1000
    assert placed(SESSION).manager_uid is None


def test_a_delegated_subtree_cannot_pose_as_the_system_unit():
    """Below their own user@UID.service a user names cgroups at will: the unit is still the
    first one below the slices, and a fake docker scope there is their own container."""
    text = "0::/user.slice/user-1000.slice/user@1000.service/nginx.service/user@0.service\n"
    assert placed(text) == Placement(b"user@1000.service", b"nginx.service")


def test_our_own_placement_reads():
    """The test runner's own cgroup, read from /proc: whatever it is, it parses."""
    got = read_placement(os.getpid())
    assert got is None or isinstance(got, Placement)
    assert read_placement(2 ** 22 + 1) is None  # no such process
