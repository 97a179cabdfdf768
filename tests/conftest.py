"""Shared fixtures: the real C demo, started in a temporary directory, and event waiting.

Nothing here sleeps for a fixed time: every wait is on a condition, with a generous
deadline, because the CI machine is shared and has two cores.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from contract import check
from inodewatch.content import HASH_BUDGET, ContentId, build_id_of_fd, digest_of_fd
from inodewatch.logread import Counts, LogEvent, parse_events

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
TIMEOUT = 20.0  # seconds: generous, the machine is noisy

T = TypeVar("T")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`scan`'s dpkg index (inodewatch.packages) goes to a directory of the session's, never
    to the host's /var/cache: the variable systemd's CacheDirectory= sets, which the
    commands the tests run inherit."""
    cache = tmp_path_factory.mktemp("cache")
    cache.chmod(0o755)
    os.environ["CACHE_DIRECTORY"] = str(cache)


def wait_for(predicate: Callable[[], T], timeout: float = TIMEOUT, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@contextlib.contextmanager
def lowered_sysctl(name: str, value: int) -> Iterator[None]:
    """Set /proc/sys/fs/inotify/<name> for the block; always restore it."""
    knob = Path("/proc/sys/fs/inotify") / name
    try:
        original = knob.read_text()
        knob.write_text(f"{value}\n")
    except OSError as exc:
        pytest.skip(f"cannot write {knob}: {exc}")
    try:
        yield
    finally:
        knob.write_text(original)


@pytest.fixture(scope="session")
def demo_build() -> Path:
    """Build the demo once per test session (make is a no-op when it is up to date)."""
    subprocess.run(["make", "-s", "-C", str(CSRC)], check=True)
    return CSRC


class Demo:
    """The seed's reload program running in its own directory, loading `lib`."""

    def __init__(self, build: Path, workdir: Path, mode: str, interval_ms: int, lib: bytes) -> None:
        self.dir = workdir
        for name in ("so1.so", "so2.so"):
            shutil.copy(build / name, workdir / name)
        self.lib = os.path.join(os.fsencode(workdir), lib)
        shutil.copyfile(build / "so1.so", self.lib)
        self.proc = subprocess.Popen(
            [str(build / "reload"), "--mode", mode, "--interval-ms", str(interval_ms),
             "--lib", self.lib],
            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_no_core_dumps)
        self.pid = self.proc.pid
        self._buffer = b""
        self.lines: list[str] = []

    def read_output(self) -> None:
        """Take in whatever the demo has printed so far, without blocking."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
        *done, self._buffer = self._buffer.split(b"\n")
        self.lines += [line.decode() for line in done]

    def wait_for_line(self, text: str, after: int = 0) -> int:
        """Wait until a line containing `text` appears at index >= after; return its index."""
        def found() -> int | None:
            self.read_output()
            for i in range(after, len(self.lines)):
                if text in self.lines[i]:
                    return i + 1
            return None
        return wait_for(found, what=f"demo output {text!r}") - 1

    def tick(self, text: str) -> None:
        """Make the demo tick now (SIGUSR1: in hold mode, a dlclose + dlopen) until it prints
        `text`: a reload exactly when the test wants it, not racing the daemon's first look."""
        mark = len(self.lines)

        def printed() -> bool:
            self.proc.send_signal(signal.SIGUSR1)  # again if it landed just before a wait
            self.read_output()
            return any(text in line for line in self.lines[mark:])
        wait_for(printed, what=f"demo output {text!r} after a tick")

    def copy_lib(self, source: str, dest: bytes | None = None) -> None:
        shutil.copyfile(self.dir / source, dest or self.lib)

    def wait_exit(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


def _no_core_dumps() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.fixture
def start_demo(demo_build: Path, tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Factory: start_demo(mode="leak", interval_ms=50, lib=b"so.so") -> a running Demo
    that has printed its first line, so its library is mapped.  A hold-mode test that must
    see a divergence before the reload uses a long interval and Demo.tick()."""
    demos: list[Demo] = []

    def start(mode: str = "leak", interval_ms: int = 50, lib: bytes = b"so.so") -> Demo:
        workdir = tmp_path / f"demo{len(demos)}"
        workdir.mkdir()
        demo = Demo(demo_build, workdir, mode, interval_ms, lib)
        demos.append(demo)
        demo.wait_for_line("so1: version 1")
        return demo

    yield start
    for demo in demos:
        demo.stop()


def cgroup2_root() -> Path | None:
    """A cgroup v2 hierarchy we may make cgroups in, if there is one."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, mount, fstype, *_ = line.split()
        if fstype == "cgroup2" and os.access(mount, os.W_OK):
            return Path(mount)
    return None


@pytest.fixture
def make_cgroup() -> Iterator[Callable[[str], Path]]:
    """Factory: make_cgroup("a.slice/b.service") -> that cgroup, made under a writable cgroup
    v2 hierarchy (the test is skipped without one).  At the end the processes a test put in
    them are killed, and the cgroups removed, deepest first."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("needs a writable cgroup v2 hierarchy")
    made: list[Path] = []

    def make(relative: str) -> Path:
        path = root
        for part in Path(relative).parts:
            path = path / part
            if not path.exists():
                path.mkdir()
                made.append(path)
        return path

    yield make
    for group in reversed(made):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: not (group / "cgroup.procs").read_text().strip(),
                 what=f"cgroup {group} to empty")
        group.rmdir()


def run_cli(*args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as an operator would."""
    return subprocess.run([sys.executable, "-m", "inodewatch", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


# The start-up rule (inodewatch/__init__.py): what nothing on scan's path may import.
HEAVY = frozenset({"structlog", "pyinotify", "psutil", "dataclasses", "typing", "datetime", "shutil"})


def imports_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module imported once `code` has run, run as the command runs (no `site`)."""
    probe = f"{code}\nimport sys\nprint(sorted(sys.modules), file=sys.stderr)"
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                            cwd=REPO, env=dict(env or os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    last = result.stderr.strip().splitlines()[-1:]
    assert last and last[0].startswith("['"), result.stderr
    return set(ast.literal_eval(last[0]))


def parse_lines(lines: Iterable[bytes | None]) -> tuple[list[LogEvent], int]:
    """Events and the number of bad lines, from captured lines (blank ones skipped)."""
    counts = Counts()
    events = list(parse_events((x for x in lines if x is None or x.strip()), counts))
    return events, counts.bad


def content_identity(path: Path | str | bytes, budget: int = HASH_BUDGET) -> ContentId:
    """A regular file's identity as the content pass reads it: its build-id, else its hash
    within `budget` bytes.  (A plain open: only for files a test made, or /proc links.)"""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        build_id = build_id_of_fd(f.fileno(), size)
        return (ContentId(build_id, None, None) if build_id
                else digest_of_fd(f.fileno(), size, budget))


def scan_events(pid: int) -> tuple[int, list[dict[str, Any]]]:
    """`inodewatch scan --pid PID --json`: its exit code and its event objects."""
    result = run_cli("scan", "--pid", str(pid), "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [check(json.loads(line), "scan") for line in result.stdout.splitlines()]


class EventLog:
    """The daemon's JSON log file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self._offset += len(complete)
            self.events += [check(json.loads(line), "daemon")
                            for line in complete.splitlines() if line.strip()]
        return self.events

    def find(self, name: str, **fields: Any) -> dict[str, Any] | None:
        for event in self.read():
            if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                return event
        return None

    def wait(self, name: str, timeout: float = TIMEOUT, **fields: Any) -> dict[str, Any]:
        try:
            return wait_for(lambda: self.find(name, **fields), timeout,
                            what=f"event {name} {fields}")
        except AssertionError as exc:
            # what the daemon did log is what tells a missed event from a slow one
            logged = "\n".join(json.dumps(e) for e in self.events[-30:])
            raise AssertionError(f"{exc}; the log so far:\n{logged}") from None

    def names(self) -> list[str]:
        return [e["event"] for e in self.read()]


class Watcher:
    """`inodewatch --pid ...` running as a real process, logging JSON lines to a file."""

    def __init__(self, log_path: Path, pids: list[int], extra: list[str]) -> None:
        args = [a for pid in pids for a in ("--pid", str(pid))]
        self.log = EventLog(log_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inodewatch", *args, "--log-file", str(log_path), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in pids:
            self.log.wait("target.attached", pid=pid)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, out, err


@pytest.fixture
def start_watcher(tmp_path: Path) -> Iterator[Callable[..., Watcher]]:
    """Factory: start_watcher(pid, ..., extra=[...]) -> a daemon that has attached to all."""
    watchers: list[Watcher] = []

    def start(*pids: int, extra: list[str] | None = None) -> Watcher:
        watcher = Watcher(tmp_path / f"events{len(watchers)}.json", list(pids), extra or [])
        watchers.append(watcher)
        return watcher

    yield start
    for watcher in watchers:
        watcher.stop()


class Attacker:
    """An unprivileged user made for the test session: the hostile-host tests run their
    attacks as it, as any local user could (`argv` prefixes a command to run as it)."""

    def __init__(self, name: str) -> None:
        import pwd
        entry = pwd.getpwnam(name)
        self.name = name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid

    @property
    def argv(self) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]

    def kill_all(self) -> None:
        subprocess.run(["pkill", "-KILL", "-U", str(self.uid)], check=False)


@pytest.fixture(scope="session")
def attacker() -> Iterator[Attacker]:
    """A fresh unprivileged user (useradd), removed with every process it left at the end."""
    if os.geteuid() != 0 or not (shutil.which("useradd") and shutil.which("setpriv")):
        pytest.skip("needs root, useradd and setpriv")
    name = f"iwattack{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    user = Attacker(name)
    try:
        yield user
    finally:
        user.kill_all()
        wait_for(lambda: subprocess.run(["pgrep", "-U", str(user.uid)],
                                        capture_output=True).returncode == 1,
                 what=f"the processes of {name} to end")
        subprocess.run(["userdel", name], check=False, capture_output=True)
