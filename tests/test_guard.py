"""The guard (inodewatch.guard, inodewatch.fanotify): the pure parts on captured and hostile
input, then the real thing -- fanotify marks on real files, real writers (cp, sh, dd,
truncate, python, openat2 and open_by_handle_at through ctypes), the real C demo mapping the
guarded library, a guard process killed with SIGKILL, one without CAP_SYS_ADMIN.

The guard's owner (the daemon, later) runs in a child process (tests/guard_child.py) driven
through its stdin and stdout, except where the test process itself must be the owner (its own
opens, close()).  The owner's Guard starts the helper process that answers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, TIMEOUT, wait_for
from hypothesis import given
from hypothesis import strategies as st

from inodewatch import fanotify
from inodewatch.guard import (ALLOWED, REFUSED, UNKNOWN, Guard, GuardUnavailable, OpenHowAt, decide,
                              flags_text, guardable, is_write, parse_syscall, read_syscall)
from inodewatch.model import FileId

CHILD = REPO / "tests" / "guard_child.py"

# --- parse_syscall on /proc/TID/syscall text captured on this machine (Linux 6.18) ----------

# cp so2.so so.so, blocked in our wait: openat(AT_FDCWD, "so.so", O_WRONLY|O_TRUNC, 0)
CP = b"257 0xffffff9c 0x7ffd6c8a3f0e 0x201 0x0 0x0 0x0 0x7ffd6c8a1b58 0x7f3b2e4f1a3d\n"
# python open(path, "r+"): O_RDWR|O_CLOEXEC
PY_RPLUS = b"257 0xffffff9c 0x7f44b85f18e0 0x80002 0x1b6 0x0 0x0 0x7ffe8f0c6f28 0x7f44b8e3d5c2\n"
CAT = b"257 0xffffff9c 0x7ffc1b27e5a1 0x0 0x0 0x0 0x0 0x7ffc1b27c9d8 0x7f0f2c0f1a3d\n"
SLEEP = b"230 0x0 0x0 0x7ffcf18a36d0 0x7ffcf18a3710 0x0 0x0 0x7ffcf18a36b8 0x7f9c577e8503\n"
KTHREAD = b"0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0\n"
NOT_IN_CALL = b"-1 0x7ffd6c8a1b58 0x7f3b2e4f1a3d\n"


def call(number: int, *args: int) -> bytes:
    fields = list(args) + [0] * (6 - len(args))
    return b"%d " % number + b" ".join(b"0x%x" % a for a in fields) + b" 0x7ffd00001000 0x7f0000002000\n"


@pytest.mark.parametrize(("text", "flags"), [
    (CP, 0x201),
    (PY_RPLUS, 0x80002),
    (CAT, 0),
    (call(2, 0x5600, 0x441, 0o644), 0x441),  # open(path, O_WRONLY|O_CREAT|O_APPEND)
    (call(85, 0x5600, 0o644), 0x241),  # creat(): always O_CREAT|O_WRONLY|O_TRUNC
    (call(304, 3, 0x5600, 0x2), 0x2),  # open_by_handle_at(mount_fd, handle, O_RDWR)
    (call(59, 0x5600, 0x5700, 0x5800), 0),  # execve: the kernel opens the file to read it
    (call(322, 3, 0x5600), 0),  # execveat
    (call(257 | 0x40000000, 0xffffff9c, 0x5600, 0x1), 0x1),  # an x32 process's openat
    (call(257, 0xffffff9c, 0x5600, 0xffffffff00000001), 0x1),  # an int: the upper half is noise
])
def test_open_flags_of_x86_64_calls(text, flags):
    assert parse_syscall(text, "x86_64") == flags


def test_openat2_points_at_its_open_how():
    assert parse_syscall(call(437, 0xffffff9c, 0x5600, 0x7ffd2000, 24), "x86_64") == OpenHowAt(0x7ffd2000)
    assert parse_syscall(call(437, 0xffffff9c, 0x5600, 0xffff8000, 24), "aarch64") == OpenHowAt(0xffff8000)


@pytest.mark.parametrize(("text", "flags"), [
    (call(56, 0xffffff9c, 0x5600, 0x241, 0o644), 0x241),  # openat
    (call(265, 3, 0x5600, 0x1), 0x1),  # open_by_handle_at
    (call(221, 0x5600), 0),  # execve
    (call(281, 3, 0x5600), 0),  # execveat
    (call(257, 0xffffff9c, 0x5600, 0x1), None),  # x86_64's openat is aarch64's getcwd... not an open
    (call(2, 0x5600, 0x1), None),  # no open(2) on aarch64
])
def test_open_flags_of_aarch64_calls(text, flags):
    assert parse_syscall(text, "aarch64") == flags


@pytest.mark.parametrize("text", [
    b"running\n", NOT_IN_CALL, SLEEP, KTHREAD,  # not asleep yet; not in a call; not an open
    call(426, 4, 1, 0, 1),  # io_uring_enter: what it opens is not in its arguments
    call(5, 0x5600, 0x1),  # an i386 process's open(2) read as x86_64's fstat: not an open
    b"", b"\n", b"257", b"257 0xffffff9c 0x5600 0x1\n",  # too short
    CP.replace(b"0x201", b"0xzz"), CP.replace(b"0x201", b"513"),  # not hex, not 0x
    b"-2 0x1 0x2\n", b"-1 0x1 0x2 0x3 0x4 0x5 0x6 0x7 0x8\n", b"257 0x1 0x2\n",  # shapes that lie
    CP + b"extra\n", b"\xff\xfe" * 40, b"257\x000xffffff9c", b"1e3 " + CP[4:],
])
def test_no_open_flags_from_what_is_not_an_open(text):
    assert parse_syscall(text, "x86_64") is None


def test_a_machine_we_do_not_know():
    assert parse_syscall(CP, "riscv64") is None


def test_read_syscall():
    assert read_syscall(CP) == (257, (0xffffff9c, 0x7ffd6c8a3f0e, 0x201, 0, 0, 0))
    assert read_syscall(NOT_IN_CALL) == (-1, ())
    assert read_syscall(b"running\n") is None


@given(st.binary(max_size=300))
def test_parse_syscall_takes_anything(data):
    for machine in ("x86_64", "aarch64"):
        result = parse_syscall(data, machine)
        assert result is None or isinstance(result, (int, OpenHowAt))


# --- which opens write ---------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "writes"), [
    (os.O_RDONLY, False),
    (os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, False),
    (os.O_RDONLY | os.O_CREAT, False),  # an existing file is not changed
    (os.O_RDONLY | os.O_APPEND, False),
    (os.O_WRONLY, True),
    (os.O_RDWR, True),
    (os.O_ACCMODE, True),  # 3: ioctl-only access, checked for write permission
    (os.O_WRONLY | os.O_TRUNC | os.O_CREAT, True),
    (os.O_RDONLY | os.O_TRUNC, True),  # truncates: Linux checks write permission and does it
    (os.O_WRONLY | os.O_APPEND, True),
])
def test_is_write(flags, writes):
    assert is_write(flags) is writes


def test_decide():
    guarded = frozenset({FileId(1, 2)})
    assert decide(guarded, FileId(1, 2), os.O_WRONLY) == REFUSED
    assert decide(guarded, FileId(1, 2), os.O_RDONLY) == ALLOWED
    assert decide(guarded, FileId(1, 2), None) == UNKNOWN
    assert decide(guarded, FileId(1, 3), os.O_WRONLY) == ALLOWED
    assert decide(guarded, FileId(1, 3), None) == ALLOWED


# --- which files may be guarded ---------------------------------------------------------------

@pytest.mark.parametrize(("path", "yes"), [
    (b"/usr/lib/x86_64-linux-gnu/libc.so.6", False),
    (b"/lib/x86_64-linux-gnu/libssl.so.3", False),
    (b"/lib64/ld-linux-x86-64.so.2", False),
    (b"/usr/lib/libfoo.so.1", False),
    (b"/usr/lib64/libfoo.so.1", False),
    (b"/usr/local/lib/libfoo.so.1", False),  # on ld.so's default path (Debian's libc.conf)
    (b"/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libfoo.so.1", False),
    (b"/usr/lib/aarch64-linux-gnu/libz.so.1", False),
    (b"/usr/lib/nginx/modules/ngx_http_geoip_module.so", True),  # plugins: dlopen'ed by path
    (b"/usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", True),
    (b"/usr/lib/x86_64-linux-gnu/security/pam_unix.so", True),
    (b"/usr/local/lib/myapp/plugin.so", True),
    (b"/opt/app/lib/libapp.so", True),
    (b"/usr/sbin/nginx", True),
    (b"/usr/lib", True),  # not a file in /usr/lib: the directory itself
    (b"/usr/library/x.so", True),  # a prefix of the name is not the directory
    (b"/srv/x/libc.so.6", False),  # libc is never guarded, wherever it is
    (b"/srv/x/ld-linux-x86-64.so.2", False),
    (b"/srv/x/libcrypt.so.1", True),
])
def test_guardable(path, yes):
    assert guardable(path) is yes


def test_guardable_widened():
    assert guardable(b"/usr/lib/x86_64-linux-gnu/libfoo.so.1", widen=[b"/usr/lib/x86_64-linux-gnu/libfoo.so.1"])
    assert guardable(b"/usr/local/lib/libfoo.so.1", widen=[b"/usr/local/lib/"])
    assert not guardable(b"/usr/lib/libfoo.so.1", widen=[b"/usr/li"])  # a prefix of a name widens nothing
    assert not guardable(b"/usr/lib/x86_64-linux-gnu/libc.so.6", widen=[b"/usr/lib"])
    assert not guardable(b"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", widen=[b"/"])
    assert not guardable(b"/opt/vendor/libx.so", library_dirs=[b"/opt/vendor/"])  # from ld.so.conf


# --- event records -------------------------------------------------------------------------------

def record(mask: int, fd: int, pid: int, extra: bytes = b"", version: int = 3) -> bytes:
    return struct.pack("=IBBHQii", 24 + len(extra), version, 0, 24, mask, fd, pid) + extra


def test_parse_events():
    data = record(fanotify.FAN_OPEN_PERM, 7, 1234) + record(fanotify.FAN_Q_OVERFLOW, -1, 0)
    assert fanotify.parse_events(data) == [fanotify.Event(fanotify.FAN_OPEN_PERM, 7, 1234),
                                           fanotify.Event(fanotify.FAN_Q_OVERFLOW, -1, 0)]
    assert fanotify.parse_events(data)[0].is_permission
    assert not fanotify.parse_events(data)[1].is_permission
    assert fanotify.parse_events(b"") == []


def test_parse_events_skips_info_records():
    # a pidfd info record (header u8 type, u8 pad, u16 len; s32 pidfd) after the metadata
    data = record(fanotify.FAN_OPEN_PERM, 7, 1, extra=struct.pack("=BBHi", 4, 0, 8, 9)) + record(0x20, 8, 2)
    assert [e.fd for e in fanotify.parse_events(data)] == [7, 8]


@pytest.mark.parametrize("data", [
    record(fanotify.FAN_OPEN_PERM, 7, 1, version=2),
    record(fanotify.FAN_OPEN_PERM, 7, 1)[:20],
    struct.pack("=IBBHQii", 0, 3, 0, 24, 0, 7, 1),  # event_len 0: would loop forever
    struct.pack("=IBBHQii", 48, 3, 0, 24, 0, 7, 1),  # longer than what was read
    struct.pack("=IBBHQii", 24, 3, 0, 16, 0, 7, 1),  # metadata shorter than the struct
])
def test_parse_events_refuses_what_does_not_add_up(data):
    with pytest.raises(fanotify.FormatError):
        fanotify.parse_events(data)


@given(st.binary(max_size=200))
def test_parse_events_takes_anything(data):
    try:
        fanotify.parse_events(data)
    except fanotify.FormatError:
        pass


def test_answers():
    assert fanotify.deny() == fanotify.FAN_DENY
    assert fanotify.deny(errno.ETXTBSY) == 0x1A000002
    assert fanotify.response(5, fanotify.FAN_ALLOW) == struct.pack("=iI", 5, 1)
    with pytest.raises(ValueError):
        fanotify.deny(256)


# --- the real guard ------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify permission events need CAP_SYS_ADMIN")


class GuardChild:
    """tests/guard_child.py running, its stdout read by a thread into a queue."""

    def __init__(self, prefix: list[str] | None = None) -> None:
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, str(CHILD)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.first = self.line()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self) -> str:
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no line from the guard child in {TIMEOUT:.0f} s") from None
        assert line is not None, f"the guard child ended: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return line

    def ask(self, cmd: str, **args: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.line())

    def guard(self, path: Path) -> dict:
        answer = self.ask("guard", path=os.fsdecode(path))
        assert answer["guarded"]
        return answer

    def records(self, count: int = 0) -> list[dict]:
        answer = self.ask("wait", count=count) if count else self.ask("drain")
        return answer["records"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def guard_child() -> Iterator[GuardChild]:
    child = GuardChild()
    if child.first.startswith("unavailable"):
        child.stop()
        pytest.skip(child.first)
    assert child.first.startswith("ready ")
    yield child
    child.stop()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(marked, other, the marked file's bytes): two files of different content."""
    marked, other = tmp_path / "marked.so", tmp_path / "other.so"
    content = b"\x7fELF the guarded bytes\n" * 100
    marked.write_bytes(content)
    other.write_bytes(b"other bytes\n")
    return marked, other, content


