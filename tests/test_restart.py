"""A daemon killed (SIGKILL: no clean stop) and started again with the same --state-file
reports what happened to its targets while it was down, and only that, against the real demo;
a bad state file costs one warning line, never the daemon."""

from __future__ import annotations

import os
import signal
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import TIMEOUT, EventLog, wait_for
from inodewatch.procfs import read_identity
from inodewatch.state import MAX_BYTES, StateFile

pytestmark = pytest.mark.integration


def saved(path) -> dict:
    """pid -> the history the state file holds now (empty while it is absent or unusable)."""
    loaded = StateFile(str(path)).load()
    return {ident.pid: history for ident, history in loaded.targets.items()}


def kill_hard(watcher) -> None:
    watcher.proc.send_signal(signal.SIGKILL)
    watcher.proc.wait(timeout=TIMEOUT)


def stopped_log(watcher) -> list[dict]:
    """Stop the daemon cleanly and return its whole log."""
    code, _out, err = watcher.stop()
    assert code == 0, err
    return watcher.log.read()


def after_attach(events: list[dict], pid: int) -> list[str]:
    names = [(e["event"], e.get("pid")) for e in events]
    start = names.index(("target.attached", pid))
    return [name for name, p in names[start:] if p == pid]


def test_cp_in_place_while_the_daemon_was_down_is_overwritten_at_restart(start_demo, start_watcher, tmp_path):
    # Leak mode calls into the library only at each tick: with a long interval it survives the
    # overwrite until the test makes it tick.
    demo = start_demo("leak", interval_ms=3_600_000)
    state = tmp_path / "state.json"
    first = start_watcher(demo.pid, extra=["--state-file", str(state)])
    wait_for(lambda: demo.pid in saved(state), what="the target in the state file")
    kill_hard(first)
    size_before = os.path.getsize(demo.lib)
    demo.copy_lib("so2.so")  # cp in place: same inode, new contents
    # Control: without the state file, a fresh look sees an intact file.
    blind = start_watcher(demo.pid)
    assert "mapping.overwritten" not in stopped_log(blind)
    second = start_watcher(demo.pid, extra=["--state-file", str(state)])
    attached = second.log.find("target.attached", pid=demo.pid)
    assert attached["restored"] is True
    over = second.log.wait("mapping.overwritten", pid=demo.pid)
    assert over["level"] == "critical" and over["path"] == os.fsdecode(demo.lib)
    assert (over["size_before"], over["size_after"]) == (size_before, os.path.getsize(demo.lib))
    assert over["mapped_ino"] == os.stat(demo.lib).st_ino
    demo.proc.send_signal(signal.SIGUSR1)  # its next call runs the overwritten code
    exited = second.log.wait("target.exited", pid=demo.pid)
    assert exited["signal"] in ("SIGSEGV", "SIGBUS")
    assert [s["event"] for s in exited["stale"]] == ["mapping.overwritten"]
    assert second.proc.wait(timeout=TIMEOUT) == 0  # its last target is gone
    assert second.log.names().count("mapping.overwritten") == 1


def test_two_targets_mapping_the_file_overwritten_while_down_are_both_told(start_demo, start_watcher, tmp_path, demo_build):
    """The first target's look after the restart watches the file for writes; that watch saw
    nothing of the cp made before it, so the second target's look must not trust it."""
    demo = start_demo("leak", interval_ms=3_600_000)
    other = subprocess.Popen([str(demo_build / "reload"), "--mode", "leak", "--interval-ms", "3600000",
                              "--lib", demo.lib], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: b"so1: version 1" in other.stdout.readline(), what="the second host's load")
        state = tmp_path / "state.json"
        first = start_watcher(demo.pid, other.pid, extra=["--state-file", str(state)])
        wait_for(lambda: {demo.pid, other.pid} <= set(saved(state)), what="both targets saved")
        kill_hard(first)
        demo.copy_lib("so2.so")
        second = start_watcher(demo.pid, other.pid, extra=["--state-file", str(state)])
        for pid in (demo.pid, other.pid):
            assert second.log.wait("mapping.overwritten", pid=pid)["size_after"] == os.path.getsize(demo.lib)
    finally:
        other.kill()
        other.wait()
        other.stdout.close()


