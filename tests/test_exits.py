"""Tests for inodewatch.exits: wait statuses, proc connector parsing, live events."""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inodewatch import exits
from inodewatch.exits import (
    ConnectorUnavailable,
    ExitStatus,
    PidWatch,
    ProcConnector,
    ProcessExec,
    ProcEvent,
    ProcessExit,
    ProcessFork,
    decode_wait_status,
    parse_proc_events,
)

# Datagrams received on this project's x86_64 test machine (kernel 6.18):
# the fork, exec and exit of a python3 child that killed itself with SIGSEGV,
# core dumps disabled.  The exit event carries exit_code=11 (raw wait
# status), exit_signal=17 (SIGCHLD, to the parent) and the parent pid/tgid.
CAPTURED_FORK = bytes.fromhex(
    "4c000000030000000100000000000000010000000100000001000000000000002800"
    "000001000000010000005b992fab2f000000e20f0000e20f00000b1000000b100000"
    "0000000000000000"
)
CAPTURED_EXEC = bytes.fromhex(
    "4c000000030000000000000000000000010000000100000000000000000000002800"
    "000002000000000000004e5b67ab2f0000000b1000000b1000000000000000000000"
    "0000000000000000"
)
CAPTURED_EXIT = bytes.fromhex(
    "4c000000030000000300000000000000010000000100000003000000000000002800"
    "000000000080010000005f705cb02f0000000b1000000b1000000b00000011000000"
    "e20f0000e20f0000"
)
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="captured on a little-endian machine"
)

PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_UID = 0x4
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3


def message(
    what: int,
    body: bytes,
    *,
    nl_type: int = NLMSG_DONE,
    idx: int = 1,
    val: int = 1,
    trailing: bytes = b"",
) -> bytes:
    """One netlink message as the kernel builds it, padded to 4 bytes.

    Written independently of the module's structs so a layout mistake there
    is not mirrored here.  The union is padded to its 24-byte kernel size.
    """
    event = struct.pack("=IIQ", what, 0, 123456789) + body.ljust(24, b"\0")
    cn = struct.pack("=IIIIHH", idx, val, 0, 0, len(event), 0) + event + trailing
    nl_len = 16 + len(cn)
    raw = struct.pack("=IHHII", nl_len, nl_type, 0, 0, 0) + cn
    return raw + b"\0" * (-nl_len % 4)


def fork(parent: int, child_pid: int, child_tgid: int) -> bytes:
    return message(PROC_EVENT_FORK, struct.pack("=iiii", parent, parent, child_pid, child_tgid))


def exit_(pid: int, tgid: int, status: int) -> bytes:
    body = struct.pack("=iiIIii", pid, tgid, status, signal.SIGCHLD, 1, 1)
    return message(PROC_EVENT_EXIT, body)


# --- decode_wait_status / ExitStatus -------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, (0, None, False)),
        (3 << 8, (3, None, False)),
        (11, (None, "SIGSEGV", False)),
        (139, (None, "SIGSEGV", True)),
        (9, (None, "SIGKILL", False)),
        (signal.SIGBUS, (None, "SIGBUS", False)),
        (signal.SIGBUS | 0x80, (None, "SIGBUS", True)),
    ],
)
def test_decode_wait_status(status: int, expected: tuple[int | None, str | None, bool]) -> None:
    assert decode_wait_status(status) == expected


def test_decode_unknown_signal_number() -> None:
    # 0x7e is no real signal on Linux (signals end at 64).
    assert decode_wait_status(0x7E) == (None, "SIG126", False)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_decode_wait_status_never_raises(status: int) -> None:
    code, name, core = decode_wait_status(status)
    assert code is None or 0 <= code <= 255
    assert name is None or name.startswith("SIG")
    assert isinstance(core, bool)


def test_exit_status_from_wait_status() -> None:
    assert ExitStatus.from_wait_status(139) == ExitStatus(None, "SIGSEGV", True, "proc_connector")
    assert ExitStatus.from_wait_status(1 << 8, source="test") == ExitStatus(1, None, False, "test")


# --- parse_proc_events ---------------------------------------------------


@little_endian_only
def test_captured_datagrams() -> None:
    assert parse_proc_events(CAPTURED_FORK) == [ProcessFork(4066, 4107, 4107)]
    assert parse_proc_events(CAPTURED_EXEC) == [ProcessExec(4107, 4107)]
    assert parse_proc_events(CAPTURED_EXIT) == [ProcessExit(4107, 4107, 11)]