def writer_errno(child: GuardChild) -> int:
    return int(child.first.split()[1])


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, timeout=TIMEOUT, **kwargs)


def python(code: str, *args: str | Path) -> subprocess.CompletedProcess:
    return run(sys.executable, "-c", code, *args)


# Opens through ctypes: openat2 (struct open_how), open_by_handle_at, and an open from a thread
# other than the main one.  Prints "opened" or the errno.
OPENER = r"""
import ctypes, os, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
how, path, flags = sys.argv[1], os.fsencode(sys.argv[2]), int(sys.argv[3], 0)
def openat2():
    open_how = struct.pack("=QQQ", flags, 0o644 if flags & os.O_CREAT else 0, 0)
    return libc.syscall(437, -100, path, ctypes.create_string_buffer(open_how, 24), 24), ctypes.get_errno()
def by_handle():
    class Handle(ctypes.Structure):
        _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("f", ctypes.c_ubyte * 128)]
    handle, mount_id = Handle(bytes=128), ctypes.c_int()
    assert libc.name_to_handle_at(-100, path, ctypes.byref(handle), ctypes.byref(mount_id), 0) == 0
    mount_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    return libc.open_by_handle_at(mount_fd, ctypes.byref(handle), flags), ctypes.get_errno()
def in_thread():
    out = []
    def run():
        try:
            out.append((os.open(path, flags), 0))
        except OSError as exc:
            out.append((-1, exc.errno))
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0]
fd, error = {"openat2": openat2, "handle": by_handle, "thread": in_thread}[how]()
print("opened" if fd >= 0 else "errno %d" % error)
"""


