"""A stat that never returns (issue 13, item 2): a FUSE file system whose getattr blocks,
mounted by an unprivileged user with allow_other, one of her processes mapping a file from
it.  `scan --all` must finish with everyone else's findings and say what it did not look
at; the daemon must keep logging a root target's rm + cp.

The server (tests/fuse_hang.c, built here with libfuse3) answers getattr normally until a
flag file exists, so the file can be mapped first; teardown removes the flag, unmounts
lazily and kills the server even when the test failed (a hung mount left behind would hang
the next run)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, wait_for

pytestmark = pytest.mark.integration

FUSE_CONF = Path("/etc/fuse.conf")

HOLDER = r"""
import mmap, sys, time
held = open(sys.argv[1], "rb")
mapped = mmap.mmap(held.fileno(), 0, prot=mmap.PROT_READ)
print("ready", flush=True)
time.sleep(3600)
"""


def mounted(point: Path) -> bool:
    """From our mountinfo (\\040 for the space): never a stat of the mount itself."""
    escaped = str(point).replace(" ", "\\040").encode()
    return any(line.split(b" ")[4] == escaped for line in Path("/proc/self/mountinfo").read_bytes().splitlines())


@contextlib.contextmanager
def users_may_mount_fuse() -> Iterator[None]:
    """For the block, what a Debian host gives every user: /dev/fuse open to all (0666; this
    container has it 0600) and /etc/fuse.conf's user_allow_other (commented out by default,
    set on many hosts).  Both restored after."""
    original = FUSE_CONF.read_bytes() if FUSE_CONF.exists() else None
    mode = os.stat("/dev/fuse").st_mode & 0o7777
    FUSE_CONF.write_bytes((original or b"") + b"\nuser_allow_other\n")
    os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", mode)
        if original is None:
            FUSE_CONF.unlink()
        else:
            FUSE_CONF.write_bytes(original)


class HangingFuse:
    """The mount point, the file on it, and the switch that makes its getattr block."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.point = home / "mnt point"
        self.file = self.point / "f.so"
        self.flag = home / "flag"

    def block(self) -> None:
        self.flag.touch()


