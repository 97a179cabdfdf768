"""A minimal Debian booted under systemd-nspawn, for the tests of the units under a real systemd.

The root file system is made once with mmdebstrap (~45 s) and cached under
/var/cache/inodewatch-tests (INODEWATCH_TEST_CACHE), keyed by the suite, the package list and
the dependency wheels; it already holds a venv (/opt/inodewatch) with inodewatch's
dependencies, installed from wheels made on this host (the container needs no network).  Each
session boots a copy of it (`cp --reflink=auto`, ~2 s) with the checkout's wheel, units and
C demo put in, and removes the copy at the end, whatever happened.

The container is booted as the issue measured it: `--capability=CAP_NET_ADMIN,
CAP_CHECKPOINT_RESTORE` (so the unit's own capability set applies), the host's network (no
--private-network: nspawn's default), no user namespace.  Commands run inside by entering the
namespaces of its init with nsenter, which needs no machined, D-Bus or systemd on the host: on
a host without systemd as PID 1 the container is started with --register=no --keep-unit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("INODEWATCH_TEST_CACHE", "/var/cache/inodewatch-tests"))
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libnss-systemd", "python3", "python3-venv", "procps",
            "logrotate")
# Beyond nspawn's default set, what the units grant: the proc connector and map_files
CAPABILITIES = "CAP_NET_ADMIN,CAP_CHECKPOINT_RESTORE"
# Beyond nspawn's own seccomp allow list (which leaves fanotify out): the guard's calls
SYSTEM_CALLS = "fanotify_init fanotify_mark"
VENV = "/opt/inodewatch"
DEMO_DIR = "/opt/demo"
BOOT_TIMEOUT = 90.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable() -> str | None:
    """Why a container cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, mmdebstrap)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap"),
                          ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: apt-get install -y {package})"
    return None


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time (two test sessions on one machine share the cache)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args],
                   check=True, capture_output=True, text=True)


