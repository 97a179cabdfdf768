"""`inodewatch --guard` on the real C demo: the daemon marks the library the demo maps, a
`cp` over it is refused (not a byte changes, the demo lives, mapping.write_refused names cp),
every other way to touch the file works as before (cat, sha256sum, another process's dlopen,
mv over, which is reported as today), a file no target maps is written freely, a daemon
killed with SIGKILL leaves nothing blocked, and without CAP_SYS_ADMIN --guard is one line
and exit 2."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import TIMEOUT, run_cli, wait_for
from test_guard import needs_root

pytestmark = [pytest.mark.integration, needs_root]


def guarded_watch(start_watcher, demo, *extra: str):
    watcher = start_watcher(demo.pid, extra=["--guard", *extra])
    watcher.log.wait("guard.started")
    return watcher


def cp(source, dest) -> subprocess.CompletedProcess:
    return subprocess.run(["cp", source, dest], capture_output=True, text=True, timeout=TIMEOUT)


def test_cp_over_the_mapped_library_is_refused_and_the_demo_lives(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = guarded_watch(start_watcher, demo)
    before = open(demo.lib, "rb").read()
    done = cp(demo.dir / "so2.so", demo.lib)
    assert done.returncode == 1
    assert "Text file busy" in done.stderr or "Operation not permitted" in done.stderr, done.stderr
    assert open(demo.lib, "rb").read() == before  # not a byte changed
    refused = watcher.log.wait("mapping.write_refused", pid=demo.pid)
    assert refused["level"] == "critical"
    assert (refused["path"], refused["writer_comm"]) == (os.fsdecode(demo.lib), "cp")
    assert refused["writer_exe"].endswith("/cp") and refused["writer_cmdline"][0] == "cp"
    assert refused["mapped_ino"] == os.stat(demo.lib).st_ino
    assert "O_WRONLY" in refused["flags"] and "mv" in refused["detail"]
    mark = len(demo.lines)
    demo.wait_for_line("so1: version 1", after=mark)  # still running the old code, alive
    assert demo.proc.poll() is None
    cp(demo.dir / "so2.so", demo.lib)  # the same writer again: a new process, a new line
    wait_for(lambda: len([e for e in watcher.log.read() if e["event"] == "mapping.write_refused"
                          and e["pid"] == demo.pid]) == 2 or None,
             what="a second mapping.write_refused")
    assert not watcher.log.find("mapping.overwritten")
    watcher.stop()
    report = run_cli("report", str(watcher.log.path), "--pid", str(demo.pid), "--json")
    verdict = json.loads(report.stdout.splitlines()[0])
    assert verdict["outcome"] == "running", verdict
    assert verdict["verdict"].endswith(f"; the guard refused 2 writes that would have crashed it, "
                                       f"to {os.fsdecode(demo.lib)} (the last by cp)")


def test_reads_dlopen_and_mv_over_are_untouched(start_demo, start_watcher, tmp_path):
    demo = start_demo("leak")
    watcher = guarded_watch(start_watcher, demo)
    data = open(demo.lib, "rb").read()
    assert subprocess.run(["cat", demo.lib], capture_output=True, check=True).stdout == data
    digest = subprocess.run(["sha256sum", demo.lib], capture_output=True, check=True, text=True)
    assert digest.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    # another process dlopens the guarded file and runs it
    loaded = subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])",
                             os.fsdecode(demo.lib)], capture_output=True, timeout=TIMEOUT)
    assert loaded.returncode == 0, loaded.stderr
    new = tmp_path / "new.so"
    shutil.copyfile(demo.dir / "so2.so", new)  # beside it, then mv over: harmless, reported
    os.rename(new, demo.lib)
    watcher.log.wait("mapping.replaced", pid=demo.pid)
    assert not watcher.log.find("mapping.write_refused")


def test_a_file_no_target_maps_is_written_freely(start_demo, start_watcher):
    demo = start_demo("leak")
    guarded_watch(start_watcher, demo)
    other = demo.dir / "so2.so"  # beside the guarded one, mapped by nobody
    with open(other, "ab") as f:
        f.write(b"\0")
    assert cp(demo.dir / "so1.so", other).returncode == 0


def test_the_guard_follows_a_reload_to_the_new_file(start_demo, start_watcher, tmp_path):
    """Marks come and go with the mappings: after mv + the demo's reload, the new inode is
    guarded and the old one (deleted, unmapped) is not."""
    demo = start_demo("hold", interval_ms=60_000)
    watcher = guarded_watch(start_watcher, demo)
    new = tmp_path / "new.so"
    shutil.copyfile(demo.dir / "so2.so", new)
    os.rename(new, demo.lib)
    demo.tick("so2: version 2")
    watcher.log.wait("mapping.reloaded", pid=demo.pid)
    done = wait_for(lambda: (d := cp(demo.dir / "so1.so", demo.lib)).returncode and d or None,
                    what="cp over the reloaded library refused")
    assert "so.so" in done.stderr
    assert watcher.log.wait("mapping.write_refused", pid=demo.pid)["mapped_ino"] == os.stat(demo.lib).st_ino


def test_after_kill_9_of_the_daemon_nothing_stays_blocked(start_demo, start_watcher):
    demo = start_demo("leak")
    watcher = guarded_watch(start_watcher, demo)
    helper = watcher.log.find("guard.started")["helper_pid"]
    assert cp(demo.dir / "so2.so", demo.lib).returncode == 1
    watcher.proc.send_signal(signal.SIGKILL)
    watcher.proc.wait(timeout=TIMEOUT)
    # the helper dies with the daemon (PR_SET_PDEATHSIG), and with it the marks
    wait_for(lambda: not os.path.exists(f"/proc/{helper}") or None, what="the guard's helper gone")
    assert cp(demo.dir / "so2.so", demo.lib).returncode == 0  # through: the crash case again


def test_without_cap_sys_admin_guard_is_one_line_and_exit_2(start_demo):
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv")
    demo = start_demo("leak")
    done = subprocess.run([setpriv, "--inh-caps=-sys_admin", "--bounding-set=-sys_admin",
                           sys.executable, "-m", "inodewatch", "--pid", str(demo.pid), "--guard"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "CAP_SYS_ADMIN" in done.stderr, done.stderr
    assert done.stderr.startswith("inodewatch: --guard: ")


def test_when_the_target_exits_its_file_is_written_freely_again(start_demo, start_watcher):
    """Marks go with the last target mapping the file: the daemon (watching a second demo,
    so it keeps running) lets the cp through once the first demo has exited."""
    demo, other = start_demo("leak"), start_demo("leak")
    watcher = start_watcher(demo.pid, other.pid, extra=["--guard"])
    watcher.log.wait("guard.started")
    assert cp(demo.dir / "so2.so", demo.lib).returncode == 1
    demo.proc.kill()
    watcher.log.wait("target.exited", pid=demo.pid)
    done = cp(demo.dir / "so2.so", demo.lib)
    assert done.returncode == 0, done.stderr
    assert cp(other.dir / "so2.so", other.lib).returncode == 1  # the other one still guarded
