"""Exit status and lifecycle events of processes that are not our children.

A non-parent cannot wait() for a process, so the cause of death has to come
from the kernel's proc connector (NETLINK_CONNECTOR, CN_IDX_PROC), which
multicasts fork/exec/exit events carrying the raw wait status.  When the
connector is unavailable, a pidfd still tells *that* a process exited, but
not how.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

__all__ = [
    "ConnectorUnavailable",
    "ExitReport",
    "ExitStatus",
    "PendingExits",
    "PidWatch",
    "ProcConnector",
    "ProcEvent",
    "ProcessExec",
    "ProcessExit",
    "ProcessFork",
    "decode_wait_status",
    "exit_filter",
    "parse_proc_events",
]

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_NONE = 0x00000000
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

# Layouts from linux/netlink.h, linux/connector.h and linux/cn_proc.h.  None
# of them has internal padding (proc_event's u64 timestamp already sits at
# offset 8), so "=" with explicit sizes matches the native layout exactly.
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_PROC_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_EXEC = struct.Struct("=ii")  # process_pid, process_tgid
# process_pid, process_tgid, exit_code, exit_signal.  Newer kernels append
# parent_pid/parent_tgid; we need neither, so requiring only these fields
# also accepts older kernels' shorter event.
_EXIT = struct.Struct("=iiII")
_OP = struct.Struct("=I")

# One connector datagram is 16 + 20 + 40 bytes; this leaves ample headroom.
_RECV_SIZE = 8192

# The socket's receive buffer, asked for (the kernel doubles it).  Each queued datagram costs
# ~830 bytes of it (the skb's truesize, measured on 6.18), so the default 208 KiB holds ~250
# events and a mass exit of 2,000 targets overran it (ENOBUFS: statuses lost).  8 MiB hold
# ~10,000; the memory is used only while the daemon lags behind.
RECEIVE_BUFFER = 4 << 20
_SO_RCVBUFFORCE = 33  # beyond net.core.rmem_max; needs CAP_NET_ADMIN

# At most this many datagrams per read(): about a full buffer, so a fork flood that refills
# the queue as fast as it is read cannot keep the caller from its other fds.
_MAX_DATAGRAMS = 12_000


@dataclass(frozen=True, slots=True)
class ProcessExit:
    """A task exited.

    The kernel reports this for every thread; the process itself is gone
    when the event with ``pid == tgid`` arrives (callers filter on that).
    ``wait_status`` is the raw wait status (e.g. 139 = SIGSEGV + core).
    """

    pid: int
    tgid: int
    wait_status: int


@dataclass(frozen=True, slots=True)
class ProcessFork:
    """A task was created; ``child_pid != child_tgid`` means a new thread."""

    parent_tgid: int
    child_pid: int
    child_tgid: int


@dataclass(frozen=True, slots=True)
class ProcessExec:
    """A task called execve(); its mappings were replaced."""

    pid: int
    tgid: int


ProcEvent = ProcessExit | ProcessFork | ProcessExec


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def decode_wait_status(status: int) -> tuple[int | None, str | None, bool]:
    """Split a raw wait status into (exit_code, signal_name, core_dumped)."""
    # Only the low 16 bits are defined; masking also keeps arbitrary input
    # from overflowing the C int behind os.WIFEXITED and friends.
    status &= 0xFFFF
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None, False
    if os.WIFSIGNALED(status):
        return None, _signal_name(os.WTERMSIG(status)), bool(status & 0x80)
    # Stopped/continued statuses never describe an exit.
    return None, None, False


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended, as far as ``source`` could tell.

    ``source`` is "proc_connector" (full status) or "pidfd", where the
    kernel reveals nothing to a non-parent: ``ExitStatus(None, None, None,
    "pidfd")``.
    """

    exit_code: int | None
    signal: str | None
    core_dumped: bool | None
    source: str

    @classmethod
    def from_wait_status(cls, status: int, source: str = "proc_connector") -> ExitStatus:
        exit_code, signal_name, core_dumped = decode_wait_status(status)
        return cls(exit_code, signal_name, core_dumped, source)

    @classmethod
    def unknown(cls, source: str) -> ExitStatus:
        return cls(None, None, None, source)


@dataclass(frozen=True, slots=True)
class ExitReport:
    """A target's exit, ready to be told."""

    pid: int
    status: ExitStatus


