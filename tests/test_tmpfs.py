"""Code on tmpfs is code: a library loaded from /dev/shm, then deleted, is reported by scan
and the daemon; POSIX shm segments, /dev/zero, memfds and a JIT's shared double mapping of
a /dev/shm file (none mapped private and executable) stay out, as before."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from conftest import scan_events

pytestmark = pytest.mark.integration

# A process holding IPC under /dev/ as programs do: a POSIX shm segment (shm_open is a file
# in /dev/shm), /dev/zero mapped shared, a memfd, and one /dev/shm file mapped twice, rw-s
# and r-xs (how JITs and libffi's closures get writable and executable views of one page);
# every file deleted.
IPC_HOLDER = r"""
import mmap, os, sys
tag = sys.argv[1]
views = []
def shm(name, prot=mmap.PROT_READ | mmap.PROT_WRITE):
    fd = os.open(f"/dev/shm/{tag}-{name}", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 4096)
    return fd
fd = shm("segment")
views.append(mmap.mmap(fd, 4096))
jit = shm("jit")
views.append(mmap.mmap(jit, 4096))
views.append(mmap.mmap(jit, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC))
for name in ("segment", "jit"):
    os.unlink(f"/dev/shm/{tag}-{name}")
zero = os.open("/dev/zero", os.O_RDWR)
views.append(mmap.mmap(zero, 4096, flags=mmap.MAP_SHARED))
views.append(mmap.mmap(zero, 4096, flags=mmap.MAP_PRIVATE))
memfd = os.memfd_create("plugin-cache")
os.ftruncate(memfd, 4096)
views.append(mmap.mmap(memfd, 4096))
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def shm_lib() -> bytes:
    """A name in /dev/shm for the demo's library, removed after the test."""
    path = f"/dev/shm/inodewatch-test-{uuid.uuid4().hex}.so".encode()
    yield path
    if os.path.lexists(path):
        os.unlink(path)


@pytest.fixture
def ipc_holder():
    tag = f"inodewatch-test-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-c", IPC_HOLDER, tag], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # not pytest's capture file: deleted
    try:
        assert proc.stdout.readline() == "ready\n"
        maps = open(f"/proc/{proc.pid}/maps").read()
        assert f"/dev/shm/{tag}-jit (deleted)" in maps and "/dev/zero (deleted)" in maps
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_library_loaded_from_dev_shm_then_deleted_is_reported(start_demo, shm_lib, ipc_holder,
                                                                 start_watcher):
    demo = start_demo("leak", lib=shm_lib)  # an absolute --lib: the demo loads it from there
    assert demo.lib == shm_lib
    watcher = start_watcher(ipc_holder.pid, demo.pid)
    os.unlink(shm_lib)
    deleted = watcher.log.wait("mapping.deleted", pid=demo.pid)
    assert deleted["path"] == os.fsdecode(shm_lib) and "r-xp" in deleted["perms"]
    code, events = scan_events(demo.pid)
    assert code == 1 and [(e["event"], e["path"]) for e in events] == [
        ("mapping.deleted", os.fsdecode(shm_lib))]
    # the IPC holder was attached first: whatever it would have raised is logged by now
    watcher.stop()
    assert not [(e["event"], e["path"]) for e in watcher.log.read()
                if e.get("pid") == ipc_holder.pid and e["event"].startswith(("mapping.", "fd."))]
    assert scan_events(ipc_holder.pid) == (0, [])
