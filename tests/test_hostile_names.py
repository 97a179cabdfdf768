"""Hostile plugin names, end to end: the real demo loads them, the real daemon reports them.

Any user can choose a file name and inodewatch runs as root: every operation must be
detected on every name, every JSON line must stay valid (and the exact bytes recoverable),
and nothing a name holds may reach a terminal raw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TIMEOUT, run_cli, wait_for

pytestmark = pytest.mark.integration

NAMES = {
    "space": b"my plugin.so",
    "newline": b"new\nline.so",
    "tab": b"tab\there.so",
    "backslash": b"back\\slash.so",
    "non-utf8": b"bad\xff\xfe.so",
    "ansi": b"\x1b[31mred\x1b[0m\x1b]0;pwned\x07.so",
    "deleted-suffix": b"plugin (deleted)",
}


def exact_path(event: dict) -> bytes:
    """The path as bytes, from the JSON: path_bytes when the name is not UTF-8."""
    if "path_bytes" in event:
        return bytes.fromhex(event["path_bytes"])
    return event["path"].encode()


def no_raw_control(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_rm_then_cp(start_demo, start_watcher, name):
    demo = start_demo("leak", lib=name)
    watcher = start_watcher(demo.pid)
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    replaced = watcher.log.wait("mapping.replaced", pid=demo.pid)
    assert exact_path(replaced) == demo.lib
    assert exact_path(watcher.log.wait("mapping.deleted", pid=demo.pid)) == demo.lib


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_mv_over(start_demo, start_watcher, name):
    demo = start_demo("hold", interval_ms=3_600_000, lib=name)  # it reloads when told to
    watcher = start_watcher(demo.pid)
    demo.copy_lib("so2.so", demo.lib + b".new")
    os.rename(demo.lib + b".new", demo.lib)
    assert exact_path(watcher.log.wait("mapping.replaced", pid=demo.pid)) == demo.lib
    demo.tick("so2: version 2")
    assert exact_path(watcher.log.wait("mapping.reloaded", pid=demo.pid)) == demo.lib


@pytest.mark.parametrize("name", NAMES.values(), ids=NAMES.keys())
def test_cp_in_place(start_demo, start_watcher, name):
    demo = start_demo("leak", interval_ms=200, lib=name)
    watcher = start_watcher(demo.pid, extra=["--log-format", "json"])
    demo.copy_lib("so2.so")
    assert exact_path(watcher.log.wait("mapping.overwritten", pid=demo.pid)) == demo.lib
    exited = watcher.log.wait("target.exited", pid=demo.pid)
    assert exact_path(exited["stale"][0]) == demo.lib
    # every line of the log is one valid JSON object, in plain ASCII
    for line in watcher.log.path.read_bytes().splitlines():
        json.loads(line.decode("ascii"))


def test_literal_deleted_suffix_is_quiet_while_intact(start_demo, start_watcher):
    demo = start_demo("leak", lib=NAMES["deleted-suffix"])
    watcher = start_watcher(demo.pid, extra=["--interval", "0.1"])
    code, _out, _err = watcher.stop()
    assert code == 0
    assert not [e for e in watcher.log.read() if e["event"].startswith("mapping.")]


def test_console_output_has_no_raw_control_characters(start_demo, tmp_path):
    demos = [start_demo("leak", lib=name) for name in NAMES.values()]
    for demo in demos:
        os.unlink(demo.lib)
        demo.copy_lib("so2.so")
    table = run_cli("scan", *sum((["--pid", str(d.pid)] for d in demos), []))
    assert table.returncode == 1
    # a header, a row per demo (its deleted and replaced findings are one), a blank line,
    # "To restart:" and two lines per demo, the summary: no name made a line of its own
    assert no_raw_control(table.stdout) and table.stdout.count("\n") == 3 * len(demos) + 4
    console_log = tmp_path / "console.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "inodewatch", *sum((["--pid", str(d.pid)] for d in demos), []),
         "--log-format", "console", "--log-file", str(console_log)])
    try:
        wait_for(lambda: console_log.exists()
                 and console_log.read_text().count("mapping.replaced") == len(demos),
                 what="every replacement in the console log")
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=TIMEOUT) == 0
    text = console_log.read_text()
    assert no_raw_control(text) and "\\x1b[31mred" in text and "\\xff\\xfe" in text