class PendingExits:
    """Exits seen on a pidfd, each waiting for its status from the proc connector until a
    deadline.  Nothing here waits or reads a clock: the caller tells what it saw, with the
    time, and takes what is done.

    The kernel wakes the pidfd (exit_notify) just before it sends the connector's exit event,
    so a status normally trails by microseconds; under a mass exit it trails the connector's
    queue.  A status that has not come by the deadline is reported as source "lost" (without
    a connector, "pidfd": the kernel reveals nothing else to a non-parent).  An overrun of the
    connector's queue (ENOBUFS: the kernel dropped events) is the "degraded" notice, once,
    and "recovered" follows the first status that arrives again once every exit pending at
    the overrun is settled.
    """

    def __init__(self, grace: float, connected: bool) -> None:
        self.grace = grace
        self.connected = connected
        self._deadline: dict[int, float] = {}  # pid -> when to stop waiting (insertion order)
        self._status: dict[int, int] = {}  # raw wait statuses already in, by pid
        self._overrun_at: float | None = None  # while degraded: the last overrun
        self._notices: list[str] = []

    def exited(self, pid: int, now: float) -> None:
        """The pid's pidfd became readable."""
        self._deadline.setdefault(pid, now + self.grace if self.connected else now)

    def status(self, pid: int, wait_status: int) -> None:
        """The connector reported the exit of `pid` (a target's; the caller filters)."""
        self._status[pid] = wait_status

    def overran(self, now: float) -> None:
        if self._overrun_at is None:
            self._notices.append("degraded")
        self._overrun_at = now

    def next_deadline(self) -> float | None:
        """When done() next has something: a time already past (0.0) if an exit is ready to
        be told now, else the first deadline; None when nothing is pending."""
        if any(pid in self._status for pid in self._deadline):
            return 0.0
        return min(self._deadline.values(), default=None)

    def pending(self) -> bool:
        return bool(self._deadline)

    def done(self, now: float, limit: int | None = None) -> list[ExitReport]:
        """The exits settled now, by their status or by their deadline, in the order they
        were seen; at most `limit` of them (the rest stay ready for the next call)."""
        reports: list[ExitReport] = []
        for pid, deadline in list(self._deadline.items()):
            if limit is not None and len(reports) >= limit:
                break
            if pid in self._status:
                status = ExitStatus.from_wait_status(self._status.pop(pid))
            elif now >= deadline or not self.connected:
                status = ExitStatus.unknown("lost" if self.connected else "pidfd")
            else:
                continue
            del self._deadline[pid]
            reports.append(ExitReport(pid, status))
        if (self._overrun_at is not None
                and any(r.status.source == "proc_connector" for r in reports)
                and all(d > self._overrun_at + self.grace for d in self._deadline.values())):
            self._overrun_at = None
            self._notices.append("recovered")
        return reports

    def notices(self) -> list[str]:
        """"degraded" / "recovered" transitions since the last call, in order."""
        notices, self._notices = self._notices, []
        return notices


def _parse_event(payload: bytes) -> ProcEvent | None:
    if len(payload) < _PROC_EVENT.size:
        return None
    what = _PROC_EVENT.unpack_from(payload)[0]
    body = payload[_PROC_EVENT.size :]
    if what == PROC_EVENT_FORK and len(body) >= _FORK.size:
        _, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(body)
        return ProcessFork(parent_tgid, child_pid, child_tgid)
    if what == PROC_EVENT_EXEC and len(body) >= _EXEC.size:
        return ProcessExec(*_EXEC.unpack_from(body))
    if what == PROC_EVENT_EXIT and len(body) >= _EXIT.size:
        # exit_signal is what the parent gets (usually SIGCHLD), not the
        # cause of death; the cause is in the wait status.
        pid, tgid, wait_status, _exit_signal = _EXIT.unpack_from(body)
        return ProcessExit(pid, tgid, wait_status)
    # PROC_EVENT_NONE (the ack to our LISTEN), uid/gid/sid/comm/... and
    # truncated bodies carry nothing we use.
    return None


