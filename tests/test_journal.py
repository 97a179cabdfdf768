"""The journal's native protocol: priorities, field encoding (hostile names included), and
the sink on a real AF_UNIX datagram socket standing in for journald's."""

from __future__ import annotations

import array
import fcntl
import io
import json
import os
import socket
import struct

import pytest

from inodewatch import journal
from inodewatch.eventlog import make_logger

from test_output import HOSTILE


def parse_entry(data: bytes) -> dict[str, list[bytes]]:
    """journald's side of the protocol (journald-native.c), for checking what we send."""
    fields: dict[str, list[bytes]] = {}
    while data:
        line, sep, rest = data.partition(b"\n")
        assert sep, "every field ends with a newline"
        if b"=" in line:
            name, value = line.split(b"=", 1)
            data = rest
        else:
            name = line
            (size,) = struct.unpack("<Q", rest[:8])
            value, end = rest[8:8 + size], rest[8 + size:9 + size]
            assert end == b"\n" and len(value) == size
            data = rest[9 + size:]
        text = name.decode("ascii")
        assert text and not text.startswith("_") and len(text) <= 64
        assert all(c.isupper() or c.isdigit() or c == "_" for c in text), text
        fields.setdefault(text, []).append(value)
    return fields


def one(fields: dict[str, list[bytes]], name: str) -> bytes:
    assert len(fields[name]) == 1, name
    return fields[name][0]


@pytest.mark.parametrize(("level", "number"), [("critical", 2), ("error", 3), ("warning", 4),
                                               ("info", 6), ("debug", 7), ("odd", 6)])
def test_levels_map_to_syslog_priorities(level, number):
    assert journal.priority(level) == number


def test_message_ids_are_one_per_event_kind_and_stable():
    ids = {name: journal.message_id(name) for name in
           ("mapping.overwritten", "mapping.replaced", "target.exited", "daemon.started")}
    assert len(set(ids.values())) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids.values())
    # a published id never changes: SHA-256("inodewatch:mapping.overwritten")[:128 bits]
    assert ids["mapping.overwritten"] == journal.message_id("mapping.overwritten")


def test_field_names_follow_the_protocols_rules():
    assert journal.field_name("mapped_ino") == "INODEWATCH_MAPPED_INO"
    assert journal.field_name("path_bytes") == "INODEWATCH_PATH_BYTES"
    assert journal.field_name("weird-key.é") == "INODEWATCH_WEIRD_KEY__"
    assert len(journal.field_name("x" * 200)) == 64


def test_a_value_with_a_newline_is_length_prefixed():
    assert journal.encode_field("A", b"plain") == b"A=plain\n"
    assert journal.encode_field("A", b"two\nlines") == b"A\n" + struct.pack("<Q", 9) + b"two\nlines\n"
    assert journal.encode_field("A", b"") == b"A=\n"


def test_stream_is_stdout_only_when_dev_and_inode_match():
    st = os.stat_result((0o10600, 77, 5, 1, 0, 0, 0, 0, 0, 0))  # st_ino 77, st_dev 5
    assert journal.stream_is_stdout({"JOURNAL_STREAM": "5:77"}, st)
    assert not journal.stream_is_stdout({"JOURNAL_STREAM": "5:78"}, st)  # a parent's stream
    assert not journal.stream_is_stdout({"JOURNAL_STREAM": "x:y"}, st)
    assert not journal.stream_is_stdout({}, st)


@pytest.fixture
def journald(tmp_path):
    """A datagram socket where journald's would be, and a sink sending there."""
    address = str(tmp_path / "socket")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(5)
    fallback = io.StringIO()
    sink = journal.JournalSink(address, stream=fallback)
    yield receiver, sink, fallback
    sink.close()
    receiver.close()


