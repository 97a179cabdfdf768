"""A refusal is told as it is: the file and the error, and a capability only when it is the
one missing (as root with CAP_SYS_PTRACE, `scan --pid 1` once said "grant CAP_SYS_PTRACE")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import wait_for
from inodewatch import caps

ALL = set(caps.CAPABILITY_NAMES.values())


@pytest.mark.parametrize(("file", "held", "initial", "advice"), [
    ("maps", set(), True, "grant CAP_SYS_PTRACE (or run as root)"),
    ("fd", {"CAP_SYS_PTRACE"}, True, "grant CAP_DAC_READ_SEARCH (or run as root)"),
    ("fd", {"CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE"}, True,
     "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH are held: the kernel refuses it for another reason "
     "(a security module such as AppArmor, SELinux or Yama, or a process it protects)"),
    ("fd", set(), True, "grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (or run as root)"),
    ("map_files/7f00-7f01", {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}, True,
     "grant CAP_CHECKPOINT_RESTORE (or run as root)"),
    ("maps", ALL, True, "CAP_SYS_PTRACE is held: the kernel refuses it for another reason "
                        "(a security module such as AppArmor, SELinux or Yama, or a process it protects)"),
    ("maps", ALL, False, "this process runs in a user namespace of its own: its capabilities do "
                         "not reach processes outside it (run it in the host's)"),
])
def test_the_advice_names_only_what_is_missing(file, held, initial, advice):
    assert caps.denial_advice(file, held, initial) == advice


def another_users_sleep() -> subprocess.Popen[bytes]:
    target = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "sleep", "600"])
    wait_for(lambda: os.stat(f"/proc/{target.pid}").st_uid == 65534, what="the uid change")
    return target


needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                   reason="needs root and setpriv (util-linux)")


@pytest.mark.integration
@needs_setpriv
def test_root_with_ptrace_alone_is_told_the_directory_capability():
    """maps is readable with CAP_SYS_PTRACE; fd/ (0500, the target's) wants
    CAP_DAC_READ_SEARCH: that one is named, not the one held."""
    target = another_users_sleep()
    try:
        only_ptrace = ["setpriv", "--inh-caps=-all,+sys_ptrace", "--ambient-caps=-all,+sys_ptrace",
                       "--bounding-set=-all,+sys_ptrace",
                       "--securebits=+noroot,+noroot_locked,+no_setuid_fixup"]
        result = subprocess.run([*only_ptrace, sys.executable, "-m", "inodewatch", "scan", "--pid",
                                 str(target.pid)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert result.stderr == (
            f"inodewatch: cannot read /proc/{target.pid}/fd: Permission denied (EACCES); "
            "grant CAP_DAC_READ_SEARCH (or run as root)\n")
    finally:
        target.kill()
        target.wait()


@pytest.mark.integration
@needs_setpriv
def test_root_of_a_user_namespace_is_told_its_capabilities_stop_there():
    """`unshare -U -r`: root with every capability, in a namespace of its own: the host's
    processes are not its to read, and no capability named would change that."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    target = another_users_sleep()
    try:
        result = subprocess.run(["unshare", "-U", "-r", sys.executable, "-m", "inodewatch", "scan",
                                 "--pid", str(target.pid)], capture_output=True, text=True,
                                timeout=60)
        if "unshare:" in result.stderr:
            pytest.skip(f"no user namespaces here: {result.stderr.strip()}")
        assert result.returncode == 2
        assert result.stderr.startswith(f"inodewatch: cannot read /proc/{target.pid}/maps: ")
        assert "user namespace of its own" in result.stderr and "grant" not in result.stderr
        assert len(result.stderr.splitlines()) == 1
    finally:
        target.kill()
        target.wait()
