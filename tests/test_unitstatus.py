"""systemd's word on a --unit target's exit (inodewatch.unitstatus): the text of `systemctl
show`, parsed; the query's argument vector."""

from __future__ import annotations

from inodewatch.exits import ExitStatus
from inodewatch.unitstatus import parse_show, query_argv


def show(pid: str, code: str, status: str) -> bytes:
    return f"ExecMainPID={pid}\nExecMainCode={code}\nExecMainStatus={status}\n".encode()


def test_each_kind_of_end():
    assert parse_show(show("7", "1", "3"), 7) == ExitStatus(3, None, False, "systemd")
    assert parse_show(show("7", "2", "11"), 7) == ExitStatus(None, "SIGSEGV", False, "systemd")
    assert parse_show(show("7", "3", "7"), 7) == ExitStatus(None, "SIGBUS", True, "systemd")
    assert parse_show(show("7", "2", "99"), 7) == ExitStatus(None, "SIG99", False, "systemd")


def test_a_record_of_another_process_or_of_no_exit_is_no_answer():
    """systemd has not reaped it yet (the record is its predecessor's), the process still
    runs (code 0), or the text is not systemctl's."""
    assert parse_show(show("6", "2", "11"), 7) is None
    assert parse_show(show("7", "0", "0"), 7) is None
    assert parse_show(show("7", "1", "-1"), 7) is None
    assert parse_show(show("7", "1", "256"), 7) is None
    assert parse_show(b"", 7) is None
    assert parse_show(b"ExecMainPID=7\nExecMainCode=x\nExecMainStatus=1\n", 7) is None
    assert parse_show(b"\xff\xfe=\x00\nExecMainPID=7\n", 7) is None


def test_property_order_and_extra_lines_do_not_matter():
    text = b"Foo=bar\nExecMainStatus=15\nExecMainCode=2\nExecMainPID=7\n"
    assert parse_show(text, 7) == ExitStatus(None, "SIGTERM", False, "systemd")


def test_the_unit_name_is_an_argument_never_an_option():
    argv = query_argv(b"--now;rm -rf /.service")
    assert argv[:2] == [b"systemctl", b"show"] and argv[-2:] == [b"--", b"--now;rm -rf /.service"]