def receive(receiver: socket.socket) -> dict[str, list[bytes]]:
    """One entry, from a datagram or from the sealed memfd passed with it."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = receiver.recvmsg(1 << 20, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in ancillary:
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fds.frombytes(payload[:fds.itemsize])
    if fds:
        assert data == b""
        fd = fds[0]
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & (fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) == (
                fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    return parse_entry(data)


def test_an_event_is_one_entry_with_priority_id_and_fields(journald):
    receiver, sink, fallback = journald
    log = make_logger(sink, "journal", {"host": "web1", "boot_id": "b0"})
    log.critical("mapping.overwritten", pid=42, path=b"/opt/so.so", mapped_ino=7,
                 perms="r--p,r-xp", size_before=10, size_after=20, stale=[{"a": 1}], flag=True)
    fields = receive(receiver)
    message = json.loads(one(fields, "MESSAGE"))
    assert message["event"] == "mapping.overwritten" and message["level"] == "critical"
    assert message["host"] == "web1" and message["boot_id"] == "b0"
    assert one(fields, "PRIORITY") == b"2"
    assert one(fields, "MESSAGE_ID") == journal.message_id("mapping.overwritten").encode()
    assert one(fields, "SYSLOG_IDENTIFIER") == b"inodewatch"
    assert one(fields, "INODEWATCH_EVENT") == b"mapping.overwritten"
    assert one(fields, "INODEWATCH_PID") == b"42"
    assert one(fields, "INODEWATCH_PATH") == b"/opt/so.so"
    assert one(fields, "INODEWATCH_MAPPED_INO") == b"7"
    assert one(fields, "INODEWATCH_STALE") == b'[{"a": 1}]'
    assert one(fields, "INODEWATCH_FLAG") == b"true"
    assert one(fields, "INODEWATCH_HOST") == b"web1"
    assert "INODEWATCH_LEVEL" not in fields  # that is PRIORITY
    assert fallback.getvalue() == ""


@pytest.mark.parametrize("path", HOSTILE, ids=repr)
def test_hostile_names_survive_as_fields_and_in_the_message(journald, path):
    receiver, sink, _fallback = journald
    make_logger(sink, "journal").warning("mapping.deleted", pid=1, path=path)
    fields = receive(receiver)
    message = json.loads(one(fields, "MESSAGE"))
    assert b"\n" not in one(fields, "MESSAGE")  # JSON escapes it: -o cat stays one line each
    # the field is the JSON's text exactly (a raw newline included, length-prefixed) ...
    assert one(fields, "INODEWATCH_PATH") == message["path"].encode()
    # ... and a name that is not UTF-8 keeps its exact bytes beside it
    if "path_bytes" in message:
        assert bytes.fromhex(one(fields, "INODEWATCH_PATH_BYTES").decode()) == path
    else:
        assert one(fields, "INODEWATCH_PATH") == path
    assert one(fields, "PRIORITY") == b"4"


def test_an_entry_too_big_for_a_datagram_goes_as_a_sealed_memfd(journald):
    receiver, sink, fallback = journald
    sink.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    big = [{"event": "mapping.deleted", "path": "/x/" + "y" * 200, "n": n} for n in range(2000)]
    make_logger(sink, "journal").warning("target.exited", pid=3, stale=big)
    fields = receive(receiver)
    assert len(one(fields, "MESSAGE")) > 400_000
    assert json.loads(one(fields, "INODEWATCH_STALE")) == big
    assert fallback.getvalue() == ""


def test_a_full_journal_queue_never_blocks_nor_loses_an_event(journald):
    """Anyone can flood journald's socket: a send that would block goes to stdout (the stream
    is ours alone) with the priority as a <N> prefix."""
    receiver, sink, fallback = journald
    log = make_logger(sink, "journal")
    total = 3000
    for n in range(total):
        log.critical("mapping.overwritten", pid=n)
    assert sink.fallbacks > 0  # the receiver read nothing: its queue filled up
    pids = []
    receiver.settimeout(0)
    try:
        while True:
            pids.append(json.loads(one(receive(receiver), "MESSAGE"))["pid"])
    except BlockingIOError:
        pass
    lines = fallback.getvalue().splitlines()
    assert all(line.startswith('<2>{"timestamp"') for line in lines)
    pids += [json.loads(line[3:])["pid"] for line in lines]
    assert sorted(pids) == list(range(total))


def test_no_journald_means_the_prefixed_stream(tmp_path):
    fallback = io.StringIO()
    sink = journal.JournalSink(str(tmp_path / "nothing-here"), stream=fallback)
    make_logger(sink, "journal").warning("watch.degraded", detail="x")
    line = fallback.getvalue()
    assert line.startswith("<4>{") and json.loads(line[3:])["event"] == "watch.degraded"
    sink.close()
