"""The proc connector's deafness outside the initial namespaces, and the cgroup walk that
finds a unit's new processes without it (issue 12 item 2)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from inodewatch import cgroupwalk, pidns
from inodewatch.matchers import make_selector

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_initial_namespaces_hear_the_connector():
    assert pidns.connector_deafness(0xEFFFFFFC, 0xEFFFFFFD) is None
    assert pidns.connector_deafness(None, None) is None  # unknown: let it try


def test_another_pid_or_user_namespace_does_not():
    said = pidns.connector_deafness(4026532182, 0xEFFFFFFD)
    assert said is not None and "pid:[4026532182]" in said and "PID namespace" in said
    said = pidns.connector_deafness(0xEFFFFFFC, 4026532999)
    assert said is not None and "user:[4026532999]" in said


def test_in_a_new_pid_namespace_the_daemon_knows_it_is_deaf():
    """A real PID namespace (unshare), with its own /proc: /proc/self/ns/pid and /proc/1/ns/pid
    agree there, and NSpid has one entry, yet the check tells."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux)")
    probe = ("from inodewatch import pidns; import os\n"
             "print(os.stat('/proc/self/ns/pid').st_ino == os.stat('/proc/1/ns/pid').st_ino)\n"
             "print([l for l in open('/proc/self/status') if l.startswith('NSpid')][0].split()[1:])\n"
             "print(pidns.own_connector_deafness())")
    inside = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", probe],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert inside.returncode == 0, inside.stderr
    same, nspid, said = inside.stdout.splitlines()
    assert same == "True" and nspid == "['1']"  # the naive checks see nothing odd
    assert said.startswith("the daemon runs in a PID namespace other than the initial one")
    here = subprocess.run([sys.executable, "-c", "from inodewatch import pidns; print(pidns.own_connector_deafness())"],
                          capture_output=True, text=True, cwd=REPO)
    if os.stat("/proc/self/ns/pid").st_ino == pidns.PROC_PID_INIT_INO:
        assert here.stdout.strip() == "None"


# --- the cgroup walk, over a captured tree ---------------------------------------------------

TREE = {
    b"/cg": [b"init.scope", b"system.slice", b"user.slice"],
    b"/cg/system.slice": [b"demo.service", b"nginx.service", b"app.slice"],
    b"/cg/system.slice/demo.service": [],
    b"/cg/system.slice/nginx.service": [b"workers"],
    b"/cg/system.slice/nginx.service/workers": [],
    b"/cg/system.slice/app.slice": [b"app@1.service"],
    b"/cg/system.slice/app.slice/app@1.service": [],
    b"/cg/user.slice": [b"user-1000.slice"],
    b"/cg/user.slice/user-1000.slice": [b"user@1000.service"],
    # a delegated subtree its owner filled; a unit of the same name inside it is not looked for
    b"/cg/user.slice/user-1000.slice/user@1000.service": [b"demo.service"] + [b"x%d" % i for i in range(5000)],
}
PROCS = {
    b"/cg/system.slice/demo.service/cgroup.procs": b"120\n",
    b"/cg/system.slice/nginx.service/cgroup.procs": b"200\n",
    b"/cg/system.slice/nginx.service/workers/cgroup.procs": b"201\n202\n",
    b"/cg/system.slice/app.slice/app@1.service/cgroup.procs": b"300\n",
}
listed: list[bytes] = []


def listdir(path: bytes) -> list[bytes]:
    listed.append(path)
    return TREE.get(path, [])


def read(path: bytes) -> bytes:
    return PROCS.get(path, b"")


def test_units_are_found_in_slices_only():
    listed.clear()
    found = cgroupwalk.unit_dirs(b"/cg", [b"demo.service", b"app@1.service", b"gone.service"], listdir)
    assert found == {b"demo.service": b"/cg/system.slice/demo.service",
                     b"app@1.service": b"/cg/system.slice/app.slice/app@1.service"}
    assert not any(b"user@1000.service" in p or p.endswith(b".service") for p in listed)


def test_a_units_processes_include_its_subcgroups():
    pids, left = cgroupwalk.procs_below(b"/cg/system.slice/nginx.service", listdir, read, 10)
    assert pids == {200, 201, 202} and left == 8


def test_a_walk_is_bounded_whatever_a_delegated_subtree_holds():
    pids, left = cgroupwalk.procs_below(b"/cg/user.slice/user-1000.slice/user@1000.service",
                                        listdir, read, 100)
    assert left == 0 and pids == set()


def test_only_units_and_cgroups_can_be_walked():
    assert cgroupwalk.covers(make_selector([], [], ["/system.slice/app.slice"], ["demo"]))
    assert not cgroupwalk.covers(make_selector(["/usr/sbin/nginx"], [], [], ["demo"]))
    assert not cgroupwalk.covers(make_selector([], ["reload"], [], []))
    assert not cgroupwalk.covers(make_selector([], [], [], []))


def test_the_walk_on_this_hosts_cgroups_finds_our_own_process():
    """The shell over the real cgroup file system: our own cgroup lists us."""
    root = cgroupwalk.cgroup_root()
    if root is None:
        pytest.skip("no cgroup hierarchy mounted here")
    from inodewatch.matchers import parse_cgroups

    with open("/proc/self/cgroup", "rb") as f:
        paths = parse_cgroups(f.read())
    mine = next((p for p in paths if os.path.exists(root + p + b"/cgroup.procs")), None)
    if mine is None or mine == b"/":
        pytest.skip("our cgroup is the root here")
    walk = cgroupwalk.CgroupWalk(make_selector([], [], [os.fsdecode(mine)], []), root)
    assert os.getpid() in walk.pids()
