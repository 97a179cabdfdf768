"""Hostile hosts, items 6 and 11: a user's processes mapping many files must not take every
inotify watch nor the operator's own targets' watches, and a user flooding a plugin's
directory (or opening the plugin in a loop) must not blind the daemon.  Real demo, real
daemon, real log, the attacks run as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import REPO, TIMEOUT, Demo, EventLog, wait_for

pytestmark = pytest.mark.integration

PYTHON = "/usr/bin/python3"  # the attacker cannot reach this checkout's interpreter under /root
RESOURCE = "inotify_watches"


class Mappers:
    """The attacker's processes, each mapping `count` distinct files of its own (tests/mapmany.py),
    named `name` so that `--name name` matches them."""

    def __init__(self, attacker, name: str) -> None:
        self.attacker = attacker
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="iwmap"))
        self.dir.chmod(0o777)
        shutil.copy(REPO / "tests" / "mapmany.py", self.dir / "mapmany.py")
        (self.dir / "mapmany.py").chmod(0o644)
        self.procs: list[subprocess.Popen] = []

    def start(self, count: int) -> subprocess.Popen:
        files = self.dir / f"p{len(self.procs)}"
        files.mkdir()
        files.chmod(0o777)
        proc = subprocess.Popen([*self.attacker.argv, PYTHON, str(self.dir / "mapmany.py"),
                                 str(files), str(count), self.name],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        return proc

    def files(self, proc: subprocess.Popen) -> list[Path]:
        return sorted((self.dir / f"p{self.procs.index(proc)}").iterdir())

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        shutil.rmtree(self.dir)


@pytest.fixture
def mappers(attacker) -> Iterator[Mappers]:
    m = Mappers(attacker, f"iwmap{os.getpid() % 100000}")
    yield m
    m.close()


class Daemon:
    """`inodewatch ARGS --log-file FILE` (selectors allowed, so not conftest's Watcher)."""

    def __init__(self, log_path: Path, args: list[str]) -> None:
        self.log = EventLog(log_path)
        self.proc = subprocess.Popen([sys.executable, "-m", "inodewatch", *args,
                                      "--log-file", str(log_path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def degraded(self) -> list[dict]:
        return [e for e in self.log.read()
                if e["event"] == "watch.degraded" and e.get("resource") == RESOURCE]

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, out, err


@pytest.fixture
def daemon(tmp_path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(*args: str) -> Daemon:
        d = Daemon(tmp_path / f"events{len(started)}.json", list(args))
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def kernel_watches(pid: int) -> list[int]:
    """The inodes the process's inotify watches are on, as the kernel lists them (fdinfo)."""
    inodes = []
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                inodes += [int(line.split(" ino:")[1].split()[0], 16)
                           for line in f if line.startswith("inotify wd:")]
        except FileNotFoundError:
            pass  # an fd closed meanwhile
    return inodes


def replace(path: Path | bytes, source: Path) -> int:
    """rm + cp, as an operator replaces a plugin; the inode removed."""
    old = os.stat(path).st_ino
    os.unlink(path)
    shutil.copyfile(source, path)
    return old


def test_the_operators_target_keeps_its_watches_and_recovery_follows(
        start_demo, mappers, daemon, demo_build):
    """A user's processes map more files than --max-watches allows; the root demo, named by
    --pid, still has every watch it needs: its rm+cp is seen with no periodic re-read to
    hide behind.  One watch.degraded names the user's processes, and watch.recovered follows
    when they are gone."""
    demo = start_demo("leak")
    hungry = [mappers.start(40) for _ in range(2)]
    d = daemon("--pid", str(demo.pid), "--name", mappers.name, "--max-watches", "50",
               "--interval", "3600")
    for pid in (demo.pid, *(p.pid for p in hungry)):
        d.log.wait("target.attached", pid=pid)
    degraded = wait_for(d.degraded, what="watch.degraded resource inotify_watches")[0]
    assert degraded["max_watches"] == 50 and degraded["unwatched"] > 0
    assert demo.pid not in degraded["pids"] and set(degraded["pids"]) <= {p.pid for p in hungry}
    assert len(kernel_watches(d.proc.pid)) <= 50
    old = replace(demo.lib, demo.dir / "so2.so")
    d.log.wait("mapping.deleted", pid=demo.pid, mapped_ino=old)
    d.log.wait("mapping.replaced", pid=demo.pid, mapped_ino=old)
    for proc in hungry:
        mappers.stop(proc)
    recovered = d.log.wait("watch.recovered", resource=RESOURCE)
    names = [(e["event"], e.get("resource")) for e in d.log.read()]
    assert names.count(("watch.degraded", RESOURCE)) == 1
    assert names.index(("watch.degraded", RESOURCE)) < names.index(("watch.recovered", RESOURCE))
    assert recovered["level"] == "info"
    code, _out, err = d.stop()
    assert code == 0 and err == ""


def test_an_operators_target_that_comes_later_takes_the_watches_of_the_others(
        mappers, daemon, demo_build, tmp_path):
    """The user's processes attached first and hold the whole budget; a root demo that appears
    later in the operator's cgroup (--cgroup) gets its watches from theirs (the kernel's list
    of the daemon's watches shows its plugin's inode, and never more than the budget)."""
    cgroup = Path(f"/sys/fs/cgroup/unified/iwwatch{os.getpid()}")
    try:
        cgroup.mkdir()
    except OSError as exc:
        pytest.skip(f"needs a writable cgroup v2 hierarchy: {exc}")
    hungry = [mappers.start(40) for _ in range(2)]
    demo = None
    try:
        # the periodic re-read finds the plugin mapped after the exec that attached the demo
        d = daemon("--name", mappers.name, "--cgroup", f"/{cgroup.name}", "--max-watches", "50",
                   "--interval", "0.5")
        for proc in hungry:
            d.log.wait("target.attached", pid=proc.pid)
        wait_for(d.degraded, what="watch.degraded resource inotify_watches")
        work = tmp_path / "demo"
        work.mkdir()
        for name in ("so1.so", "so2.so"):
            shutil.copy(demo_build / name, work / name)
        shutil.copy(demo_build / "so1.so", work / "so.so")
        procs = str(cgroup / "cgroup.procs")
        demo = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {procs} && exec "$0" "$@"', str(demo_build / "reload"),
             "--mode", "hold", "--interval-ms", "60000", "--lib", str(work / "so.so")],
            stdout=subprocess.PIPE)
        assert demo.stdout is not None
        while b"so1: version 1" not in demo.stdout.readline():
            assert demo.poll() is None, "the demo did not start"
        attached = d.log.wait("target.attached", pid=demo.pid)
        assert attached["selector"] == f"cgroup=/{cgroup.name}"
        plugin = os.stat(work / "so.so").st_ino
        wait_for(lambda: plugin in kernel_watches(d.proc.pid), what="a watch on the demo's plugin")
        assert len(kernel_watches(d.proc.pid)) <= 50
        old = replace(work / "so.so", work / "so2.so")
        d.log.wait("mapping.deleted", pid=demo.pid, mapped_ino=old)
        d.log.wait("mapping.replaced", pid=demo.pid, mapped_ino=old)
        assert len(d.degraded()) == 1
    finally:
        if demo is not None:
            demo.kill()
            demo.wait()
            if demo.stdout:
                demo.stdout.close()
        for proc in hungry:
            mappers.stop(proc)
        wait_for(lambda: not (cgroup / "cgroup.procs").read_text().strip(),
                 what="the test cgroup to empty")
        cgroup.rmdir()


def test_unwatched_files_are_still_compared_at_the_periodic_reread(start_demo, mappers, daemon):
    """With a budget of 12 watches the user's process gets a few of its 30 files watched at
    most; root replaces every one of them: each is still reported, by the re-read."""
    demo = start_demo("leak")
    proc = mappers.start(30)
    d = daemon("--pid", str(demo.pid), "--name", mappers.name, "--max-watches", "12",
               "--interval", "0.2")
    d.log.wait("target.attached", pid=proc.pid)
    degraded = wait_for(d.degraded, what="watch.degraded resource inotify_watches")[0]
    assert proc.pid in degraded["pids"] and degraded["unwatched"] >= 20
    replaced = {replace(f, Path(demo.dir) / "so2.so"): f for f in mappers.files(proc)}
    for ino in replaced:
        d.log.wait("mapping.deleted", pid=proc.pid, mapped_ino=ino)


@pytest.fixture
def sticky(demo_build) -> Iterator[Callable[..., Demo]]:
    """Factory: demos in one directory of mode 1777, as a shared plugin directory can be
    (anyone may make names beside the plugins), each loading its own plugin `lib`."""
    work = Path(tempfile.mkdtemp(prefix="iwsticky"))
    work.chmod(0o1777)
    demos: list[Demo] = []

    def start(mode: str, lib: bytes, interval_ms: int = 50) -> Demo:
        demo = Demo(demo_build, work, mode, interval_ms, lib)
        demos.append(demo)
        demo.wait_for_line("so1: version 1")
        return demo
    try:
        yield start
    finally:
        for demo in demos:
            demo.stop()
        shutil.rmtree(work)


def flood(attacker, script: str) -> subprocess.Popen:
    """The attacker runs `script` (Python) until killed."""
    return subprocess.Popen([*attacker.argv, PYTHON, "-c", script],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


NAMES = """
import os
i = 0
while True:
    p = os.path.join({dir!r}, "x%d" % (i % 1000))
    open(p, "w").close()
    os.rename(p, p + ".new")
    os.unlink(p + ".new")
    i += 1
"""

OPENS = """
import os
while True:
    os.close(os.open({path!r}, os.O_RDONLY))
"""


def stop_flood(noise: subprocess.Popen) -> None:
    alive = noise.poll() is None
    noise.kill()
    noise.wait()
    assert alive, noise.stderr.read() if noise.stderr else "the flood ended early"


def test_a_flood_of_names_beside_the_plugins_does_not_hide_their_replacement(
        attacker, sticky, start_watcher):
    """Leak-mode demos keep their first plugin mapped: each rm+cp is one divergence to tell."""
    demos = [sticky("leak", lib) for lib in (b"a.so", b"b.so", b"c.so")]
    watcher = start_watcher(*(d.pid for d in demos), extra=["--interval", "3600"])
    noise = flood(attacker, NAMES.format(dir=str(demos[0].dir)))
    try:
        wait_for(lambda: any(n.startswith("x") for n in os.listdir(demos[0].dir)),
                 what="the attacker's names")
        for demo in demos:
            old = replace(demo.lib, Path(demo.dir) / "so2.so")
            watcher.log.wait("mapping.deleted", pid=demo.pid, mapped_ino=old)
            watcher.log.wait("mapping.replaced", pid=demo.pid, mapped_ino=old)
    finally:
        stop_flood(noise)
    code, _out, err = watcher.stop()
    assert code == 0 and err == ""


def test_an_open_flood_on_a_new_plugin_hides_neither_its_reload_nor_another_replacement(
        attacker, sticky, start_watcher):
    """After rm+cp the new file is watched for opens (its open is the reload); the attacker
    opens it in a loop.  The host's reload is still told, and so is the replacement of
    another host's plugin in the same directory."""
    host = sticky("hold", b"h.so", interval_ms=60_000)
    other = sticky("leak", b"l.so")
    watcher = start_watcher(host.pid, other.pid, extra=["--interval", "3600"])
    old = replace(host.lib, Path(host.dir) / "so2.so")
    watcher.log.wait("mapping.replaced", pid=host.pid, mapped_ino=old)
    noise = flood(attacker, OPENS.format(path=os.fsdecode(host.lib)))
    try:
        host.tick("so2: version 2")
        watcher.log.wait("mapping.reloaded", pid=host.pid, old_ino=old,
                         new_ino=os.stat(host.lib).st_ino)
        old = replace(other.lib, Path(other.dir) / "so2.so")
        watcher.log.wait("mapping.deleted", pid=other.pid, mapped_ino=old)
        watcher.log.wait("mapping.replaced", pid=other.pid, mapped_ino=old)
    finally:
        stop_flood(noise)
    code, _out, err = watcher.stop()
    assert code == 0 and err == ""