def parse_proc_events(data: bytes) -> list[ProcEvent]:
    """Parse the netlink messages of one proc connector datagram.

    Never raises: truncated or foreign messages are skipped, so bad input
    only yields fewer events.
    """
    events: list[ProcEvent] = []
    offset = 0
    while len(data) - offset >= _NLMSGHDR.size:
        nl_len, nl_type = _NLMSGHDR.unpack_from(data, offset)[:2]
        if nl_len < _NLMSGHDR.size or nl_len > len(data) - offset:
            break  # cannot find the next message reliably
        message = data[offset + _NLMSGHDR.size : offset + nl_len]
        offset += (nl_len + 3) & ~3  # NLMSG_ALIGN
        if nl_type != NLMSG_DONE or len(message) < _CN_MSG.size:
            continue  # the connector sends every event as NLMSG_DONE
        idx, val, _seq, _ack, cn_len, _flags = _CN_MSG.unpack_from(message)
        if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
            continue
        event = _parse_event(message[_CN_MSG.size : _CN_MSG.size + cn_len])
        if event is not None:
            events.append(event)
    return events


def _control_message(op: int, port_id: int) -> bytes:
    payload = _OP.pack(op)
    cn_msg = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0)
    size = _NLMSGHDR.size + len(cn_msg) + len(payload)
    return _NLMSGHDR.pack(size, NLMSG_DONE, 0, 0, port_id) + cn_msg + payload


# Classic BPF (linux/filter.h): the kernel runs it on every event before queueing it for us.
_BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = big-endian u32 at offset k
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_BPF_TAX = 0x07  # BPF_MISC | BPF_TAX: X = A
_BPF_JEQ_X = 0x1D  # BPF_JMP | BPF_JEQ | BPF_X: compare A with X
_SO_ATTACH_FILTER = 26
_BPF_MAXINSNS = 4096
_SOCK_FILTER = struct.Struct("=HBBI")  # code, jt, jf, k
_WHAT_OFFSET = _NLMSGHDR.size + _CN_MSG.size  # proc_event.what
_PID_OFFSET = _WHAT_OFFSET + _PROC_EVENT.size  # exit: process_pid
_ACCEPT, _DROP = 0xFFFFFFFF, 0


def _as_loaded(value: int) -> int:
    """BPF loads are big-endian; the connector's fields are in host order."""
    return int.from_bytes(value.to_bytes(4, sys.byteorder), "big")


def exit_filter(pids: Iterable[int], births: bool = False) -> list[tuple[int, int, int, int]]:
    """A BPF program passing only the exits of `pids` (every process's exit if there are too
    many), and, with `births`, every process's fork and exec (to find new processes to
    watch); a thread's fork or exit never passes.

    On a busy host the connector reports every fork, exec and exit of every process and
    thread; reading them all in Python costs a core's tenth at a thousand execs a second.
    Filtered in the kernel, the daemon wakes only for what it may use.
    """
    pids = set(pids)
    program = [(_BPF_LD_W_ABS, 0, 0, _WHAT_OFFSET)]
    if births:
        program += [
            (_BPF_JEQ_K, 0, 6, _as_loaded(PROC_EVENT_FORK)),
            # fork: child_pid (offset 8) == child_tgid (offset 12), else a thread's
            (_BPF_LD_W_ABS, 0, 0, _PID_OFFSET + 12), (_BPF_TAX, 0, 0, 0),
            (_BPF_LD_W_ABS, 0, 0, _PID_OFFSET + 8),
            (_BPF_JEQ_X, 0, 1, 0),
            (_BPF_RET_K, 0, 0, _ACCEPT),
            (_BPF_RET_K, 0, 0, _DROP),
            (_BPF_JEQ_K, 0, 1, _as_loaded(PROC_EVENT_EXEC)),
            (_BPF_RET_K, 0, 0, _ACCEPT),
        ]
    program += [
        (_BPF_JEQ_K, 1, 0, _as_loaded(PROC_EVENT_EXIT)),
        (_BPF_RET_K, 0, 0, _DROP),
    ]
    if len(program) + 2 * len(pids) + 2 > _BPF_MAXINSNS:
        # exit: process_pid (offset 0) == process_tgid (offset 4)
        return program + [(_BPF_LD_W_ABS, 0, 0, _PID_OFFSET + 4), (_BPF_TAX, 0, 0, 0),
                          (_BPF_LD_W_ABS, 0, 0, _PID_OFFSET), (_BPF_JEQ_X, 0, 1, 0),
                          (_BPF_RET_K, 0, 0, _ACCEPT), (_BPF_RET_K, 0, 0, _DROP)]
    program.append((_BPF_LD_W_ABS, 0, 0, _PID_OFFSET))
    for pid in sorted(pids):  # jumps of 0 or 1 only: the u8 jump offsets never overflow
        program += [(_BPF_JEQ_K, 0, 1, _as_loaded(pid)), (_BPF_RET_K, 0, 0, _ACCEPT)]
    return program + [(_BPF_RET_K, 0, 0, _DROP)]