def test_fork_and_exit() -> None:
    data = fork(100, 201, 200) + exit_(201, 200, 0x8B)
    assert parse_proc_events(data) == [ProcessFork(100, 201, 200), ProcessExit(201, 200, 0x8B)]


def test_several_messages_skip_what_is_not_ours() -> None:
    data = b"".join(
        [
            message(0, struct.pack("=I", 0)),  # PROC_EVENT_NONE: the LISTEN ack
            message(PROC_EVENT_EXEC, struct.pack("=ii", 7, 7)),
            message(PROC_EVENT_UID, struct.pack("=iiII", 7, 7, 0, 0)),
            message(PROC_EVENT_EXEC, struct.pack("=ii", 8, 8), idx=2),  # other connector
            message(PROC_EVENT_EXEC, struct.pack("=ii", 9, 9), nl_type=2),  # NLMSG_ERROR
            # nlmsg_len not a multiple of 4: the next message starts aligned.
            message(PROC_EVENT_EXEC, struct.pack("=ii", 10, 10), trailing=b"x"),
            exit_(11, 11, 9),
        ]
    )
    assert parse_proc_events(data) == [
        ProcessExec(7, 7),
        ProcessExec(10, 10),
        ProcessExit(11, 11, 9),
    ]


def test_short_exit_event_of_older_kernels() -> None:
    # Before parent_pid/parent_tgid were added the exit body was 16 bytes.
    event = struct.pack("=IIQ", PROC_EVENT_EXIT, 0, 0) + struct.pack("=iiII", 5, 5, 11, 17)
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(event), 0) + event
    data = struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn
    assert parse_proc_events(data) == [ProcessExit(5, 5, 11)]