@needs_root
@pytest.mark.integration
def test_cp_over_a_guarded_file_is_refused(guard_child, files):
    marked, other, content = files
    guarded = guard_child.guard(marked)
    cp = subprocess.Popen(["cp", str(other), str(marked)], stderr=subprocess.PIPE)
    _, err = cp.communicate(timeout=TIMEOUT)
    assert cp.returncode != 0
    assert os.strerror(writer_errno(guard_child)).encode() in err  # "Text file busy" on 6.14+
    assert marked.read_bytes() == content
    [refused] = guard_child.records(1)
    assert refused["outcome"] == REFUSED
    assert refused["pid"] == refused["tid"] == cp.pid
    assert refused["comm"] == "cp"
    assert refused["exe"] == os.path.realpath(shutil.which("cp"))
    assert refused["cmdline"] == ["cp", str(other), str(marked)]
    assert refused["path"] == str(marked)
    assert refused["file"] == [guarded["dev"], guarded["ino"]]
    assert is_write(refused["flags"]) and refused["syscall"] == 257


@needs_root
@pytest.mark.integration
def test_reads_exec_and_other_files_go_through(guard_child, files, tmp_path):
    marked, other, content = files
    guard_child.guard(marked)
    assert run("cat", marked).stdout == content
    assert run("sha256sum", marked).stdout.split()[0].decode() == hashlib.sha256(content).hexdigest()
    program = tmp_path / "true"
    shutil.copy(shutil.which("true"), program)
    guard_child.guard(program)
    assert run(program).returncode == 0  # execve opens it: allowed, and not "unknown"
    assert run("cp", marked, other).returncode == 0  # the guarded file read, another written
    assert other.read_bytes() == content
    assert guard_child.records() == []
    stats = guard_child.ask("stats")
    assert stats["allowed"] >= 4 and stats["refused"] == stats["unknown"] == stats["errors"] == 0