def test_rename_away_while_down_is_renamed_and_replaced_at_restart_then_reloaded(start_demo, start_watcher, tmp_path):
    demo = start_demo("hold", interval_ms=3_600_000)  # it reloads when told to
    state = tmp_path / "state.json"
    first = start_watcher(demo.pid, extra=["--state-file", str(state)])
    wait_for(lambda: demo.pid in saved(state), what="the target in the state file")
    kill_hard(first)
    held = os.stat(demo.lib).st_ino
    old = demo.lib.replace(b"so.so", b"old.so")
    os.rename(demo.lib, old)  # mv so.so old.so
    demo.copy_lib("so2.so")  # cp new so.so
    second = start_watcher(demo.pid, extra=["--state-file", str(state)])
    renamed = second.log.wait("mapping.renamed", pid=demo.pid)
    assert (renamed["path"], renamed["new_path"], renamed["mapped_ino"]) == (
        os.fsdecode(demo.lib), os.fsdecode(old), held)
    replaced = second.log.wait("mapping.replaced", pid=demo.pid)
    assert (replaced["mapped_ino"], replaced["disk_ino"]) == (held, os.stat(demo.lib).st_ino)
    demo.tick("so2: version 2")
    reloaded = second.log.wait("mapping.reloaded", pid=demo.pid)
    assert (reloaded["old_ino"], reloaded["new_ino"]) == (held, os.stat(demo.lib).st_ino)


