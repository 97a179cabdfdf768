"""Unit tests: what an event says of who the target is."""

from __future__ import annotations

from inodewatch.procfs import CMDLINE_LIMIT, parse_cmdline, parse_uid

CAPTURED_STATUS = (b"Name:\treload\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n"
                   b"Pid:\t4242\nPPid:\t1\nUid:\t1001\t0\t0\t0\nGid:\t1001\t1001\t1001\t1001\n")


def test_uid_is_the_real_uid():
    assert parse_uid(CAPTURED_STATUS) == 1001


def test_cmdline_is_capped_and_says_so():
    assert parse_cmdline(b"reload\0--mode\0hold\0") == ([b"reload", b"--mode", b"hold"], False)
    assert parse_cmdline(b"") == ([], False)
    args, truncated = parse_cmdline(b"x" * (2 << 20) + b"\0")
    assert truncated and len(args) == 1 and len(args[0]) == CMDLINE_LIMIT
    # hostile bytes stay bytes: the log turns them into valid text
    assert parse_cmdline(b"\xff\x1b[31m\0") == ([b"\xff\x1b[31m"], False)
    # an nginx worker's /proc/PID/cmdline, its title padded with the old arguments' space
    worker = b"nginx: worker process" + b"\0" * 42
    assert parse_cmdline(worker) == ([b"nginx: worker process"], False)
    assert parse_cmdline(b"\0\0") == ([], False)