@needs_root
@pytest.mark.integration
def test_every_way_to_open_for_writing_is_refused(guard_child, files):
    marked, other, content = files
    guard_child.guard(marked)
    busy = os.strerror(writer_errno(guard_child)).encode()
    for argv in (["sh", "-c", 'echo x >> "$0"', marked],
                 ["sh", "-c", 'echo x > "$0"', marked],
                 ["truncate", "-s", "0", marked],  # coreutils opens O_WRONLY, then ftruncate
                 ["dd", f"if={other}", f"of={marked}", "conv=notrunc", "status=none"],
                 ["cp", "--preserve=all", other, marked],
                 [sys.executable, "-c", "import sys; open(sys.argv[1], 'r+')", marked],
                 [sys.executable, "-c", "import os, sys; os.open(sys.argv[1], os.O_RDONLY | os.O_TRUNC)", marked]):
        result = run(*argv)
        assert result.returncode != 0 and busy in result.stderr, (argv, result)
    for how in ("openat2", "handle", "thread"):
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
            assert python(OPENER, how, marked, str(flags)).stdout.decode() == f"errno {writer_errno(guard_child)}\n"
        assert python(OPENER, how, marked, str(os.O_RDONLY)).stdout == b"opened\n"
    assert marked.read_bytes() == content
    records = guard_child.records(7 + 3 * 4)
    assert len(records) == 7 + 3 * 4 and all(r["outcome"] == REFUSED for r in records)
    assert {r["syscall"] for r in records} == {257, 437, 304}
    threaded = [r for r in records if r["cmdline"][2:3] == ["thread"]]
    assert all(r["tid"] != r["pid"] for r in threaded)  # FAN_REPORT_TID: the opening thread