def test_a_target_found_by_a_selector_gets_its_history_back(start_demo, tmp_path, demo_build):
    """--exe (as the units' --unit): the target is found by the start-up walk, not named."""
    exe = tmp_path / "myhost"
    shutil.copy(demo_build / "reload", exe)
    lib = tmp_path / "so.so"
    shutil.copy(demo_build / "so1.so", lib)
    host = subprocess.Popen([str(exe), "--mode", "hold", "--interval-ms", "3600000", "--lib", str(lib)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    state = tmp_path / "state.json"
    daemons = []

    def watch(n: int) -> EventLog:
        log = EventLog(tmp_path / f"events{n}.json")
        daemons.append(subprocess.Popen(
            [sys.executable, "-m", "inodewatch", "--exe", str(exe), "--state-file", str(state),
             "--log-file", str(log.path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        return log

    try:
        wait_for(lambda: b"so1: version 1" in host.stdout.readline(), what="the host's load")
        watch(0).wait("target.attached", pid=host.pid)
        wait_for(lambda: host.pid in saved(state), what="the target saved")
        daemons[0].send_signal(signal.SIGKILL)
        daemons[0].wait(timeout=TIMEOUT)
        held = os.stat(lib).st_ino
        os.rename(lib, tmp_path / "old.so")
        shutil.copy(demo_build / "so2.so", lib)
        log = watch(1)
        attached = log.wait("target.attached", pid=host.pid)
        assert (attached["selector"], attached["restored"]) == (f"exe={exe}", True)
        renamed = log.wait("mapping.renamed", pid=host.pid)
        assert (renamed["path"], renamed["new_path"], renamed["mapped_ino"]) == (
            str(lib), str(tmp_path / "old.so"), held)
    finally:
        for proc in (*daemons, host):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        host.stdout.close()
        for daemon in daemons:
            daemon.stderr.close()


def test_divergences_logged_before_the_kill_are_not_logged_again(start_demo, start_watcher, tmp_path):
    demo = start_demo("hold", interval_ms=3_600_000)
    state = tmp_path / "state.json"
    first = start_watcher(demo.pid, extra=["--state-file", str(state)])
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    first.log.wait("mapping.replaced", pid=demo.pid)
    wait_for(lambda: len(saved(state).get(demo.pid, None).live) == 2 if saved(state).get(demo.pid) else False,
             what="both divergences in the state file")
    kill_hard(first)
    second = start_watcher(demo.pid, extra=["--state-file", str(state)])
    demo.tick("so2: version 2")  # the reload the first daemon was waiting for
    reloaded = second.log.wait("mapping.reloaded", pid=demo.pid)
    assert reloaded["new_ino"] == os.stat(demo.lib).st_ino
    events = stopped_log(second)
    assert after_attach(events, demo.pid) == ["target.attached", "mapping.reloaded"]


def test_a_target_that_ended_while_down_is_lost(start_demo, start_watcher, tmp_path):
    gone, alive = start_demo("leak", interval_ms=3_600_000), start_demo("leak", interval_ms=3_600_000)
    state = tmp_path / "state.json"
    first = start_watcher(gone.pid, alive.pid, extra=["--state-file", str(state)])
    os.unlink(gone.lib)
    first.log.wait("mapping.deleted", pid=gone.pid)
    wait_for(lambda: saved(state).get(gone.pid) is not None and saved(state)[gone.pid].live
             and alive.pid in saved(state), what="both targets in the state file")
    kill_hard(first)
    gone.stop()
    second = start_watcher(alive.pid, extra=["--state-file", str(state)])
    lost = second.log.wait("target.lost", pid=gone.pid)
    assert lost["level"] == "warning" and "ended while the daemon was not running" in lost["detail"]
    assert [s["event"] for s in lost["stale"]] == ["mapping.deleted"]
    assert second.log.find("target.attached", pid=alive.pid)["restored"] is True
    wait_for(lambda: gone.pid not in saved(state), what="the lost target dropped from the file")
    assert "target.exited" not in stopped_log(second)  # its exit was not seen: not invented


def the_daemon_works(demo, watcher) -> None:
    os.unlink(demo.lib)
    watcher.log.wait("mapping.deleted", pid=demo.pid)


def degraded(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "watch.degraded" and e.get("resource") == "state_file"]


def plant_garbage(path):
    path.write_bytes(b"\x00{\"format\": \"inodewatch-state\", \x9f" * 100)


def plant_truncated(path):
    path.write_bytes(b'{"format": "inodewatch-state", "version": 1, "boot_id": "x", "targets": [{"pid": 1')


def plant_huge(path):
    with open(path, "wb") as f:
        f.write(b"[" * (MAX_BYTES + 4096))


def plant_fifo(path):
    os.mkfifo(path)


def plant_symlink(path):
    # A root-only file of our own, not /etc/shadow: other test runs on this host add users.
    victim = path.parent / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    os.symlink(victim, path)


@pytest.mark.parametrize("plant", [plant_garbage, plant_truncated, plant_huge, plant_fifo, plant_symlink],
                         ids=["garbage", "truncated", "huge", "fifo", "symlink"])
def test_a_bad_state_file_is_one_warning_and_a_working_daemon(start_demo, start_watcher, tmp_path, plant):
    demo = start_demo("leak", interval_ms=3_600_000)
    state = tmp_path / "state.json"
    plant(state)
    watcher = start_watcher(demo.pid, extra=["--state-file", str(state)])
    the_daemon_works(demo, watcher)
    wait_for(lambda: saved(state).get(demo.pid), what="a good state file written over the bad one")
    events = stopped_log(watcher)
    warnings = degraded(events)
    assert len(warnings) == 1 and warnings[0]["level"] == "warning", warnings
    assert "not used" in warnings[0]["detail"] and "\n" not in warnings[0]["detail"]
    assert not os.path.islink(state)
    if plant is plant_symlink:
        assert (tmp_path / "shadow").read_text() == "root:secret\n"  # read nor written through
    assert after_attach(events, demo.pid)[0] == "target.attached"
    assert "restored" not in next(e for e in events if e["event"] == "target.attached")


def test_a_symlink_planted_for_the_temporary_file_is_not_followed(start_demo, start_watcher, tmp_path, attacker):
    """An attacker who can write in the state directory links the temporary file's name to a
    file of root's: the daemon removes the link and writes its own file, the victim intact."""
    victim = tmp_path / "victim"
    victim.write_text("root's data\n")
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # tmp_path is 0700: not the attacker's way
        os.chmod(top, 0o711)
        directory = Path(top) / "statedir"
        directory.mkdir()
        os.chown(directory, attacker.uid, attacker.gid)
        state = directory / "state.json"
        subprocess.run([*attacker.argv, "ln", "-s", str(victim), str(state) + ".tmp"], check=True)
        assert os.path.islink(str(state) + ".tmp")
        demo = start_demo("leak", interval_ms=3_600_000)
        watcher = start_watcher(demo.pid, extra=["--state-file", str(state)])
        wait_for(lambda: saved(state).get(demo.pid), what="the state file written")
        assert victim.read_text() == "root's data\n"
        assert not os.path.islink(state) and not os.path.lexists(str(state) + ".tmp")
        assert degraded(stopped_log(watcher)) == []


def test_the_state_file_from_the_config_and_a_clean_stop_saves_it(start_demo, start_watcher, tmp_path):
    demo = start_demo("leak", interval_ms=3_600_000)
    state = tmp_path / "state.json"
    config = tmp_path / "inodewatch.toml"
    config.write_text(f'state_file = "{state}"\n')
    watcher = start_watcher(demo.pid, extra=["--config", str(config)])
    stopped_log(watcher)  # SIGTERM at once: the stop writes it even within the first second
    assert saved(state)[demo.pid].first_paths
    assert read_identity(demo.pid).start_time == next(iter(StateFile(str(state)).load().targets)).start_time


def test_a_state_file_that_cannot_be_written_is_one_warning_and_the_daemon_watches_on(start_demo, start_watcher, tmp_path):
    demo = start_demo("leak", interval_ms=3_600_000)
    missing = tmp_path / "not-yet"
    watcher = start_watcher(demo.pid, extra=["--state-file", str(missing / "state.json")])
    watcher.log.wait("watch.degraded", resource="state_file")
    the_daemon_works(demo, watcher)
    missing.mkdir()  # the directory appears: the next write works
    recovered = watcher.log.wait("watch.recovered", resource="state_file")
    assert recovered["level"] == "info"
    wait_for(lambda: saved(missing / "state.json").get(demo.pid), what="the state file written")
    events = stopped_log(watcher)
    assert len(degraded(events)) == 1 and "cannot write state file" in degraded(events)[0]["detail"]