def test_truncated_input_yields_a_prefix() -> None:
    data = fork(1, 2, 2) + exit_(2, 2, 11)
    full = parse_proc_events(data)
    for cut in range(len(data)):
        got = parse_proc_events(data[:cut])
        assert got == full[: len(got)]
    assert parse_proc_events(data[: len(data) // 2]) == full[:1]


def test_cn_len_bounds_the_event() -> None:
    # cn_msg.len says the event stops before the exit fields.
    raw = bytearray(exit_(2, 2, 11))
    struct.pack_into("=H", raw, 16 + 16, 16)
    assert parse_proc_events(bytes(raw)) == []


def test_zero_length_message_stops_the_walk() -> None:
    assert parse_proc_events(struct.pack("=IHHII", 0, NLMSG_DONE, 0, 0, 0) + fork(1, 2, 2)) == []


@given(st.binary(max_size=512))
def test_garbage_never_raises(data: bytes) -> None:
    events = parse_proc_events(data)
    assert all(isinstance(e, ProcessExit | ProcessFork | ProcessExec) for e in events)


@given(
    st.sampled_from([0, PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_EXIT, 0xFFFFFFFF]),
    st.binary(max_size=40),
    st.integers(min_value=0, max_value=0xFFFF),
    st.binary(max_size=64),
)
def test_plausible_headers_never_raise(what: int, body: bytes, cn_len: int, tail: bytes) -> None:
    event = struct.pack("=IIQ", what, 0, 0) + body
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, cn_len, 0) + event
    data = struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn + tail
    assert len(parse_proc_events(data)) <= 1 + len(tail) // 16


# --- ProcConnector without the kernel ------------------------------------


class FakeSocket:
    """Replays recvfrom() results; exceptions are raised."""

    def __init__(self, results: list[tuple[bytes, tuple[int, int]] | OSError]) -> None:
        self.results = results

    def recvfrom(self, size: int) -> tuple[bytes, tuple[int, int]]:
        if not self.results:
            raise BlockingIOError(errno.EAGAIN, "again")
        result = self.results.pop(0)
        if isinstance(result, OSError):
            raise result
        return result


def test_read_flags_overrun_and_drops_spoofed_datagrams() -> None:
    sock = FakeSocket(
        [
            (exit_(1, 1, 11), (0, 1)),
            OSError(errno.ENOBUFS, "No buffer space available"),
            (exit_(2, 2, 9), (4242, 0)),  # unicast from a local process
            (exit_(3, 3, 0), (0, 1)),
        ]
    )
    conn = ProcConnector(sock)  # type: ignore[arg-type]
    assert conn.read() == [ProcessExit(1, 1, 11), ProcessExit(3, 3, 0)]
    assert conn.overrun
    assert conn.read() == []


def test_read_propagates_other_errors() -> None:
    conn = ProcConnector(FakeSocket([OSError(errno.EBADF, "bad fd")]))  # type: ignore[arg-type]
    with pytest.raises(OSError):
        conn.read()


@pytest.mark.parametrize(
    ("err", "reason"),
    [
        (errno.EPERM, "needs CAP_NET_ADMIN"),
        (errno.EPROTONOSUPPORT, "kernel has no proc connector (CONFIG_PROC_EVENTS)"),
        (errno.ENOENT, "kernel has no proc connector (CONFIG_PROC_EVENTS)"),
        (errno.EMFILE, os.strerror(errno.EMFILE)),
    ],
)
def test_open_failure_reasons(monkeypatch: pytest.MonkeyPatch, err: int, reason: str) -> None:
    def refuse(*args: object) -> socket.socket:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(exits.socket, "socket", refuse)
    with pytest.raises(ConnectorUnavailable) as info:
        ProcConnector.open()
    assert info.value.reason == reason


# --- live kernel ---------------------------------------------------------


@pytest.fixture
def connector() -> Iterator[ProcConnector]:
    try:
        conn = ProcConnector.open()
    except ConnectorUnavailable as exc:
        pytest.skip(f"proc connector unavailable: {exc.reason}")
    with conn:
        yield conn


def no_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def wait_for_exit(
    conn: ProcConnector, pid: int, seen: list[ProcEvent] | None = None
) -> ProcessExit:
    """Poll the connector until the process (pid == tgid) exit arrives."""
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    deadline = time.monotonic() + 10
    while (left := deadline - time.monotonic()) > 0:
        poller.poll(left * 1000)
        for event in conn.read():
            if seen is not None:
                seen.append(event)
            if isinstance(event, ProcessExit) and event.pid == event.tgid == pid:
                return event
    pytest.fail(f"no exit event for pid {pid} within 10 s (overrun={conn.overrun})")


SEGV_SELF = (
    "import os, signal; signal.signal(signal.SIGSEGV, signal.SIG_DFL); "
    "os.kill(os.getpid(), signal.SIGSEGV)"
)


def test_live_sigsegv(connector: ProcConnector) -> None:
    seen: list[ProcEvent] = []
    child = subprocess.Popen([sys.executable, "-c", SEGV_SELF], preexec_fn=no_core)
    try:
        event = wait_for_exit(connector, child.pid, seen)
    finally:
        child.wait()  # the event fires at exit, before reaping
    assert ExitStatus.from_wait_status(event.wait_status) == ExitStatus(
        None, "SIGSEGV", False, "proc_connector"
    )
    assert event.wait_status == 11
    assert child.returncode == -signal.SIGSEGV
    assert ProcessFork(os.getpid(), child.pid, child.pid) in seen
    assert ProcessExec(child.pid, child.pid) in seen


def test_live_sigkill(connector: ProcConnector) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        child.kill()
        event = wait_for_exit(connector, child.pid)
    finally:
        child.wait()
    assert decode_wait_status(event.wait_status) == (None, "SIGKILL", False)


def test_live_normal_exit(connector: ProcConnector) -> None:
    child = subprocess.Popen(["sh", "-c", "exit 3"])
    try:
        event = wait_for_exit(connector, child.pid)
    finally:
        child.wait()
    assert decode_wait_status(event.wait_status) == (3, None, False)


def test_live_core_dump_bit(connector: ProcConnector, tmp_path: Path) -> None:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern {pattern!r} does not dump into the cwd")

    def allow_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)

    child = subprocess.Popen(["sh", "-c", "kill -SEGV $$"], cwd=tmp_path, preexec_fn=allow_core)
    try:
        event = wait_for_exit(connector, child.pid)
    finally:
        child.wait()
    dumped = any(tmp_path.iterdir())
    assert decode_wait_status(event.wait_status) == (None, "SIGSEGV", dumped)


def test_connector_closes() -> None:
    try:
        conn = ProcConnector.open()
    except ConnectorUnavailable as exc:
        pytest.skip(f"proc connector unavailable: {exc.reason}")
    with conn:
        assert conn.fileno() >= 0
    assert conn.fileno() == -1
    conn.close()  # idempotent


