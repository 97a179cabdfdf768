"""A private nginx for the tests: Debian's nginx with a copy of the echo module.

Each instance lives in its own prefix (a test's tmp dir): its own nginx.conf, pid file,
error log, lock file and temp paths, listening on a free port on 127.0.0.1, with
`master_process on; worker_processes 2`.  The echo module (libnginx-mod-http-echo) is loaded
from a *copy* in PREFIX/modules/, so a test can replace or rewrite that copy; the system's
nginx config, module files and service are never read for writing or signalled (every
command gets -p and -c, and -e so not even the start-up error log is the system's).

The master runs in the foreground (`daemon off`) as the leader of its own process group, so
`stop` ends master and workers together whatever state a failed test left them in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TIMEOUT, wait_for
from inodewatch.content import locate_build_id

NGINX = Path("/usr/sbin/nginx")
MODULE_NAME = "ngx_http_echo_module.so"
MODULE_DIRS = [Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules")]

CONFIG = """\
load_module {module_ref};
daemon off;
master_process on;
worker_processes 2;
user nobody nogroup;
pid {prefix}/logs/nginx.pid;
lock_file {prefix}/logs/nginx.lock;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ echo "inodewatch echo from $pid"; }}
    }}
}}
"""


def installed_module() -> Path | None:
    """The echo module that libnginx-mod-http-echo installed, if it is."""
    return next((d / MODULE_NAME for d in MODULE_DIRS if (d / MODULE_NAME).is_file()), None)


def dpkg_style_install(path: Path, data: bytes) -> None:
    """Install `data` at `path` as dpkg unpacks a file: write PATH.dpkg-new, then rename it
    over PATH (the old inode lives on, deleted, in whoever maps it)."""
    new = path.with_name(path.name + ".dpkg-new")
    with open(new, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(new, 0o644)
    os.rename(new, path)


def with_other_build_id(data: bytes) -> bytes:
    """The same ELF object with every byte of its build-id inverted: another build as far
    as a build-id can tell, still a valid object (nothing checks the note when loading)."""
    note = locate_build_id(lambda offset, length: data[offset:offset + length], len(data))
    if note is None:
        raise ValueError("the object has no build-id to change")
    other = bytes(b ^ 0xff for b in note.value)
    return data[:note.offset] + other + data[note.offset + len(other):]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ppid_and_cmdline(pid: int) -> tuple[int, bytes] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None  # gone between the listing and the read
    # the comm in parentheses may hold anything: the fields after its last ")" do not
    return int(stat[stat.rindex(b")") + 2:].split()[1]), cmdline


class NginxInstance:
    """One private nginx under `prefix`; `start()` it, then `stop()` it, always."""

    def __init__(self, prefix: Path, module_source: Path) -> None:
        self.prefix = prefix
        self.module = prefix / "modules" / MODULE_NAME
        self.conf = prefix / "nginx.conf"
        self.error_log = prefix / "logs" / "error.log"
        # a file, not a pipe: nobody reads the master's stderr while it runs
        self.stderr_log = prefix / "logs" / "stderr.log"
        self.port = 0
        # how nginx.conf names the module: relative to the prefix as Debian's snippets do;
        # reload() can spell it otherwise (absolute, through a symlinked directory)
        self.module_ref = f"modules/{MODULE_NAME}"
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("modules", "logs", "temp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module_source, self.module)

    def _args(self) -> list[str]:
        return [str(NGINX), "-p", f"{self.prefix}/", "-c", str(self.conf),
                "-e", str(self.error_log)]

    def start(self) -> None:
        """Start the master on a free port; return once both workers run and it answers.
        A port taken between free_port() and nginx's bind is retried with another."""
        for _attempt in range(5):
            self.port = free_port()
            self._write_conf()
            with open(self.stderr_log, "wb") as stderr:
                self.proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=stderr,
                                             start_new_session=True)
            try:
                wait_for(lambda: self.proc.poll() is not None or len(self.worker_pids()) == 2,
                         what="nginx's two workers")
            except AssertionError:
                self.stop()
                raise
            if self.proc.poll() is None:
                wait_for(self._answers, what=f"nginx on 127.0.0.1:{self.port}")
                return
            self.stop()
            err = self.stderr_log.read_text(errors="replace")
            if "Address already in use" not in err:
                raise RuntimeError(f"nginx did not start: {err.strip()}")
        raise RuntimeError("nginx found no free port in 5 attempts")

    @property
    def master_pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The master's children that serve requests (not old ones shutting down)."""
        return [pid for pid, cmdline in self._children()
                if cmdline.rstrip(b"\0") == b"nginx: worker process"]

    def old_worker_pids(self) -> list[int]:
        """Workers of an earlier generation still finishing ("is shutting down")."""
        return [pid for pid, cmdline in self._children() if b"shutting down" in cmdline]

    def _children(self) -> list[tuple[int, bytes]]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                info = _ppid_and_cmdline(int(entry))
                if info and info[0] == self.master_pid:
                    found.append((int(entry), info[1]))
        return sorted(found)

    def _write_conf(self) -> None:
        self.conf.write_text(CONFIG.format(module_ref=self.module_ref, prefix=self.prefix,
                                           port=self.port))

    def send_reload(self, module_ref: str | None = None) -> None:
        """`nginx -s reload` alone, not waiting for its outcome (a reload may crash it)."""
        if module_ref is not None:
            self.module_ref = module_ref
            self._write_conf()
        subprocess.run([*self._args(), "-s", "reload"], check=True, capture_output=True,
                       timeout=TIMEOUT)

    def wait_master_exit(self) -> int:
        """The master's exit status once it has ended (negative: the signal that killed it)."""
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout=TIMEOUT)

    def reload(self, module_ref: str | None = None) -> list[int]:
        """`nginx -s reload` (SIGHUP through the pid file), first rewriting nginx.conf's
        load_module path to `module_ref` if given; then wait until two new workers serve and
        the old ones have gone; return the new workers' pids."""
        old = set(self.worker_pids())
        self.send_reload(module_ref)

        def renewed() -> list[int] | None:
            now = self.worker_pids()
            if len(now) == 2 and not old & set(now) and not self.old_worker_pids():
                return now
            return None
        return wait_for(renewed, what="nginx's new workers after a reload")

    def request(self, path: str = "/") -> str:
        """GET http://127.0.0.1:PORT/PATH (no proxy from the environment): the body."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=TIMEOUT) as response:
            return response.read().decode()

    def _answers(self) -> bool:
        try:
            return self.request().startswith("inodewatch echo from ")
        except OSError:
            return False

    def stop(self) -> None:
        """End master and workers; safe to call at any point, also after a failure.

        SIGTERM first: the master ends its workers and reaps them (killed together, they
        would be orphans nobody reaps here).  Whatever remains of the process group after
        the deadline is killed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:  # never a signal to a reaped, maybe reused, pid
            os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=TIMEOUT)
        if _group_members(self.proc.pid):  # workers left by a master that crashed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        wait_for(lambda: not _group_members(self.proc.pid), what="nginx's workers to end")
        self.proc = None


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                fields = stat[stat.rindex(b")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != b"Z":
                    members.append(int(entry))
    return members


@contextlib.contextmanager
def nginx_instance(prefix: Path) -> Iterator[NginxInstance]:
    """A started private nginx under `prefix`, stopped at the end whatever happened; skips
    the test when nginx or the echo module is not installed (.ci/run installs them)."""
    module = installed_module()
    if not NGINX.is_file() or module is None:
        pytest.skip("needs nginx and libnginx-mod-http-echo")
    instance = NginxInstance(prefix, module)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxInstance]:
    """A started private nginx in the test's tmp dir (see nginx_instance)."""
    with nginx_instance(tmp_path / "nginx") as instance:
        yield instance


def maps_inodes(pid: int, path: Path) -> set[tuple[int, bool]]:
    """(inode, deleted) of every mapping of `path` in /proc/PID/maps."""
    found = set()
    target = os.fsencode(path)
    for line in Path(f"/proc/{pid}/maps").read_bytes().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6:
            name = fields[5]
            deleted = name.endswith(b" (deleted)")
            if name.removesuffix(b" (deleted)") == target:
                found.add((int(fields[4]), deleted))
    return found