@needs_root
@pytest.mark.integration
def test_what_the_guard_does_not_see(guard_child, files):
    """truncate(2) by path opens nothing: not refused (FAN_PRE_ACCESS would see it, at the
    cost of an event for every read of the file).  And an fd opened before the mark writes."""
    marked, _, content = files
    with open(marked, "r+b") as before:
        guard_child.guard(marked)
        before.write(b"X")
    assert marked.read_bytes()[:1] == b"X"
    assert python("import os, sys; os.truncate(sys.argv[1], 3)", marked).returncode == 0
    assert marked.stat().st_size == 3
    assert guard_child.records() == []


@needs_root
@pytest.mark.integration
def test_mv_over_and_rm_work(guard_child, files, tmp_path):
    marked, other, _ = files
    guard_child.guard(marked)
    new = tmp_path / "new.so"
    new.write_bytes(b"new version\n")
    assert run("mv", new, marked).returncode == 0
    assert marked.read_bytes() == b"new version\n"
    assert run("cp", other, marked).returncode == 0  # the new inode is not guarded
    guard_child.ask("unguard", path=os.fsdecode(marked))  # the old one: its path is the new one's
    assert guard_child.ask("stats")["stale_marks"] == 1
    guard_child.guard(marked)
    assert run("rm", marked).returncode == 0
    assert guard_child.records() == []


@needs_root
@pytest.mark.integration
def test_one_record_per_writer_and_file(guard_child, files):
    marked, _, content = files
    guard_child.guard(marked)
    retries = "import sys\nfor _ in range(5):\n    try: open(sys.argv[1], 'w')\n    except OSError: pass"
    assert python(retries, marked).returncode == 0
    assert python(retries, marked).returncode == 0
    records = guard_child.records(2)
    assert len(records) == 2 and records[0]["pid"] != records[1]["pid"]
    assert guard_child.ask("stats")["repeats"] == 8
    assert marked.read_bytes() == content


@needs_root
@pytest.mark.integration
def test_unguard(guard_child, files):
    marked, other, _ = files
    guarded = guard_child.guard(marked)
    assert f"ino:{guarded['ino']:x} " in guard_child.ask("fdinfo")["fdinfo"]
    guard_child.ask("unguard", path=os.fsdecode(marked))
    assert f"ino:{guarded['ino']:x} " not in guard_child.ask("fdinfo")["fdinfo"]
    assert run("cp", other, marked).returncode == 0
    assert guard_child.ask("stats")["stale_marks"] == 0


@needs_root
@pytest.mark.integration
def test_a_path_that_names_another_file_is_not_guarded(files):
    marked, other, _ = files
    with Guard() as guard:
        st = other.stat()
        assert not guard.guard(os.fsencode(marked), st.st_dev, st.st_ino)
        assert not guard.guard(os.fsencode(marked) + b".gone", st.st_dev, st.st_ino)
        assert not guard.guard(b"/tmp/a\0b", st.st_dev, st.st_ino)  # and the helper lives on
        assert guard.guard(os.fsencode(other), st.st_dev, st.st_ino)
        assert guard.guarded == frozenset({FileId(st.st_dev, st.st_ino)})
        guard.unguard(st.st_dev, st.st_ino)
        assert guard.guarded == frozenset()