# --- PidWatch ------------------------------------------------------------


def test_pidwatch_readable_after_kill() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        with PidWatch(child.pid) as watch:
            poller = select.poll()
            poller.register(watch, select.POLLIN)
            assert poller.poll(0) == []
            child.kill()
            assert poller.poll(10_000) == [(watch.fileno(), select.POLLIN)]
    finally:
        child.wait()
    assert watch.fileno() == -1


def test_pidwatch_missing_process() -> None:
    # pids are always below pid_max, so this one cannot exist.
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with pytest.raises(ProcessLookupError):
        PidWatch(pid_max)


def test_exit_filter_program_shape() -> None:
    program = exits.exit_filter([300, 200, 200])
    # load `what`, drop all but exits, load the pid, one compare-and-accept per pid, drop
    assert len(program) == 4 + 2 * 2 + 1
    assert all(jt <= 1 and jf <= 1 for _code, jt, jf, _k in program)
    assert program[-1] == (exits._BPF_RET_K, 0, 0, 0)
    too_many = exits.exit_filter(range(1, 5000))
    # every process's exit, no pid check: process_pid == process_tgid, accept, else drop
    assert len(too_many) == 3 + 6 and too_many[-2][3] == 0xFFFFFFFF and too_many[-1][3] == 0
    births = exits.exit_filter([300], births=True)
    assert len(births) == 1 + 9 + 2 + 1 + 2 + 1  # what, fork + exec, exit, pid, 300, drop


THREAD_THEN_EXIT = "import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()"


@pytest.mark.parametrize("pids", [[], list(range(10**6, 10**6 + 3000))], ids=["few", "too many"])
def test_threads_never_pass_and_processes_do(connector: ProcConnector, pids: list[int]) -> None:
    """With births followed: a process's fork, exec and exit pass, its thread's fork and exit
    do not; with too many pids to list, every process's exit passes, still no thread's."""
    connector.follow(pids, births=True)
    connector.read()  # what was queued before the filter
    child = subprocess.Popen([sys.executable, "-S", "-c", THREAD_THEN_EXIT])
    seen: list[ProcEvent] = []
    try:
        if pids:
            wait_for_exit(connector, child.pid, seen)
        else:  # its exit is not followed: its exec is the last event of it that passes
            child.wait()
            deadline = time.monotonic() + 10
            while not any(isinstance(e, ProcessExec) and e.tgid == child.pid for e in seen):
                assert time.monotonic() < deadline, seen
                seen += connector.read()
                time.sleep(0.01)
            time.sleep(0.1)
            seen += connector.read()
    finally:
        child.wait()
    mine = [e for e in seen if child.pid in (getattr(e, "tgid", None), getattr(e, "child_tgid", None))]
    assert ProcessFork(os.getpid(), child.pid, child.pid) in mine
    assert ProcessExec(child.pid, child.pid) in mine
    assert not [e for e in mine if isinstance(e, ProcessFork) and e.child_pid != e.child_tgid]
    assert not [e for e in mine if isinstance(e, ProcessExit) and e.pid != e.tgid]
    assert (ProcessExit(child.pid, child.pid, 0) in mine) == bool(pids)


def test_followed_exits_pass_and_others_do_not(connector: ProcConnector) -> None:
    other = subprocess.Popen(["sleep", "60"])
    followed = subprocess.Popen(["sleep", "60"])
    connector.follow([followed.pid])
    connector.read()  # what was queued before the filter
    other.kill()
    other.wait()
    for _ in range(5):
        subprocess.run(["true"], check=True)  # forks, execs and exits to filter out
    followed.kill()
    seen: list[ProcEvent] = []
    try:
        wait_for_exit(connector, followed.pid, seen)
    finally:
        followed.wait()
    assert seen == [ProcessExit(followed.pid, followed.pid, signal.SIGKILL)]


# --- PendingExits: the pidfd says "gone", the connector says how; nothing waits ------------

def pending(connected: bool = True) -> exits.PendingExits:
    return exits.PendingExits(grace=0.5, connected=connected)


def test_a_status_after_the_pidfd_settles_the_exit() -> None:
    p = pending()
    p.exited(10, now=100.0)
    assert p.done(100.0) == [] and p.next_deadline() == 100.5
    p.status(10, signal.SIGKILL)
    assert p.done(100.01) == [
        exits.ExitReport(10, ExitStatus(None, "SIGKILL", False, "proc_connector"))]
    assert not p.pending() and p.next_deadline() is None and p.notices() == []