class ConnectorUnavailable(Exception):
    """The proc connector cannot be used; ``reason`` says why, for humans."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EPERM:
        return "needs CAP_NET_ADMIN"
    if exc.errno in (errno.EPROTONOSUPPORT, errno.ENOENT):
        return "kernel has no proc connector (CONFIG_PROC_EVENTS)"
    if exc.errno == errno.ECONNREFUSED:
        # The connector's kernel socket exists only in the initial netns.
        return "not in the initial network namespace"
    return exc.strerror or str(exc)


def _size_receive_buffer(sock: socket.socket) -> None:
    """Room for a mass exit (see RECEIVE_BUFFER): forced past net.core.rmem_max when we may,
    else as much as rmem_max allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class _Closing:
    """`with` support for the fd holders below: leave the block, close the fd."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ProcConnector(_Closing):
    """A non-blocking subscription to the kernel's process events.

    Needs CAP_NET_ADMIN and only works from the initial network (and pid /
    user) namespace; elsewhere the kernel refuses or silently ignores the
    subscription.

    If the socket buffer fills, the kernel drops events and recv() fails
    with ENOBUFS.  ``read()`` then sets ``overrun`` to True instead of
    raising; exits may have been missed, so the caller should re-check the
    processes it watches and reset ``overrun`` to False.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.overrun = False
        self._program = b""  # the filter attached last

    @classmethod
    def open(cls) -> Self:
        """Subscribe to process events, or raise ConnectorUnavailable."""
        try:
            # Python sockets are already close-on-exec (non-inheritable).
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise ConnectorUnavailable(_reason(exc)) from exc
        try:
            sock.setblocking(False)
            _size_receive_buffer(sock)
            # Port id 0 lets the kernel pick a unique one, so several
            # instances can coexist in one process; the groups bitmask
            # 1 << (CN_IDX_PROC - 1) joins the proc events multicast group.
            sock.bind((0, 1 << (CN_IDX_PROC - 1)))
            port_id = sock.getsockname()[0]
            sock.sendto(_control_message(PROC_CN_MCAST_LISTEN, port_id), (0, 0))
        except OSError as exc:
            sock.close()
            raise ConnectorUnavailable(_reason(exc)) from exc
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def follow(self, pids: Iterable[int], births: bool = False) -> None:
        """From now on, receive only the exits of `pids`, and forks and execs with `births`
        (see exit_filter)."""
        program = b"".join(_SOCK_FILTER.pack(*insn) for insn in exit_filter(pids, births))
        if program == self._program:
            return  # (with thousands of targets every exit passes: attaching more changes nothing)
        buffer = ctypes.create_string_buffer(program, len(program))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
        fprog = struct.pack("HL", len(program) // _SOCK_FILTER.size, ctypes.addressof(buffer))
        self._sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
        self._program = program

    def read(self) -> list[ProcEvent]:
        """Drain the pending datagrams (at most about a full buffer) and return their
        events."""
        events: list[ProcEvent] = []
        for _ in range(_MAX_DATAGRAMS):
            try:
                data, (sender, _groups) = self._sock.recvfrom(_RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overrun = True
                continue
            # Any local process may unicast to our port id; only the kernel
            # (port 0) is trusted to report deaths.
            if sender == 0:
                events.extend(parse_proc_events(data))
        return events

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        try:
            # The kernel keeps emitting events while its listener count is
            # non-zero, and a closed socket does not decrement it.
            port_id = self._sock.getsockname()[0]
            self._sock.sendto(_control_message(PROC_CN_MCAST_IGNORE, port_id), (0, 0))
        except OSError:
            pass  # best effort: closing must not fail
        self._sock.close()


class PidWatch(_Closing):
    """A pidfd that becomes readable (POLLIN) when the process exits.

    The fallback when the proc connector is unavailable: it reveals that the
    process died, never how (``ExitStatus(None, None, None, "pidfd")``).
    Raises ProcessLookupError if the process is already gone.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # pidfds are always close-on-exec.
        self._fd = os.pidfd_open(pid)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