@needs_root
@pytest.mark.integration
def test_the_demo_survives_a_refused_cp(guard_child, start_demo):
    demo = start_demo("hold", interval_ms=100)
    guard_child.guard(Path(os.fsdecode(demo.lib)))
    before = Path(os.fsdecode(demo.lib)).read_bytes()
    result = run("cp", demo.dir / "so2.so", os.fsdecode(demo.lib))
    assert result.returncode != 0
    assert Path(os.fsdecode(demo.lib)).read_bytes() == before
    demo.tick("so1: version 1")  # it reloads the library, and lives on
    assert demo.proc.poll() is None
    loaded = python("import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('loaded')", os.fsdecode(demo.lib))
    assert loaded.stdout == b"loaded\n"  # another process's dlopen of the guarded file
    [refused] = guard_child.records(1)
    assert refused["comm"] == "cp" and refused["path"] == os.fsdecode(demo.lib)


def blocked_in_open(pid: int) -> bool:
    syscall = Path(f"/proc/{pid}/syscall").read_text().split()
    stat = Path(f"/proc/{pid}/stat").read_text()
    # asleep in openat: fanotify's wait is killable, so it shows as D
    return syscall[:1] == ["257"] and stat.rsplit(")", 1)[1].split()[0] in ("D", "S")


def helper_of(child: GuardChild) -> int:
    return int(child.first.split()[2])


@needs_root
@pytest.mark.integration
def test_kill_9_of_the_owner_lets_a_waiting_writer_through(guard_child, files):
    """A helper that does not answer (stopped) holds the writer in open(2); SIGKILL of the
    guard's owner (the daemon) kills the helper too, the group closes, the kernel lets the
    writer through."""
    marked, other, _ = files
    guard_child.guard(marked)
    helper = helper_of(guard_child)
    os.kill(helper, signal.SIGSTOP)
    cp = subprocess.Popen(["cp", str(other), str(marked)], stderr=subprocess.PIPE)
    wait_for(lambda: blocked_in_open(cp.pid), what="cp blocked in openat")
    guard_child.proc.kill()
    _, err = cp.communicate(timeout=TIMEOUT)
    assert cp.returncode == 0, err
    assert marked.read_bytes() == other.read_bytes()
    wait_for(lambda: not Path(f"/proc/{helper}").exists(), what="the helper gone")


@needs_root
@pytest.mark.integration
def test_a_dead_helper_is_a_failure_and_blocks_nothing(files):
    marked, other, _ = files
    guard = Guard()
    try:
        st = marked.stat()
        guard.guard(os.fsencode(marked), st.st_dev, st.st_ino)
        os.kill(guard.helper_pid, signal.SIGKILL)
        assert select.select([guard.fileno()], [], [], TIMEOUT)[0]
        guard.drain()
        assert guard.failure == "the guard's helper ended (killed by signal 9)"
        with pytest.raises(GuardUnavailable):
            guard.guard(os.fsencode(other), st.st_dev, st.st_ino)
        assert run("cp", other, marked).returncode == 0
    finally:
        guard.close()


@needs_root
@pytest.mark.integration
def test_without_cap_sys_admin_the_guard_is_unavailable():
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv")
    child = GuardChild([setpriv, "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"])
    try:
        assert child.first == ("unavailable: fanotify permission events need CAP_SYS_ADMIN "
                               "(fanotify_init: Operation not permitted)")
        assert child.proc.wait(timeout=TIMEOUT) == 2
    finally:
        child.stop()