def test_a_status_before_the_pidfd_is_kept_for_it() -> None:
    p = pending()
    p.status(10, 0x100)  # exit code 1, read in the same wake, before the pidfd
    assert p.done(100.0) == []  # nothing pending yet: the pidfd has not spoken
    p.exited(10, now=100.0)
    assert p.done(100.0) == [exits.ExitReport(10, ExitStatus(1, None, False, "proc_connector"))]


def test_the_deadline_says_lost_not_pidfd() -> None:
    p = pending()
    p.exited(10, now=100.0)
    p.exited(11, now=100.2)
    assert p.done(100.49) == []
    assert p.done(100.5) == [exits.ExitReport(10, ExitStatus.unknown("lost"))]
    assert p.next_deadline() == pytest.approx(100.7)
    assert p.done(101.0) == [exits.ExitReport(11, ExitStatus.unknown("lost"))]


def test_without_a_connector_the_pidfd_is_all_there_is() -> None:
    p = pending(connected=False)
    p.exited(10, now=100.0)
    assert p.done(100.0) == [exits.ExitReport(10, ExitStatus.unknown("pidfd"))]


def test_a_second_pidfd_wake_keeps_the_first_deadline() -> None:
    p = pending()
    p.exited(10, now=100.0)
    p.exited(10, now=100.4)
    assert p.next_deadline() == 100.5


def test_many_exits_settle_together_in_their_order() -> None:
    p = pending()
    for pid in range(1, 2001):
        p.exited(pid, now=100.0)
    for pid in reversed(range(1, 2001)):
        p.status(pid, signal.SIGKILL)
    reports = p.done(100.001)
    assert [r.pid for r in reports] == list(range(1, 2001))
    assert {r.status.signal for r in reports} == {"SIGKILL"}


def test_an_overrun_is_degraded_once_then_recovered_by_a_status_after_it() -> None:
    p = pending()
    p.exited(10, now=100.0)
    p.overran(now=100.0)
    p.overran(now=100.1)  # the same episode
    assert p.notices() == ["degraded"]
    p.exited(11, now=100.2)
    p.status(11, signal.SIGKILL)
    # 11 came with its status, but 10, pending across the overrun, is still unsettled
    assert [r.pid for r in p.done(100.2)] == [11] and p.notices() == []
    assert p.done(100.5) == [exits.ExitReport(10, ExitStatus.unknown("lost"))]
    assert p.notices() == []  # a lost status is no recovery
    p.exited(12, now=101.0)
    p.status(12, 0)
    assert [r.status.source for r in p.done(101.0)] == ["proc_connector"]
    assert p.notices() == ["recovered"]
    p.overran(now=102.0)
    assert p.notices() == ["degraded"]  # a new episode


def test_the_receive_buffer_holds_a_mass_exit(connector: ProcConnector) -> None:
    # ~830 bytes per queued event: room for thousands of exits, not the default ~250
    sock = socket.socket(fileno=connector.fileno())  # a view of the connector's socket
    try:
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        sock.detach()
    assert granted >= (exits.RECEIVE_BUFFER if os.geteuid() == 0 else 200_000)


def test_read_stops_after_a_full_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exits, "_MAX_DATAGRAMS", 3)
    sock = FakeSocket([(exit_(pid, pid, 0), (0, 1)) for pid in range(1, 6)])
    conn = ProcConnector(sock)  # type: ignore[arg-type]
    assert [e.pid for e in conn.read()] == [1, 2, 3]  # type: ignore[union-attr]
    assert [e.pid for e in conn.read()] == [4, 5]  # type: ignore[union-attr]


def test_done_tells_at_most_a_batch_and_the_rest_is_due_at_once() -> None:
    p = pending()
    for pid in range(1, 6):
        p.exited(pid, now=100.0)
        p.status(pid, 0)
    assert [r.pid for r in p.done(100.0, limit=2)] == [1, 2]
    assert p.next_deadline() == 0.0  # ready now: the caller must not sleep
    assert [r.pid for r in p.done(100.0, limit=2)] == [3, 4]
    assert [r.pid for r in p.done(100.0, limit=2)] == [5]
    assert p.next_deadline() is None
