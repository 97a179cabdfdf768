"""The watch daemon on the private nginx (tests/nginx_instance.py: Debian's nginx, a copy of
the echo module): an upgrade to another build makes master and every worker stale, content
different, still after `nginx -s reload` (new workers are forked from the master's memory),
gone after a restart; an identical reinstall is identical content; a touch is nothing; an
in-place cp is critical at once, then the crashes it causes; a reload with the module path
spelled otherwise loads the new file beside the old one: mapping.duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from conftest import TIMEOUT, run_cli, wait_for
from nginx_instance import NGINX, dpkg_style_install, nginx, with_other_build_id

pytestmark = pytest.mark.integration
_ = nginx  # the fixture, used by name

DIVERGED = ("mapping.deleted", "mapping.replaced")


def watch(start_watcher, instance):
    """The daemon on the instance's master and workers, following new nginx processes
    (other tests' nginx too: every check here is about this instance's pids)."""
    return start_watcher(instance.master_pid, *instance.worker_pids(),
                         extra=["--exe", str(NGINX)])


def stale_reports(log, pids: list[int], module) -> dict[int, dict[str, dict]]:
    """pid -> event name -> the event, for the module's deleted and replaced lines of each
    pid, once all of them are logged."""
    def complete():
        found = {pid: {e["event"]: e for e in log.read()
                       if e.get("pid") == pid and e.get("path") == str(module)
                       and e["event"] in DIVERGED} for pid in pids}
        return found if all(len(v) == 2 for v in found.values()) else None
    return wait_for(complete, what=f"mapping.deleted and .replaced for {pids}")


def test_an_upgrade_is_stale_in_master_and_workers_until_a_restart(nginx, start_watcher):
    watcher = watch(start_watcher, nginx)
    first = [nginx.master_pid, *nginx.worker_pids()]
    dpkg_style_install(nginx.module, with_other_build_id(nginx.module.read_bytes()))
    for pid, events in stale_reports(watcher.log, first, nginx.module).items():
        for event in events.values():
            assert (event["level"], event["content"]) == ("warning", "different"), pid
            assert event["mapped_build_id"] != event["disk_build_id"]
    workers = nginx.reload()  # glibc hands the loaded object back by its name: no new read
    for pid in workers:
        watcher.log.wait("target.attached", pid=pid)
    for pid, events in stale_reports(watcher.log, workers, nginx.module).items():
        assert events["mapping.replaced"]["content"] == "different", pid
    nginx.stop()
    nginx.start()
    fresh = [nginx.master_pid, *nginx.worker_pids()]
    for pid in fresh:
        watcher.log.wait("target.attached", pid=pid)
    watcher.stop()  # whatever a look at attach found is logged by now
    assert not [e for e in watcher.log.read() if e.get("pid") in fresh
                and e["event"].startswith("mapping.")]


def test_an_identical_reinstall_is_identical_content(nginx, start_watcher):
    watcher = watch(start_watcher, nginx)
    pids = [nginx.master_pid, *nginx.worker_pids()]
    dpkg_style_install(nginx.module, nginx.module.read_bytes())
    for pid, events in stale_reports(watcher.log, pids, nginx.module).items():
        for event in events.values():
            assert (event["level"], event["content"]) == ("info", "identical"), pid
            assert event["mapped_build_id"] == event["disk_build_id"]


@pytest.mark.parametrize("one_read", [False, True], ids=["as-they-come", "in-one-read"])
def test_touch_and_an_append_open_raise_no_critical_line(nginx, start_watcher, one_read):
    """Seen here before: `touch` of the live module was a critical mapping.overwritten for
    every nginx process.  The upgrade after it is the sentinel: its events come after
    whatever the touch and the `: >>` caused, in the same inotify queue.

    in-one-read: the daemon is stopped (SIGSTOP, well under the loop's gap threshold) while
    all three happen, so it reads them at once and looks at master and workers after the
    upgrade: the first look moves the shared watch to the new file, and a touched mtime on
    the old inode was then taken for an unwatched write in the others (a CI failure under
    load)."""
    watcher = watch(start_watcher, nginx)
    pids = [nginx.master_pid, *nginx.worker_pids()]
    if one_read:
        watcher.proc.send_signal(signal.SIGSTOP)
    try:
        subprocess.run(["touch", nginx.module], check=True)
        subprocess.run(["sh", "-c", ': >> "$1"', "sh", nginx.module], check=True)
        dpkg_style_install(nginx.module, nginx.module.read_bytes())
    finally:
        if one_read:
            watcher.proc.send_signal(signal.SIGCONT)
    stale_reports(watcher.log, pids, nginx.module)
    assert not [e for e in watcher.log.read() if e.get("pid") in pids
                and (e["level"] == "critical" or e["event"].startswith("mapping.overwrite"))]
    assert nginx.request().startswith("inodewatch echo from ")


def test_an_in_place_cp_is_critical_then_the_crashes_follow(nginx, start_watcher, tmp_path):
    """cp of the very same bytes over the live module: critical for master and both workers
    at once; the worker serving the next request dies of SIGSEGV, the master at the next
    reload; report says so."""
    watcher = watch(start_watcher, nginx)
    master, workers = nginx.master_pid, nginx.worker_pids()
    data = nginx.module.read_bytes()
    with open(nginx.module, "wb") as f:  # as cp does: O_TRUNC, then write
        f.write(data)
    for pid in [master, *workers]:
        over = watcher.log.wait("mapping.overwritten", pid=pid)
        assert (over["level"], over["size_before"]) == ("critical", len(data))
        closed = watcher.log.wait("mapping.overwrite_closed", pid=pid)
        assert closed["size_after"] == len(data)
    with pytest.raises(OSError):
        nginx.request()
    crashed = wait_for(lambda: [e for e in watcher.log.read() if e["event"] == "target.exited"
                                and e["pid"] in workers and e["signal"] == "SIGSEGV"],
                       what="a worker's SIGSEGV")
    assert crashed[0]["stale"][0]["event"] == "mapping.overwritten"
    nginx.send_reload()
    assert nginx.wait_master_exit() < 0
    exited = watcher.log.wait("target.exited", pid=master)
    assert exited["signal"] == "SIGSEGV"
    result = run_cli("report", str(watcher.log.path), "--pid", str(master), "--json")
    target = json.loads(result.stdout.splitlines()[0])
    assert target["outcome"] == "crashed_after_overwrite", target["verdict"]


@pytest.mark.skipif(os.geteuid() != 0, reason="--guard needs CAP_SYS_ADMIN")
def test_under_guard_the_in_place_cp_is_refused_and_nginx_survives_its_reload(nginx, start_watcher,
                                                                              tmp_path):
    """The same cp as above, under --guard: refused for master and both workers (one line
    each, naming cp), the module unchanged, every request served, and the next reload --
    where the unguarded master died -- loads it again: new workers, guarded in turn."""
    watcher = start_watcher(nginx.master_pid, *nginx.worker_pids(),
                            extra=["--exe", str(NGINX), "--guard"])
    watcher.log.wait("guard.started")
    master, workers = nginx.master_pid, nginx.worker_pids()
    data = nginx.module.read_bytes()
    same = tmp_path / "same.so"
    same.write_bytes(data)  # the very same bytes: still the crash, unguarded
    done = subprocess.run(["cp", same, nginx.module], capture_output=True, text=True)
    assert done.returncode == 1 and "Text file busy" in done.stderr, done.stderr
    done = subprocess.run(["cp", "/dev/null", nginx.module], capture_output=True, text=True)
    assert done.returncode == 1  # the truncation the crash came from
    assert nginx.module.read_bytes() == data
    for pid in [master, *workers]:
        refused = watcher.log.wait("mapping.write_refused", pid=pid)
        assert (refused["writer_comm"], refused["path"]) == ("cp", str(nginx.module))
    assert nginx.request().startswith("inodewatch echo from ")
    fresh = nginx.reload()
    assert nginx.proc.poll() is None and nginx.request().startswith("inodewatch echo from ")
    for pid in fresh:
        watcher.log.wait("target.attached", pid=pid)
    def refused_for_all() -> bool:
        subprocess.run(["cp", same, nginx.module], capture_output=True)
        return all(watcher.log.find("mapping.write_refused", pid=pid) for pid in fresh) or None
    wait_for(refused_for_all, what="the new workers' module guarded")
    assert not [e for e in watcher.log.read() if e["event"].startswith("mapping.overwrit")
                or (e["event"] == "target.exited" and e["signal"])]


@pytest.mark.parametrize("spelling", ["dot", "symlinked_dir"])
def test_both_versions_loaded_at_once_is_duplicated(nginx, start_watcher, spelling):
    if spelling == "dot":
        ref = f"{nginx.prefix}/modules/./{nginx.module.name}"
    else:
        (nginx.prefix / "modlink").symlink_to("modules")
        ref = f"modlink/{nginx.module.name}"
    watcher = watch(start_watcher, nginx)
    old_ino = nginx.module.stat().st_ino
    dpkg_style_install(nginx.module, with_other_build_id(nginx.module.read_bytes()))
    new_ino = nginx.module.stat().st_ino
    stale_reports(watcher.log, [nginx.master_pid], nginx.module)
    workers = nginx.reload(ref)
    for pid in [nginx.master_pid, *workers]:
        dup = watcher.log.wait("mapping.duplicated", pid=pid)
        assert (dup["level"], dup["path"], dup["old_ino"], dup["new_ino"]) == (
            "warning", str(nginx.module), old_ino, new_ino)
        assert "r-xp" in dup["perms"]
    # scan says it too, once per process
    code, events = scan(nginx.master_pid, *workers)
    assert code == 1
    assert sorted(e["pid"] for e in events if e["event"] == "mapping.duplicated") == sorted(
        [nginx.master_pid, *workers])
    watcher.stop()
    assert [e["pid"] for e in watcher.log.read() if e["event"] == "mapping.duplicated"
            and e["pid"] == nginx.master_pid] == [nginx.master_pid]


def scan(*pids: int) -> tuple[int, list[dict]]:
    result = run_cli("scan", *[a for pid in pids for a in ("--pid", str(pid))], "--json",
                     timeout=TIMEOUT)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]