def _requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def dependency_wheels(cache: Path = CACHE) -> list[Path]:
    """Wheels of inodewatch's dependencies, made (or downloaded) on this host once."""
    requirements = _requirements()
    where = cache / f"wheels-{_digest(*requirements)}"
    with _locked(cache):
        if not where.is_dir():
            partial = where.with_name(where.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            _pip("wheel", "--wheel-dir", str(partial), *requirements)
            partial.rename(where)
    return sorted(where.glob("*.whl"))


def inodewatch_wheel(cache: Path = CACHE, repo: Path = REPO) -> Path:
    """The checkout's own wheel (pip wheel --no-deps), remade when its sources change."""
    sources = [repo / "pyproject.toml", repo / "README.md", *sorted((repo / "inodewatch").glob("*.py"))]
    where = cache / f"inodewatch-{_digest(*(p.read_bytes() for p in sources))}"
    with _locked(cache):
        if not where.is_dir():
            for old in cache.glob("inodewatch-*"):  # wheels of sources a day old are stale
                if time.time() - old.stat().st_mtime > 86400:
                    shutil.rmtree(old, ignore_errors=True)
            partial = where.with_name(where.name + ".partial")
            # built from a copy: pip would leave build/ in the checkout
            with _scratch(cache) as tree:
                for name in ("pyproject.toml", "README.md"):
                    shutil.copy(repo / name, tree / name)
                shutil.copytree(repo / "inodewatch", tree / "inodewatch",
                                ignore=shutil.ignore_patterns("__pycache__"))
                _pip("wheel", "--no-deps", "--wheel-dir", str(partial), str(tree))
            partial.rename(where)
    return next(where.glob("inodewatch-*.whl"))


@contextlib.contextmanager
def _scratch(cache: Path) -> Iterator[Path]:
    import tempfile
    path = Path(tempfile.mkdtemp(dir=cache, prefix="scratch-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rootfs(wheels: Sequence[Path], cache: Path = CACHE) -> Path:
    """The cached image: mmdebstrap's minbase with PACKAGES, and a venv holding `wheels`."""
    where = cache / f"rootfs-{_digest(SUITE, *PACKAGES, *(w.name for w in wheels))}"
    with _locked(cache):
        if (where / "usr").is_dir():
            return where
        partial = where.with_name(where.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        names = [w.name for w in wheels]
        # A clean environment in the chroot: the host's pip settings name files not there.
        env = f"env -i PATH={PATH} LANG=C.UTF-8"
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             '--customize-hook=mkdir -p "$1/opt/wheels"',
             "--customize-hook=copy-in " + " ".join(str(w) for w in wheels) + " /opt/wheels",
             f'--customize-hook=chroot "$1" {env} python3 -m venv {VENV}',
             f'--customize-hook=chroot "$1" {env} {VENV}/bin/pip install -q --no-index '
             "--disable-pip-version-check " + " ".join(f"/opt/wheels/{n}" for n in names),
             SUITE, str(partial)],
            check=True, capture_output=True, text=True)
        partial.rename(where)
    return where


def _runs(cache: Path) -> Path:
    """Where the booted copies live; copies left by a session that died are removed."""
    runs = cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in runs.iterdir():
        pid = int(old.name.rsplit("-", 1)[-1]) if old.name.rsplit("-", 1)[-1].isdigit() else 0
        if pid and not Path(f"/proc/{pid}").exists() and not _mounted_under(old):
            shutil.rmtree(old, ignore_errors=True)
    return runs


def _mounted_under(path: Path) -> bool:
    prefix = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            mount_point = line.split()[4]
            if mount_point == prefix or mount_point.startswith(prefix + b"/"):
                return True
    return False


def _host_runs_systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


class Machine:
    """A booted container: run commands in it, read its journal, power it off."""

    def __init__(self, name: str, root: Path, console: Path) -> None:
        self.name = name
        self.root = root
        self.console = console
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # --- from the outside -----------------------------------------------------------------

    def path(self, inside: str) -> Path:
        """A path of the container, seen from the host (for files put in before or after boot)."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def boot(self) -> None:
        register = [] if _host_runs_systemd() else ["--register=no", "--keep-unit"]
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--boot", *register, "--link-journal=no",
                 "--console=read-only", f"--capability={CAPABILITIES}",
                 f"--system-call-filter={SYSTEM_CALLS}", f"--hostname={self.name}",
                 "-D", str(self.root), "-M", self.name],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not (leader := self._find_leader()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not start: {self.console_tail()}")
            time.sleep(0.05)
        self.leader = leader
        while True:
            state = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                             timeout=BOOT_TIMEOUT).stdout.strip()
            if state in ("running", "degraded"):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot ({state!r}): {self.console_tail()}")
            time.sleep(0.1)
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            raise RuntimeError(f"the container booted degraded: {failed.strip()}")

    def _find_leader(self) -> int:
        """The container's init: a child of nspawn that is pid 1 of its own namespace."""
        assert self.proc is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            if fields.get("PPid") == str(self.proc.pid) and fields.get("NSpid", "").split()[-1:] == ["1"]:
                return int(entry.name)
        return 0

    def console_tail(self, lines: int = 30) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    def poweroff(self, timeout: float = 30.0) -> None:
        """systemd's own poweroff (SIGRTMIN+4 to its init); SIGKILL to the init if it hangs,
        which ends every process of the container's PID namespace."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(timeout=timeout)

    # --- inside -------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` as root in the container's namespaces (a clean environment)."""
        assert self.leader, "not booted"
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", f"PATH={PATH}",
             "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "TERM=dumb", *argv],
            capture_output=True, text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: exit {result.returncode}: "
                                 f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-euc", script], check=check)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", *args], check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """journalctl -o json ARGS: one dict per entry (values as journalctl gives them)."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args], check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@contextlib.contextmanager
def booted(name: str, cache: Path = CACHE, repo: Path = REPO) -> Iterator[Machine]:
    """A booted copy of the image, with the checkout's wheel installed, its units in
    /etc/systemd/system and the C demo (built on this host: the same bookworm glibc) in
    /opt/demo; powered off and removed at the end, whatever happened.  `name` ends in the
    caller's pid: a copy left by a session that died is removed by the next one.  `repo`: the
    tree whose package, units and demo go in (benchmarks boot another commit's)."""
    image = rootfs(dependency_wheels(cache), cache)
    wheel = inodewatch_wheel(cache, repo)
    subprocess.run(["make", "-s", "-C", str(repo / "csrc")], check=True)
    run_dir = _runs(cache) / name
    run_dir.mkdir()
    machine = Machine(name, run_dir / "root", run_dir / "console.log")
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", str(image), str(machine.root)], check=True)
        shutil.copy(wheel, machine.path("/opt/wheels"))
        machine.write("/etc/hostname", f"{name}\n")  # its own name (mmdebstrap copied ours)
        for unit in [*(repo / "systemd").glob("*.service"), *(repo / "systemd").glob("*.timer")]:
            shutil.copy(unit, machine.path("/etc/systemd/system"))
        demo = machine.path(DEMO_DIR)
        demo.mkdir(parents=True)
        for built in ("reload", "so1.so", "so2.so"):
            shutil.copy2(repo / "csrc" / built, demo / built)
        machine.boot()
        machine.run([f"{VENV}/bin/pip", "install", "-q", "--no-index", "--no-deps",
                     "--disable-pip-version-check", f"/opt/wheels/{wheel.name}"])
        machine.run(["ln", "-sf", f"{VENV}/bin/inodewatch", "/usr/local/bin/inodewatch"])
        yield machine
    finally:
        try:
            machine.poweroff()
        finally:
            if not _mounted_under(run_dir):  # never rm -r through a mount left behind
                shutil.rmtree(run_dir, ignore_errors=True)
