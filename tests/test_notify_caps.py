"""sd_notify over a real AF_UNIX datagram socket, and the capability set read from /proc."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inodewatch import caps, notify
from inodewatch.notify import Notifier

# --- sd_notify ------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: sockaddr_un holds 108 bytes, pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="iwn.", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd's end: a datagram socket bound to a path, and the NOTIFY_SOCKET naming it."""
    path = short_dir / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def nothing_queued(sock: socket.socket) -> bool:
    return not select.select([sock], [], [], 0)[0]


def test_ready_sends_ready_and_status_in_one_datagram(receiver):
    sock, path = receiver
    n = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("watching 2 targets") is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 2 targets"
    assert n.ready() is True
    assert sock.recv(4096) == b"READY=1"
    assert nothing_queued(sock)


def test_status_stopping_and_other_fields(receiver):
    sock, path = receiver
    n = Notifier.from_environment({"NOTIFY_SOCKET": path})
    n.status("3 targets, 1 diverged")
    assert sock.recv(4096) == b"STATUS=3 targets, 1 diverged"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.stopping("SIGTERM")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=SIGTERM"
    n.notify({"RELOADING": "1"})
    assert sock.recv(4096) == b"RELOADING=1"


def test_watchdog_sends_watchdog_1_when_the_watchdog_is_ours(receiver):
    sock, path = receiver
    n = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval() == 15.0
    assert n.watchdog() is True
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_the_abstract_namespace():
    name = f"inodewatch-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert n.address == b"\0" + name.encode()
        n.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        n.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        n.close()
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = Notifier.from_environment()
    assert not n.enabled
    assert (n.ready("x"), n.status("x"), n.watchdog(), n.stopping()) == (False, False, False, False)
    assert n.watchdog_interval() is None  # nobody to ping
    assert n.fileno() is None and n.failures == 0  # no socket was even created


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path", "@"])
def test_an_unusable_notify_socket_is_a_no_op(value):
    n = Notifier.from_environment({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog_interval() is None


def test_from_environment_reads_os_environ_and_leaves_it_alone(receiver, monkeypatch):
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    n = Notifier.from_environment()
    n.ready()
    assert sock.recv(4096) == b"READY=1"
    assert n.watchdog_interval() == 2.5
    assert os.environ["NOTIFY_SOCKET"] == path and os.environ["WATCHDOG_USEC"] == "5000000"


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1"}, 0.0000005),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{me}"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "30s"}, None),
    ({"WATCHDOG_PID": "{me}"}, None),
    ({}, None),
])
def test_watchdog_interval_and_the_watchdog_pid_rule(receiver, env, expected):
    sock, path = receiver
    me = os.getpid()
    environ = {k: v.format(me=me, other=me + 1) for k, v in env.items()}
    n = Notifier.from_environment({"NOTIFY_SOCKET": path, **environ})
    assert n.watchdog_interval() == expected
    if expected is None:
        assert n.watchdog() is False  # a watchdog meant for another process is not ours
        assert nothing_queued(sock)
    else:
        assert n.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_watchdog_pid_is_compared_with_the_given_pid(receiver):
    _sock, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}
    assert Notifier.from_environment(env, pid=4242).watchdog_interval() == 2.0
    assert Notifier.from_environment(env, pid=4243).watchdog_interval() is None


def test_status_is_always_one_line(receiver):
    sock, path = receiver
    n = Notifier.from_environment({"NOTIFY_SOCKET": path})
    hostile = os.fsdecode(b"/tmp/\xff\x1b[31mred\x1b[0m\n\nREADY=1\r\n\tso\xe2\x80\xae.so\x00\xe2\x80\xa8x")
    n.status(f"  replaced: {hostile}\n")
    data = sock.recv(4096)
    assert data.count(b"\n") == 0 and data.startswith(b"STATUS=replaced: /tmp/")
    text = data.decode("utf-8")  # valid UTF-8, even from a surrogate-escaped name
    assert text.isprintable()
    assert "\\udcff" in text and "\\x1b[31mred" in text and "\\u202e" in text and "\\x00" in text
    assert "\\u2028" in text
    assert " READY=1 so" in text  # line breaks and tabs became single spaces
    n.ready("a\nb")
    assert sock.recv(4096) == b"READY=1\nSTATUS=a b"


