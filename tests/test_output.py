"""Hostile names in every output: JSON stays valid and lossless, terminals get no control bytes."""

from __future__ import annotations

import io
import json

from inodewatch.eventlog import LogSink, make_logger
from inodewatch.model import FileId, Finding
from inodewatch.render import print_scan_table
from inodewatch.scan import ProcessReport, ScanSummary
from inodewatch.text import escape_control, terminal_text

HOSTILE = [
    b"/opt/a b.so",
    b"/opt/new\nline.so",
    b"/opt/tab\there.so",
    b"/opt/back\\slash.so",
    b"/opt/x (deleted)",
    b"/opt/bad\xff\xfe.so",
    b"/opt/\x1b[31mred\x1b[0m\x1b]0;title\x07.so",
    "/opt/\u202eos.so".encode(),  # right-to-left override
]


def no_control(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


def test_json_lines_are_valid_and_lossless():
    out = io.StringIO()
    log = make_logger(LogSink(stream=out), "json")
    for path in HOSTILE:
        log.warning("mapping.deleted", pid=1, path=path, stale=[{"path": path}])
    lines = out.getvalue().splitlines()
    assert len(lines) == len(HOSTILE)
    for path, line in zip(HOSTILE, lines):
        line.encode("ascii")  # every byte of the log is plain ASCII
        event = json.loads(line)
        assert list(event)[:4] == ["timestamp", "level", "event", "pid"]
        assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == 27
        if "path_bytes" in event:
            assert bytes.fromhex(event["path_bytes"]) == path
        else:
            assert event["path"].encode() == path
        assert event["stale"][0]["path"] == event["path"]


def test_console_rendering_has_no_raw_control_characters():
    out = io.StringIO()
    log = make_logger(LogSink(stream=out), "console")
    for path in HOSTILE:
        log.warning("mapping.deleted", pid=1, path=path)
    rendered = out.getvalue()
    assert rendered.count("\n") == len(HOSTILE)
    assert no_control(rendered)
    assert "\\x1b[31mred" in rendered and "\\xff\\xfe" in rendered and "\\u202e" in rendered


def test_scan_table_has_no_raw_control_characters():
    reports = [ProcessReport(7, b"re\x1bload", [Finding("mapping", "deleted", p, FileId(1, 2))])
               for p in HOSTILE]
    out = io.StringIO()
    print_scan_table(ScanSummary(reports), out)
    assert no_control(out.getvalue())
    # a header and a row per file, a blank line, "To restart:", the process's line and one
    # per file, the summary: no name made a line of its own
    assert out.getvalue().count("\n") == 1 + len(HOSTILE) + 1 + 2 + len(HOSTILE) + 1


def test_escape_control():
    assert escape_control("plain name.so") == "plain name.so"
    assert escape_control("a\nb\tc\x1b\x7f") == "a\\x0ab\\x09c\\x1b\\x7f"
    assert terminal_text(b"\xff") == "\\xff"


def test_identical_content_says_no_restart_is_needed_on_a_terminal():
    from inodewatch.model import Content

    same = Content("identical", "ab" * 20, "ab" * 20, None)
    other = Content("different", "ab" * 20, "cd" * 20, None)
    out = io.StringIO()
    log = make_logger(LogSink(stream=out), "console")
    for content in (same, other):
        log.info("mapping.replaced", pid=1, path=b"/opt/x.so", **content.fields())
    first, second = out.getvalue().splitlines()
    assert first.endswith("pid 1: /opt/x.so was replaced: it runs inode ?, the path now names "
                          "inode ?; identical content, no restart needed")
    assert second.endswith("; content different")
    findings = [Finding("mapping", "replaced", b"/opt/x.so", FileId(1, 2), FileId(1, 3),
                        content=c) for c in (same, other)]
    out = io.StringIO()
    print_scan_table(ScanSummary([ProcessReport(7, b"nginx", findings[:1]),
                                  ProcessReport(8, b"nginx", findings[1:])]), out)
    rows = out.getvalue().splitlines()
    assert rows[1].split() == ["pid", "7", "(nginx)", "/opt/x.so", "replaced", "identical", "-"]
    assert rows[2].split() == ["pid", "8", "(nginx)", "/opt/x.so", "replaced", "different", "-"]
    assert rows[4:] == [
        "To restart:",
        "  pid 8 (nginx), not in a unit: restart it yourself",
        "      /opt/x.so",
        "No restart needed (identical content): pid 7 (nginx) /opt/x.so",
        "scanned 2 processes: 2 diverged, 2 findings (1 of identical content)"]
