"""The watch daemon against the real demo: real files replaced, real events read from its log."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import TIMEOUT, lowered_sysctl, run_cli, wait_for
from inodewatch.report import parse_time

pytestmark = pytest.mark.integration

CRASH_SIGNALS = ("SIGSEGV", "SIGBUS")


def test_cp_in_place_is_overwritten_then_the_crash(start_demo, start_watcher):
    demo = start_demo("leak", interval_ms=200)
    watcher = start_watcher(demo.pid)
    demo.copy_lib("so2.so")
    overwritten = watcher.log.wait("mapping.overwritten", pid=demo.pid)
    assert overwritten["level"] == "critical"
    assert overwritten["path"] == os.fsdecode(demo.lib)
    assert overwritten["size_before"] == os.path.getsize(demo.dir / "so1.so")
    # told at the first write, before the writer is done: the size it leaves follows
    assert overwritten["size_after"] is None
    closed = watcher.log.wait("mapping.overwrite_closed", pid=demo.pid)
    assert (closed["level"], closed["mapped_ino"], closed["size_before"], closed["size_after"]) == (
        "warning", overwritten["mapped_ino"], overwritten["size_before"],
        os.path.getsize(demo.dir / "so2.so"))
    exited = watcher.log.wait("target.exited", pid=demo.pid)
    assert exited["signal"] in CRASH_SIGNALS and exited["level"] == "warning"
    assert exited["status_source"] == "proc_connector"
    assert exited["core_dumped"] is False and exited["exit_code"] is None
    assert [s["event"] for s in exited["stale"]] == ["mapping.overwritten"]
    assert exited["stale"][0]["size_after"] == closed["size_after"]
    assert -demo.wait_exit() in (signal.SIGSEGV, signal.SIGBUS)
    # the last target is gone: the daemon stops by itself, cleanly
    assert watcher.proc.wait(timeout=TIMEOUT) == 0
    names = watcher.log.names()
    assert names.index("mapping.overwritten") < names.index("target.exited") < names.index("daemon.stopped")
    assert names.count("mapping.overwritten") == 1


def test_touch_and_an_open_for_append_are_no_overwrite(start_demo, start_watcher):
    """Seen on nginx: `touch` of a mapped module logged a critical mapping.overwritten for
    every process.  An open for writing that changes no byte (touch, `: >>`) raises
    IN_CLOSE_WRITE (and IN_ATTRIB) but no IN_MODIFY: nothing to report.  A real write after
    them (appended zeros, harmless to the demo) is the overwrite, and the only one: its
    line comes after the write began, so neither the touch nor the append open raised it."""
    demo = start_demo("leak", interval_ms=50)
    watcher = start_watcher(demo.pid)
    size = os.path.getsize(demo.lib)
    subprocess.run(["touch", demo.lib], check=True)
    subprocess.run(["sh", "-c", ': >> "$1"', "sh", demo.lib], check=True)
    assert os.path.getsize(demo.lib) == size
    began = time.time()
    with open(demo.lib, "ab") as f:
        f.write(bytes(16))
    overwritten = watcher.log.wait("mapping.overwritten", pid=demo.pid)
    assert parse_time(overwritten["timestamp"]).timestamp() >= began
    assert (overwritten["size_before"], overwritten["truncated"]) == (size, False)
    closed = watcher.log.wait("mapping.overwrite_closed", pid=demo.pid)
    assert (closed["size_before"], closed["size_after"]) == (size, size + 16)
    demo.wait_for_line("so1: version 1", after=len(demo.lines))
    code, _out, _err = watcher.stop()
    assert code == 0
    assert watcher.log.names().count("mapping.overwritten") == 1
    assert watcher.log.names().count("mapping.overwrite_closed") == 1


def test_watches_are_in_place_when_target_attached_is_logged(start_demo):
    """An operator (or a test) may replace a file the moment target.attached appears: the
    in-place write must be seen, so the watches exist before that line is written.  (A
    `cp` in that gap once went unseen: the target crashed with no mapping.overwritten.)"""
    from inodewatch.daemon import Daemon, Options
    from inodewatch.model import FileId
    from inodewatch.watch import WRITE_EVENTS

    demo = start_demo("leak")
    held = FileId.of(os.stat(demo.lib))
    at_attached: list[bool] = []

    class Log:
        def __getattr__(self, level: str):
            def log(name: str, **fields: object) -> None:
                if name == "target.attached":
                    at_attached.append(daemon.watches.covers(demo.lib, held, WRITE_EVENTS))
            return log

    daemon = Daemon(Log(), sink=None, options=Options([demo.pid]))
    try:
        daemon.attach(daemon.prepare(demo.pid))
    finally:
        daemon.close()
    assert at_attached == [True]


def test_rm_then_cp_is_deleted_and_replaced_and_the_target_lives_on(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    os.unlink(demo.lib)
    deleted = watcher.log.wait("mapping.deleted", pid=demo.pid)
    demo.copy_lib("so2.so")
    replaced = watcher.log.wait("mapping.replaced", pid=demo.pid)
    assert deleted["mapped_ino"] == replaced["mapped_ino"] != replaced["disk_ino"]
    assert replaced["disk_ino"] == os.stat(demo.lib).st_ino
    # judged when first seen: at the unlink nothing was at the path yet
    assert (deleted["content"], deleted["content_reason"]) == ("unknown", "nothing at the path")
    # cp's create is seen before its write, as a rule: the empty file's content is
    # unknown, then judged again once written (mapping.content); known at once otherwise
    judged = replaced if replaced["content"] != "unknown" else watcher.log.wait(
        "mapping.content", pid=demo.pid)
    assert (judged["level"], judged["content"]) == ("warning", "different")
    assert judged["mapped_build_id"] != judged["disk_build_id"]
    demo.wait_for_line("so1: version 1", after=len(demo.lines))
    assert demo.proc.poll() is None
    code, _out, err = watcher.stop()
    assert code == 0 and err == ""
    assert watcher.log.find("daemon.stopped", reason="SIGTERM")
    # each state change once, not at every poll
    assert watcher.log.names().count("mapping.replaced") == 1


def test_a_reinstall_of_the_same_bytes_is_identical_content(start_demo, start_watcher):
    """dpkg-style (write X.dpkg-new, rename it over X) with the very same file: the inode
    changed, the code did not: content identical, logged at info (no restart needed)."""
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    demo.copy_lib("so1.so", demo.lib + b".dpkg-new")
    os.rename(demo.lib + b".dpkg-new", demo.lib)
    for name in ("mapping.deleted", "mapping.replaced"):
        event = watcher.log.wait(name, pid=demo.pid)
        assert (event["level"], event["content"]) == ("info", "identical")
        assert event["mapped_build_id"] == event["disk_build_id"]


def test_a_new_file_judged_while_empty_is_judged_again_once_written(start_demo, start_watcher):
    """`rm; cp` is seen at cp's create: the file is empty, its content cannot be compared
    (unknown); once written, mapping.content tells the verdict, once."""
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    os.unlink(demo.lib)
    watcher.log.wait("mapping.deleted", pid=demo.pid)
    with open(demo.lib, "wb") as new:  # created, nothing written yet
        replaced = watcher.log.wait("mapping.replaced", pid=demo.pid)
        assert (replaced["content"], replaced["content_reason"]) == (
            "unknown", "one file has a build-id, the other none")
        new.write((demo.dir / "so2.so").read_bytes())
    judged = watcher.log.wait("mapping.content", pid=demo.pid)
    assert (judged["kind"], judged["level"], judged["content"], judged["disk_ino"]) == (
        "replaced", "warning", "different", replaced["disk_ino"])
    assert judged["mapped_build_id"] == replaced["mapped_build_id"] != judged["disk_build_id"]
    watcher.stop()
    assert watcher.log.names().count("mapping.content") == 1


def test_hold_mode_mv_over_is_replaced_then_reloaded(start_demo, start_watcher):
    demo = start_demo("hold", interval_ms=3_600_000)  # it reloads when told to
    watcher = start_watcher(demo.pid)
    demo.copy_lib("so2.so", demo.lib + b".new")
    os.rename(demo.lib + b".new", demo.lib)
    replaced = watcher.log.wait("mapping.replaced", pid=demo.pid)
    demo.tick("so2: version 2")  # dlclose + dlopen
    reloaded = watcher.log.wait("mapping.reloaded", pid=demo.pid)
    assert reloaded["level"] == "info"
    assert (reloaded["old_ino"], reloaded["new_ino"]) == (replaced["mapped_ino"], replaced["disk_ino"])


def test_reopen_mode_cp_in_place_is_harmless(start_demo, start_watcher):
    demo = start_demo("reopen", interval_ms=50)
    watcher = start_watcher(demo.pid)
    demo.copy_lib("so2.so")
    demo.wait_for_line("so2: version 2")
    assert demo.proc.poll() is None
    code, _out, _err = watcher.stop()
    assert code == 0
    assert "mapping.overwritten" not in watcher.log.names()
    assert "target.exited" not in watcher.log.names()


def test_fd_held_on_a_deleted_log_file(tmp_path, start_watcher):
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        holder = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.DEVNULL)
    try:
        watcher = start_watcher(holder.pid)
        log.unlink()
        event = watcher.log.wait("fd.deleted", pid=holder.pid)
        assert (event["fd"], event["path"]) == (1, str(log))
        # an fd's divergence is judged too: nothing at the path to compare with
        assert (event["content"], event["content_reason"]) == ("unknown", "nothing at the path")
        log.with_name("app.log.new").write_text("a new log\n")
        os.rename(log.with_name("app.log.new"), log)  # complete when it appears
        event = watcher.log.wait("fd.replaced", pid=holder.pid)
        assert (event["level"], event["content"]) == ("warning", "different")
        assert "mapped_build_id" not in event  # not ELF: sizes (0, 10) tell them apart
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_is_reported_as_sigkill(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    os.kill(demo.pid, signal.SIGKILL)
    exited = watcher.log.wait("target.exited", pid=demo.pid)
    assert exited["signal"] == "SIGKILL" and exited["stale"] == []


def test_divergence_present_at_attach_is_reported(start_demo, start_watcher):
    demo = start_demo("leak")
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    watcher = start_watcher(demo.pid)
    watcher.log.wait("mapping.deleted", pid=demo.pid)
    watcher.log.wait("mapping.replaced", pid=demo.pid)


def test_rename_away_is_seen_by_the_daemon(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    os.rename(demo.lib, demo.lib + b".old")
    renamed = watcher.log.wait("mapping.renamed", pid=demo.pid)
    assert (renamed["path"], renamed["new_path"]) == (os.fsdecode(demo.lib), os.fsdecode(demo.lib + b".old"))
    demo.copy_lib("so2.so")
    watcher.log.wait("mapping.replaced", pid=demo.pid)


def test_a_non_utf8_name_in_a_watched_directory_does_not_blind_it(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    hostile = os.path.join(os.fsencode(demo.dir), b"evil\xff\x1b[31m\n.so")
    with open(hostile, "wb"):
        pass
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    watcher.log.wait("mapping.replaced", pid=demo.pid)
    code, out, err = watcher.stop()
    assert (code, out, err) == (0, "", "")  # and nothing stray from pyinotify


def test_watch_limit_exhausted_degrades_to_polling(start_demo, start_watcher):
    demo = start_demo("leak")
    with lowered_sysctl("max_user_watches", 1):
        watcher = start_watcher(demo.pid, extra=["--interval", "0.2"])
        degraded = watcher.log.wait("watch.degraded", resource="inotify_watches")
        assert "max_user_watches" in degraded["detail"] and degraded["pids"] == [demo.pid]
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    watcher.log.wait("mapping.replaced", pid=demo.pid)
    code, _out, err = watcher.stop()
    assert code == 0 and err == ""
    assert watcher.log.names().count("watch.degraded") == 1


def test_sighup_reopens_the_log_file(start_demo, start_watcher, tmp_path):
    demo = start_demo("leak")
    watcher = start_watcher(demo.pid)
    rotated = tmp_path / "rotated.json"
    os.rename(watcher.log.path, rotated)
    watcher.proc.send_signal(signal.SIGHUP)
    wait_for(watcher.log.path.exists, what="the log file reopened")
    os.unlink(demo.lib)
    fresh = type(watcher.log)(watcher.log.path)
    fresh.wait("mapping.deleted", pid=demo.pid)


def test_bad_pid_and_bad_log_file_are_one_line_errors(start_demo, tmp_path):
    result = run_cli("--pid", "999999999")
    assert (result.returncode, result.stderr) == (2, "inodewatch: no such process: 999999999\n")
    demo = start_demo("leak")
    result = run_cli("--pid", str(demo.pid), "--log-file", str(tmp_path / "no" / "such" / "dir.json"))
    assert result.returncode == 2
    assert result.stderr.startswith("inodewatch: cannot open log file") and result.stderr.count("\n") == 1
    result = run_cli()
    assert result.returncode == 2 and "nothing to watch" in result.stderr


def test_queue_overflow_is_logged_and_a_full_reread_finds_the_change(start_demo, start_watcher):
    demo = start_demo("leak")
    # the kernel reads the limit when the daemon creates its inotify instance
    with lowered_sysctl("max_queued_events", 4):
        watcher = start_watcher(demo.pid, extra=["--interval", "60"])  # no timer to hide behind
    watcher.proc.send_signal(signal.SIGSTOP)  # let the queue fill while it cannot read
    try:
        for i in range(20):
            open(demo.dir / f"noise{i}", "w").close()
        os.unlink(demo.lib)
        demo.copy_lib("so2.so")
    finally:
        watcher.proc.send_signal(signal.SIGCONT)
    watcher.log.wait("watch.overflow")
    watcher.log.wait("mapping.replaced", pid=demo.pid)


def test_without_the_proc_connector_exits_are_seen_through_pidfds(start_demo, tmp_path):
    """The connector works only from the initial network namespace: a daemon in its own
    (as under systemd's PrivateNetwork=yes) falls back to pidfds and says so."""
    import shutil
    import sys

    from conftest import EventLog

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux)")
    demo = start_demo("leak")
    log = EventLog(tmp_path / "events.json")
    daemon = subprocess.Popen(
        ["unshare", "--net", sys.executable, "-m", "inodewatch", "--pid", str(demo.pid), "--log-file", str(log.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log.wait("target.attached", pid=demo.pid)
        degraded = log.wait("watch.degraded")
        assert "network namespace" in degraded["detail"]
        os.kill(demo.pid, signal.SIGKILL)
        exited = log.wait("target.exited", pid=demo.pid)
        assert exited["status_source"] == "pidfd" and exited["signal"] is None
        assert daemon.wait(timeout=TIMEOUT) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        daemon.communicate()


def test_targets_dying_together_each_get_their_status(start_demo, start_watcher):
    demos = [start_demo("leak") for _ in range(3)]
    watcher = start_watcher(*(d.pid for d in demos))
    for d in demos:
        os.kill(d.pid, signal.SIGKILL)
    for d in demos:
        exited = watcher.log.wait("target.exited", pid=d.pid)
        assert (exited["signal"], exited["status_source"]) == ("SIGKILL", "proc_connector")
    assert watcher.proc.wait(timeout=TIMEOUT) == 0


def test_watch_limits_attention_to_the_named_file(start_demo, start_watcher, tmp_path):
    demo = start_demo("leak")
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        holder = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.DEVNULL)
    try:
        link = tmp_path / "link"
        link.symlink_to(demo.dir)  # named through a symlinked directory: still the same file
        watcher = start_watcher(demo.pid, holder.pid, extra=["--watch", str(link / "so.so")])
        log.unlink()  # not watched: no fd.deleted
        os.unlink(demo.lib)
        watcher.log.wait("mapping.deleted", pid=demo.pid)
        code, _out, _err = watcher.stop()
        assert code == 0
        assert "fd.deleted" not in watcher.log.names()
    finally:
        holder.kill()
        holder.wait()


UNLOADING_HOST = r"""
import _ctypes, ctypes, sys
lib = sys.argv[1]
held = open(sys.argv[2], "w")  # a file it holds open: a change to it makes the daemon look
handle = ctypes.CDLL(lib)
print("loaded", flush=True)
sys.stdin.readline()
_ctypes.dlclose(handle._handle)
print("closed", flush=True)
sys.stdin.readline()
handle = ctypes.CDLL(lib)
print("loaded", flush=True)
sys.stdin.readline()
"""


def inotify_masks(pid: int) -> list[int]:
    """The event masks of every inotify watch process `pid` holds (from fdinfo)."""
    masks = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        masks += [int(line.split("mask:")[1].split()[0], 16)
                  for line in text.splitlines() if line.startswith("inotify wd:")]
    return masks


def test_a_host_between_dlclose_and_dlopen_stays_watched(demo_build, tmp_path, start_watcher):
    """A re-read that falls in the gap of a reload sees nothing mapped; the daemon must keep
    watching the file, or the host's next replacement goes unseen until the timer."""
    import sys

    from conftest import wait_for

    lib = tmp_path / "so.so"
    lib.write_bytes((demo_build / "so1.so").read_bytes())
    held = tmp_path / "held.log"
    host = subprocess.Popen([sys.executable, "-c", UNLOADING_HOST, str(lib), str(held)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert host.stdout.readline() == "loaded\n"
        watcher = start_watcher(host.pid, extra=["--interval", "3600"])  # inotify alone
        host.stdin.write("\n")
        host.stdin.flush()
        assert host.stdout.readline() == "closed\n"
        held.chmod(0o600)  # IN_ATTRIB on a held file: the daemon looks, sees so.so unmapped
        in_open = 0x20
        wait_for(lambda: any(m & in_open for m in inotify_masks(watcher.proc.pid)),
                 what="so.so still watched, now for its reopening")
        host.stdin.write("\n")
        host.stdin.flush()
        assert host.stdout.readline() == "loaded\n"
        os.unlink(lib)
        watcher.log.wait("mapping.deleted", pid=host.pid)
    finally:
        host.kill()
        host.wait()


def test_a_handler_that_raises_is_logged_with_its_traceback_and_the_daemon_carries_on(
        start_demo, tmp_path):
    """A bug in one of the loop's handlers: daemon.error (the traceback in the JSON, through
    the real log pipeline) and the other handlers, timers and targets go on being served."""
    import json
    import socket

    from contract import check
    from inodewatch.daemon import Daemon, Options
    from inodewatch.eventlog import LogSink, make_logger

    demo = start_demo("leak")
    sink = LogSink(path=str(tmp_path / "events.json"))
    daemon = Daemon(make_logger(sink, "json"), sink, Options([demo.pid]))
    broken_end, poke = socket.socketpair()
    other_end, other_poke = socket.socketpair()
    served: list[bytes] = []

    def on_bytes(_now: float) -> None:
        broken_end.recv(64)
        raise ZeroDivisionError("a bug\nin a handler")

    try:
        daemon.attach(daemon.prepare(demo.pid))
        # start()'s part that matters here: inotify's handler, and never a wait of over 50 ms
        daemon.reactor.register(daemon.watcher.fileno(), daemon.read_inotify, order=1)
        daemon.reactor.wake_by(lambda now: now + 0.05)
        daemon.reactor.register(broken_end.fileno(), on_bytes)
        daemon.reactor.register(other_end.fileno(), lambda _now: served.append(other_end.recv(64)))
        poke.send(b"x")
        other_poke.send(b"y")
        daemon.reactor.turn()
        os.unlink(demo.lib)  # the daemon still sees what happens to its target
        wait_for(lambda: daemon.reactor.turn() or any(
            m.deleted for t in daemon.targets.values() for m in t.mapped.values()),
            what="the target's deleted mapping")
    finally:
        daemon.close()
        sink.close()
        for end in (broken_end, poke, other_end, other_poke):
            end.close()
    assert served == [b"y"]
    lines = [check(json.loads(line), "daemon")
             for line in (tmp_path / "events.json").read_text().splitlines()]
    errors = [e for e in lines if e["event"] == "daemon.error"]
    assert len(errors) == 1 and errors[0]["level"] == "error"
    assert errors[0]["handler"].endswith("on_bytes")
    assert errors[0]["error"] == "ZeroDivisionError: a bug in a handler"
    assert "Traceback" in errors[0]["traceback"] and "on_bytes" in errors[0]["traceback"]
    assert [e["event"] for e in lines if e["event"].startswith("mapping.")] == ["mapping.deleted"]
