"""Hostile hosts against the /proc reading path (issue 13): what an unprivileged user can do
to a process of her own must cost that process's files, never the scan or the daemon."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.integration

# The start of both holders, run as the attacker with the distribution's python (the test's
# may live under /root): chdir down argv[1] directories of 200 bytes, write f.so there.
DIVE = r"""
import ctypes, mmap, os, sys, time
for i in range(int(sys.argv[1])):
    name = ("%03d" % i) + "d" * 197
    os.mkdir(name)
    os.chdir(name)
with open("f.so", "wb") as f:
    f.write(b"\x7fELF" + b"\0" * 8188)
"""

# Hold f.so open and mapped under 25 such directories: its name is longer than PATH_MAX and
# every readlink of it fails with ENAMETOOLONG.
LONG_PATH_HOLDER = DIVE + r"""
held = open("f.so", "rb")
mapped = mmap.mmap(held.fileno(), 0, prot=mmap.PROT_READ)  # mmap keeps an fd of its own
print("ready", flush=True)
time.sleep(3600)
"""

# As the attacker: map one page of a file under a ~3,900-byte path 60,000 times (the kernel
# prints a maps line for each: ~240 MB, seconds of its time to read), then delete the file.
HUGE_MAPS_HOLDER = DIVE + r"""
vmas = int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open("f.so", os.O_RDONLY)
for i in range(vmas):  # PROT_READ, MAP_PRIVATE: one page at offset 0, so no two VMAs merge
    if libc.mmap(None, 4096, 1, 2, fd, 0) in (None, ctypes.c_void_p(-1).value):
        sys.exit("mmap %d: %s" % (i, os.strerror(ctypes.get_errno())))
os.close(fd)
os.unlink("f.so")
print("ready", flush=True)
time.sleep(3600)
"""


@contextlib.contextmanager
def attacker_dir(attacker) -> Iterator[Path]:
    """A directory the attacker owns, removed after (with whatever she left in it)."""
    path = Path(tempfile.mkdtemp(prefix="iw-hostile-"))
    try:
        os.chown(path, attacker.uid, attacker.gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def long_path_holder(attacker, where: Path, depth: int = 25, comm: str = "longpath",
                     script: str = LONG_PATH_HOLDER, *args: str) -> Iterator[subprocess.Popen]:
    """A process of the attacker's running `script` (by default: holding a file, 2 fds and 1
    mapping, named with more than 200 * depth bytes), in a directory of its own under
    `where`, named `comm`."""
    home = where / comm
    home.mkdir()
    os.chown(home, attacker.uid, attacker.gid)
    (home / comm).symlink_to("/usr/bin/python3")
    proc = subprocess.Popen([*attacker.argv, str(home / comm), "-c", script, str(depth), *args],
                            cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # no deleted capture file held
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def diverge(demo) -> None:
    """The rm + cp of the README's first table: the demo keeps running a deleted file, its path replaced."""
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")


def test_scan_all_survives_names_longer_than_path_max(start_demo, attacker):
    demo = start_demo("leak")
    diverge(demo)
    with attacker_dir(attacker) as where, long_path_holder(attacker, where) as holder, \
            long_path_holder(attacker, where, depth=90, comm="deeper") as deeper:
        result = run_cli("scan", "--all", "--json", timeout=300)
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["event"] for e in events if e["pid"] == demo.pid} == {"mapping.deleted", "mapping.replaced"}
    assert not [e for e in events if e["pid"] in (holder.pid, deeper.pid)]  # not looked at: no verdict
    [line] = [l for l in result.stderr.splitlines() if "not looked at" in l]
    assert line.startswith("names of 4096 bytes or more")
    # each holder: its 2 fds and its mapping (the 90-deep one's maps line is 18 KB long)
    assert "6 files in 2 processes" in line and str(holder.pid) in line and str(deeper.pid) in line
    assert "internal error" not in result.stderr


def test_scan_pid_of_a_long_name_holder_reports_what_it_can(attacker):
    with attacker_dir(attacker) as where, long_path_holder(attacker, where) as holder:
        result = run_cli("scan", "--pid", str(holder.pid))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"not looked at: 3 files in 1 process (pid {holder.pid})" in result.stdout


def test_daemon_keeps_watching_past_a_long_name_holder(start_demo, start_watcher, attacker):
    """The daemon follows --name longpath (anyone can name a process so), attaches the
    holder, re-reads it every tick, and still sees a root target's rm + cp."""
    demo = start_demo("leak")
    with attacker_dir(attacker) as where, long_path_holder(attacker, where) as holder:
        # started after the holder, so the daemon's first walk of /proc meets its long name
        watcher = start_watcher(demo.pid, extra=["--name", "longpath", "--interval", "0.1"])
        watcher.log.wait("target.attached", pid=holder.pid)  # its first look is done by now
        diverge(demo)
        watcher.log.wait("mapping.deleted", pid=demo.pid)
        watcher.log.wait("mapping.replaced", pid=demo.pid)
        assert watcher.proc.poll() is None
    assert not [e for e in watcher.log.read() if e.get("pid") == holder.pid and e["event"].startswith(("mapping.", "fd."))]


def test_a_huge_maps_is_read_between_the_other_targets_events(start_demo, start_watcher, attacker):
    """A user's process with ~240 MB of maps (--name matches it): the daemon reads it a
    little at each turn of its loop, so a root target's rm + cp, made while that read is
    under way, is told before the huge target's own finding, and the loop never stalls
    long enough to call it a gap."""
    demo = start_demo("leak")
    with attacker_dir(attacker) as where, \
            long_path_holder(attacker, where, 19, "hugemaps", HUGE_MAPS_HOLDER, "60000") as holder:
        watcher = start_watcher(demo.pid, extra=["--name", "hugemaps", "--interval", "0.1"])
        watcher.log.wait("target.attached", pid=holder.pid)  # its maps is being read now
        diverge(demo)
        watcher.log.wait("mapping.replaced", pid=demo.pid)
        watcher.log.wait("mapping.deleted", pid=holder.pid, timeout=120)
        names = [(e["event"], e.get("pid")) for e in watcher.log.read()]
        assert names.index(("mapping.replaced", demo.pid)) < names.index(("mapping.deleted", holder.pid))
        assert "watch.gap" not in watcher.log.names()
        assert watcher.proc.poll() is None