@pytest.fixture
def hanging_fuse(attacker) -> Iterator[HangingFuse]:
    if not (Path("/dev/fuse").exists() and shutil.which("fusermount3") and shutil.which("pkg-config")):
        pytest.skip("needs /dev/fuse, fuse3 and libfuse3-dev")
    home = Path(tempfile.mkdtemp(prefix="iw-fuse-"))
    fuse = HangingFuse(home)
    server = None
    try:
        os.chmod(home, 0o755)
        binary = home / "hang"  # its name is the mount's subtype: fuse.hang
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                               capture_output=True, text=True).stdout.split()
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(REPO / "tests" / "fuse_hang.c"), *flags],
                       check=True)
        fuse.point.mkdir()
        os.chown(fuse.point, attacker.uid, attacker.gid)
        with users_may_mount_fuse():
            server = subprocess.Popen(
                [*attacker.argv, str(binary), str(fuse.flag), str(fuse.point), "-f", "-s",
                 "-o", "allow_other,attr_timeout=0,entry_timeout=0,negative_timeout=0"],
                stdin=subprocess.DEVNULL)
            wait_for(lambda: server.poll() is not None or mounted(fuse.point), what="the FUSE mount")
        assert server.poll() is None, "the FUSE server did not start"
        yield fuse
    finally:
        fuse.flag.unlink(missing_ok=True)  # whatever waits in getattr returns
        subprocess.run(["fusermount3", "-u", "-z", str(fuse.point)], capture_output=True)
        if server is not None:
            server.kill()
            server.wait()
        if mounted(fuse.point):
            subprocess.run(["umount", "-l", str(fuse.point)], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def fuse_holder(attacker, fuse: HangingFuse, comm: str = "fuseholder",
                file: Path | None = None) -> Iterator[subprocess.Popen]:
    """The attacker's process holding `file` (default fuse.file) open and mapped (2 fds: mmap
    keeps its own), exec'ed through a symlink named `comm` so a --name selector meets it."""
    link = fuse.home / comm
    link.symlink_to("/usr/bin/python3")
    proc = subprocess.Popen([*attacker.argv, str(link), "-c", HOLDER, str(file or fuse.file)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@contextlib.contextmanager
def proof_it_hangs(fuse: HangingFuse, path: Path | None = None) -> Iterator[None]:
    """A plain stat of `path` (default: the file on the mount) does not return (else these
    tests would prove nothing); it ends when the block is lifted, after the block."""
    stat = subprocess.Popen(["stat", str(path or fuse.file)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            stat.wait(timeout=2)
        yield
    finally:
        fuse.flag.unlink(missing_ok=True)
        stat.wait(timeout=60)


def scan_all_json(fuse: HangingFuse) -> subprocess.CompletedProcess[str]:
    """`inodewatch scan --all --json`; if it hangs, the block is lifted before it is killed
    (a process waiting on the FUSE server may not die of SIGKILL: the wait would hang the
    test run, and every scan on the machine with it)."""
    proc = subprocess.Popen([sys.executable, "-m", "inodewatch", "scan", "--all", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        fuse.flag.unlink(missing_ok=True)
        proc.kill()
        proc.communicate()
        raise AssertionError("scan --all hung on the FUSE mount") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def diverge(demo) -> None:
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")


def test_scan_all_does_not_touch_a_hanging_fuse_mount(start_demo, attacker, hanging_fuse):
    demo = start_demo("leak")
    diverge(demo)
    with fuse_holder(attacker, hanging_fuse) as holder:
        hanging_fuse.block()
        with proof_it_hangs(hanging_fuse):
            result = scan_all_json(hanging_fuse)
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["event"] for e in events if e["pid"] == demo.pid} == {"mapping.deleted", "mapping.replaced"}
    assert not [e for e in events if e["pid"] == holder.pid]
    [line] = [l for l in result.stderr.splitlines() if "not looked at" in l]
    assert line.startswith("on FUSE/network mounts")
    assert f"3 files in 1 process (pid {holder.pid})" in line  # its mapping and 2 fds
    assert f"{hanging_fuse.point} (fuse.hang)" in line


def test_daemon_keeps_watching_beside_a_hanging_fuse_mount(start_demo, start_watcher, attacker,
                                                           hanging_fuse):
    demo = start_demo("leak")
    with fuse_holder(attacker, hanging_fuse) as holder:
        hanging_fuse.block()
        with proof_it_hangs(hanging_fuse):
            watcher = start_watcher(demo.pid, extra=["--name", "fuseholder", "--interval", "0.1"])
            watcher.log.wait("target.attached", pid=holder.pid)
            degraded = watcher.log.wait("watch.degraded", resource="untrusted_mount")
            assert f"{hanging_fuse.point} (fuse.hang)" in degraded["detail"]
            diverge(demo)
            watcher.log.wait("mapping.deleted", pid=demo.pid)
            watcher.log.wait("mapping.replaced", pid=demo.pid)
            assert watcher.proc.poll() is None
            said = [e for e in watcher.log.read() if e["event"] == "watch.degraded"
                    and e.get("resource") == "untrusted_mount"]
            assert len(said) == 1  # once per mount, not at every re-read


def test_a_symlink_planted_onto_the_mount_is_not_followed(start_demo, attacker, hanging_fuse):
    """The attacker maps her own lib/f.so on a local disk, deletes it and lib, and puts a
    symlink to her FUSE mount in lib's place: maps still names lib/f.so (deleted), the path
    the scan must check now leads onto the mount, and a plain stat of it would hang.  It is
    walked component by component and never followed there."""
    demo = start_demo("leak")
    diverge(demo)
    own = hanging_fuse.home / "own"  # hers: she may rename in it
    lib = own / "lib"
    lib.mkdir(parents=True)
    (lib / "f.so").write_bytes(b"\x7fELF" + b"\0" * 8188)
    for d in (own, lib):
        os.chown(d, attacker.uid, attacker.gid)
    with fuse_holder(attacker, hanging_fuse, comm="swapper", file=lib / "f.so") as holder:
        for step in (["rm", str(lib / "f.so")], ["rmdir", str(lib)],
                     ["ln", "-s", str(hanging_fuse.point), str(lib)]):
            subprocess.run([*attacker.argv, *step], check=True)
        hanging_fuse.block()
        with proof_it_hangs(hanging_fuse, lib / "f.so"):
            result = scan_all_json(hanging_fuse)
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {e["event"] for e in events if e["pid"] == demo.pid} == {"mapping.deleted", "mapping.replaced"}
    assert not [e for e in events if e["pid"] == holder.pid]
    [line] = [l for l in result.stderr.splitlines() if "not looked at" in l]
    assert f"3 files in 1 process (pid {holder.pid})" in line


def test_the_mount_table_is_read_again_when_the_mounts_change(hanging_fuse):
    """The daemon lives for months: a table cached per namespace must follow mounts and
    unmounts (poll on the open mountinfo), or a FUSE mount made later would be trusted."""
    from inodewatch import mounts, procfs

    namespace = procfs.mount_namespace(os.getpid())
    table = mounts.table_of(os.getpid(), namespace)
    point = os.fsencode(hanging_fuse.point)
    assert point in [m.point for m in table.points]
    assert mounts.table_of(os.getpid(), namespace) is table  # unchanged: the cached one
    subprocess.run(["fusermount3", "-u", str(hanging_fuse.point)], check=True)
    assert point not in [m.point for m in mounts.table_of(os.getpid(), namespace).points]