def test_a_long_status_is_cut(receiver):
    sock, path = receiver
    Notifier.from_environment({"NOTIFY_SOCKET": path}).status("x" * 100_000)
    data = sock.recv(200_000)
    assert len(data.decode()) == len("STATUS=") + notify.STATUS_MAX
    assert data.endswith("\u2026".encode())


@pytest.mark.parametrize("where", ["missing", "too-long", "not-a-socket", "nul-inside"])
def test_a_send_never_raises(short_dir, where):
    target = {
        "missing": str(short_dir / "nobody-listens"),
        "too-long": "/" + "x" * 200,
        "not-a-socket": str(short_dir),
        "nul-inside": "/tmp/a\0b",
    }[where]
    n = Notifier.from_environment({"NOTIFY_SOCKET": target, "WATCHDOG_USEC": "1000000"})
    assert n.enabled
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.failures == 3 and isinstance(n.last_error, OSError)
    assert n.fileno() is None  # the failed socket was closed


def test_sends_resume_when_the_listener_comes_back(short_dir):
    """As after `systemctl daemon-reexec`: the socket path is bound anew."""
    path = short_dir / "notify"
    n = Notifier.from_environment({"NOTIFY_SOCKET": str(path)})
    assert n.ready() is False
    for word in ("back", "again"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.settimeout(5)
        try:
            assert n.status(word) is True
            assert sock.recv(4096) == f"STATUS={word}".encode()
        finally:
            sock.close()
        os.unlink(path)
        assert n.status("gone") is False


def test_a_full_queue_does_not_block_the_daemon(receiver, monkeypatch):
    """systemd not reading: a send gives up after SEND_TIMEOUT instead of hanging."""
    monkeypatch.setattr(notify, "SEND_TIMEOUT", 0.05)
    _sock, path = receiver  # never read from
    n = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    for _ in range(100_000):
        start = time.monotonic()
        if not n.watchdog():
            break
    else:
        pytest.fail("the receiver's queue never filled")
    assert time.monotonic() - start < 2
    assert isinstance(n.last_error, OSError) and n.failures == 1


def test_the_socket_is_never_inherited(receiver):
    sock, path = receiver
    n = Notifier.from_environment({"NOTIFY_SOCKET": path})
    n.ready()
    sock.recv(4096)
    fd = n.fileno()
    assert fd is not None and os.get_inheritable(fd) is False
    ino = os.fstat(fd).st_ino
    probe = ("import os, sys\n"
             "try:\n    same = os.fstat(int(sys.argv[1])).st_ino == int(sys.argv[2])\n"
             "except OSError:\n    same = False\n"
             "print(same)")
    # close_fds=False: only close-on-exec keeps the fd from the child
    child = subprocess.run([sys.executable, "-c", probe, str(fd), str(ino)], close_fds=False,
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "False"
    n.close()
    assert n.fileno() is None


# --- capabilities ---------------------------------------------------------------------------

ALL = "000001ffffffffff"  # CAP_CHOWN (0) .. CAP_CHECKPOINT_RESTORE (40): root on Linux >= 5.9


def test_full_root_set():
    names = caps.parse_capabilities(ALL)
    assert len(names) == 41 and names == set(caps.CAPABILITY_NAMES.values())
    assert {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_CHECKPOINT_RESTORE",
            "CAP_NET_ADMIN", "CAP_SYS_ADMIN"} <= names
    assert caps.missing_features(names) == []


def test_capability_numbers_match_linux_capability_h():
    expected = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_KILL": 5,
                "CAP_NET_ADMIN": 12, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
                "CAP_SYS_RESOURCE": 24, "CAP_SETFCAP": 31, "CAP_AUDIT_READ": 37,
                "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40}
    for name, number in expected.items():
        assert caps.CAPABILITY_NUMBERS[name] == number
    assert sorted(caps.CAPABILITY_NAMES) == list(range(41))
    header = Path("/usr/include/linux/capability.h")
    if header.exists():  # the kernel headers, when installed, agree with the table
        import re
        defined = dict(re.findall(r"#define\s+(CAP_[A-Z_]+)\s+(\d+)\s*$", header.read_text(), re.M))
        for name, number in defined.items():
            assert caps.CAPABILITY_NUMBERS.get(name) == int(number), name


def test_empty_set_degrades_everything_in_a_fixed_order():
    assert caps.parse_capabilities("0000000000000000") == set()
    sentences = caps.missing_features(set())
    assert len(sentences) == 4
    for sentence, cap in zip(sentences, ("CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
                                         "CAP_CHECKPOINT_RESTORE", "CAP_NET_ADMIN")):
        assert cap in sentence and "\n" not in sentence
    assert "map_files" in sentences[2] and "(deleted)" in sentences[2]
    assert "proc connector" in sentences[3]


def test_a_set_without_cap_sys_ptrace():
    hex_text = f"{0x1ffffffffff & ~(1 << 19):016x}"
    assert hex_text == "000001fffff7ffff"
    names = caps.parse_capabilities(hex_text)
    assert "CAP_SYS_PTRACE" not in names and len(names) == 40
    missing = caps.missing_features(names)
    assert len(missing) == 1 and "CAP_SYS_PTRACE" in missing[0]


def test_either_capability_of_a_pair_suffices():
    assert caps.missing_features({"CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_SYS_ADMIN",
                                  "CAP_NET_ADMIN"}) == []
    assert caps.missing_features({"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH",
                                  "CAP_CHECKPOINT_RESTORE", "CAP_NET_ADMIN"}) == []
    missing = caps.missing_features({"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN"})
    assert len(missing) == 1 and "CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN)" in missing[0]


def test_this_containers_set_and_odd_inputs():
    # Docker's default root: everything but CAP_SYS_RESOURCE (bit 24)
    assert caps.parse_capabilities("000001fffeffffff") == set(caps.CAPABILITY_NAMES.values()) - {"CAP_SYS_RESOURCE"}
    assert caps.parse_capabilities(" 0000000000080000\n") == {"CAP_SYS_PTRACE"}
    assert caps.parse_capabilities("0000020000000000") == {"CAP_41"}  # newer than this table
    for bad in ("", "xyz", "0x10", "-1", "1 2"):
        with pytest.raises(ValueError):
            caps.parse_capabilities(bad)


def mask_of(names: set[str]) -> str:
    """The mask /proc would print for `names` (CAP_41 stands for bit 41)."""
    numbers = (caps.CAPABILITY_NUMBERS[name] if name in caps.CAPABILITY_NUMBERS
               else int(name.removeprefix("CAP_")) for name in names)
    return f"{sum(1 << number for number in numbers):016x}"


def test_parse_loses_no_bit():
    for text in (ALL, "0000000000000000", "000001fffff7ffff", "0000010000081004", "0000020000000001"):
        assert mask_of(caps.parse_capabilities(text)) == text


def test_effective_capabilities_reads_proc_self_status():
    fields = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("Cap"))
    effective = caps.effective_capabilities()
    assert effective == caps.parse_capabilities(fields["CapEff"])
    assert effective <= caps.read_capabilities("CapPrm")
    assert caps.read_capabilities("CapBnd") == caps.parse_capabilities(fields["CapBnd"])


def test_read_capabilities_from_a_given_file(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000010000081004\n")
    assert caps.read_capabilities("CapEff", str(status)) == {
        "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_CHECKPOINT_RESTORE"}
    assert caps.read_capabilities("CapInh", str(status)) == set()
    with pytest.raises(ValueError):
        caps.read_capabilities("CapAmb", str(status))
    with pytest.raises(OSError):
        caps.read_capabilities("CapEff", str(tmp_path / "missing"))


def test_initial_user_namespace(tmp_path):
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("         0          0 4294967295\n")
    assert caps.in_initial_user_namespace(str(uid_map)) is True
    uid_map.write_text("         0     100000      65536\n")  # a container, or PrivateUsers=
    assert caps.in_initial_user_namespace(str(uid_map)) is False
    assert caps.in_initial_user_namespace(str(tmp_path / "missing")) is True
    assert isinstance(caps.in_initial_user_namespace(), bool)