@needs_root
@pytest.mark.integration
def test_a_guard_in_another_pid_namespace_fails_open(files):
    """Writers outside its pid namespace come with pid 0: their flags cannot be read, the
    open is allowed and recorded as unknown."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare")
    marked, other, _ = files
    child = GuardChild([unshare, "--pid", "--fork", "--mount-proc"])
    try:
        if not child.first.startswith("ready"):
            pytest.skip(child.first)
        child.guard(marked)
        assert run("cp", other, marked).returncode == 0
        [unknown] = child.records(1)
        assert unknown["outcome"] == UNKNOWN and unknown["pid"] == unknown["tid"] == 0
        assert unknown["flags"] is None
    finally:
        child.stop()


# --- in this process: the owner's own opens, close(), the wake-up fd, the errno fallback ------

@needs_root
@pytest.mark.integration
def test_the_owner_opens_its_guarded_file_and_close_releases_it(files):
    marked, _, content = files
    guard = Guard()
    try:
        st = marked.stat()
        assert guard.guard(os.fsencode(marked), st.st_dev, st.st_ino)
        assert marked.read_bytes() == content  # answered by the thread, not waited for by us
        with pytest.raises(OSError) as refused:
            open(marked, "r+b")
        assert refused.value.errno == guard.deny_errno
        assert wait_for(lambda: select.select([guard.fileno()], [], [], 0)[0], what="the wake-up fd")
        drained = guard.drain()
        assert [r.pid for r in drained.records] == [os.getpid()] and drained.dropped == 0
        assert guard.drain().records == []
    finally:
        guard.close()
    with open(marked, "r+b") as f:  # the group is gone, and its marks
        f.write(b"Y")


@needs_root
@pytest.mark.integration
def test_a_full_deque_counts_what_it_dropped(files):
    marked, _, _ = files
    with Guard(max_records=2) as guard:
        st = marked.stat()
        guard.guard(os.fsencode(marked), st.st_dev, st.st_ino)
        for _ in range(4):
            assert python("import sys\ntry: open(sys.argv[1], 'w')\nexcept OSError: pass", marked).returncode == 0
        wait_for(lambda: guard.stats().refused == 4, what="4 refusals")
        drained = guard.drain()
        assert len(drained.records) == 2 and drained.dropped == 2


@needs_root
@pytest.mark.integration
def test_a_group_that_may_not_choose_the_errno_refuses_with_eperm(files):
    """A FAN_CLASS_CONTENT group's FAN_DENY_ERRNO answer is refused by the kernel (EINVAL):
    the helper answers plain FAN_DENY then and from then on.  Its loop runs here, in a
    thread, on such a group it is told may choose."""
    from inodewatch.guard import _Responder
    marked, _, content = files
    group = fanotify.init(fanotify.FAN_CLASS_CONTENT | fanotify.FAN_REPORT_TID | fanotify.FAN_CLOEXEC
                          | fanotify.FAN_NONBLOCK)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.setblocking(False)
    responder = _Responder(group, True, os.uname().machine, theirs)
    assert responder.deny_errno == errno.ETXTBSY
    st = marked.stat()
    assert responder.guard(os.fsencode(marked), st.st_dev, st.st_ino)
    loop = threading.Thread(target=responder.serve)
    loop.start()
    try:
        result = python("import sys\ntry: open(sys.argv[1], 'wb')\nexcept OSError as e: print(e.errno)", marked)
        assert result.stdout == b"%d\n" % errno.EPERM
        assert responder.deny_errno == errno.EPERM
        assert responder.counts["refused"] == 1 and responder.counts["errors"] == 0
    finally:
        ours.close()  # the loop ends with its socket
        loop.join(TIMEOUT)
        theirs.close()
        os.close(group)
    assert marked.read_bytes() == content


def test_a_cmdline_stuck_on_one_writer_is_not_waited_for_again(monkeypatch):
    """_Cmdlines gives up on a read after CMDLINE_WAIT, and reads no other while that one is
    stuck (a writer's mm lock held: read_cmdline made to block here)."""
    from inodewatch import guard as guard_module
    release = threading.Event()

    def read_cmdline(pid: int, limit: int) -> tuple[list[bytes], bool]:
        if pid == 1:
            release.wait()
        return [b"pid%d" % pid], False
    monkeypatch.setattr(guard_module, "read_cmdline", read_cmdline)
    cmdlines = guard_module._Cmdlines()
    assert cmdlines.read(1) == (None, False)  # stuck: given up
    assert cmdlines.read(2) == (None, False)  # not even asked
    release.set()
    assert wait_for(lambda: cmdlines.read(3) == ([b"pid3"], False), what="the reader free again")


@pytest.mark.parametrize(("flags", "text"), [
    (0x201, "O_WRONLY|O_TRUNC"),  # cp
    (0x80002, "O_RDWR|O_CLOEXEC"),  # python "r+"
    (0o101 | 0o1000, "O_WRONLY|O_CREAT|O_TRUNC"),  # creat
    (0o3 | 0o40000000, "O_ACCMODE|0o40000000"),  # an access mode 3, a bit not named
])
def test_flags_read_as_the_operator_knows_them(flags, text):
    assert flags_text(flags) == text
