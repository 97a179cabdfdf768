"""The command line contract: exit codes and one-line errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import inodewatch
from conftest import HEAVY, imports_after, run_cli, wait_for


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("inodewatch ")


def test_no_such_pid_is_one_line_exit_2():
    result = run_cli("scan", "--pid", "999999999")
    assert result.returncode == 2
    assert result.stderr == "inodewatch: no such process: 999999999\n"


def test_bad_pid_is_one_line_exit_2():
    for bad in ("abc", "0", "-5"):
        result = run_cli("scan", "--pid", bad)
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1 and "not a process id" in result.stderr


def test_scan_needs_a_target():
    result = run_cli("scan")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


def test_scan_of_self_is_clean():
    result = run_cli("scan", "--pid", str(os.getpid()))
    assert result.returncode in (0, 1)  # pytest's own capture files may be deleted
    assert "scanned 1 processes" in result.stdout


@pytest.mark.parametrize("command", [["scan", "--pid"], ["--pid"]], ids=["scan", "watch"])
def test_permission_denied_names_the_capability(command):
    """Root without capabilities against another user's process: exit 2, one line."""
    import shutil
    import subprocess
    import sys

    from conftest import wait_for

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux)")
    target = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               "sleep", "600"])
    try:
        wait_for(lambda: os.stat(f"/proc/{target.pid}").st_uid == 65534, what="the uid change")
        result = subprocess.run(
            ["setpriv", "--bounding-set=-all", "--inh-caps=-all",
             "--securebits=+noroot,+noroot_locked,+no_setuid_fixup",
             sys.executable, "-m", "inodewatch", *command, str(target.pid)],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1
        assert "CAP_SYS_PTRACE" in result.stderr
    finally:
        target.kill()
        target.wait()


@pytest.mark.parametrize("columns", ["60", "100"])
def test_help_fits_the_terminal_width(columns):
    env = dict(os.environ, COLUMNS=columns)
    for command in ("scan", "report"):
        result = run_cli(command, "--help", env=env)
        assert result.returncode == 0
        assert max(map(len, result.stdout.splitlines())) <= int(columns), command


def scan_imports(args: list[str], env: dict[str, str] | None = None) -> set[str]:
    """The HEAVY modules `inodewatch scan ARGS` imported, after checking that the start-up
    rule's list of the modules on scan's path names every one of ours it imported."""
    imported = imports_after(f"from inodewatch.cli import main\nmain({args!r})", env)
    listed = set(re.findall(r"\w+", inodewatch.__doc__.partition("So the modules on scan's path:")[2]
                                           .partition("import nothing but")[0]))
    ours = {m.partition(".")[2] for m in imported if m.startswith("inodewatch.")}
    assert ours <= listed, f"not in the list of inodewatch/__init__.py: {ours - listed}"
    return imported & HEAVY


def test_scan_imports_only_what_it_needs():
    """Every scan pays its imports: keep structlog, pyinotify, psutil, dataclasses, typing,
    datetime and shutil (argparse sizes its help with it) off the scan path."""
    assert scan_imports(["scan", "--all", "--json"]) == set()


@pytest.mark.parametrize("output", [[], ["--json"], ["--nagios"]])
def test_a_scan_with_findings_imports_only_what_it_needs(tmp_path, output):
    """The whole path, findings included: content identity, the unit, and the dpkg index
    built afresh (a new cache directory) and written."""
    program = tmp_path / "sleeper"
    shutil.copy("/bin/sleep", program)
    held = subprocess.Popen([str(program), "600"])
    try:
        wait_for(lambda: os.path.basename(os.readlink(f"/proc/{held.pid}/exe")) == "sleeper",
                 what="the copy to run")
        program.unlink()  # a mapping.deleted finding
        cache = tmp_path / "cache"
        cache.mkdir(mode=0o755)
        env = dict(os.environ, CACHE_DIRECTORY=str(cache))
        assert scan_imports(["scan", "--pid", str(held.pid), *output], env) == set()
    finally:
        held.kill()
        held.wait()
    if os.path.isdir("/var/lib/dpkg/info"):
        assert os.listdir(cache) == ["dpkg-index"]


def scan_self_with_closed(fd: int, **streams: int) -> subprocess.CompletedProcess[str]:
    """`inodewatch scan` of this process, started with descriptor `fd` closed (as a careless
    cron line may start it)."""
    return subprocess.run([sys.executable, "-m", "inodewatch", "scan", "--pid", str(os.getpid())],
                          text=True, preexec_fn=lambda: os.close(fd), timeout=120, **streams)


def test_scan_with_stdout_closed_ends_cleanly():
    result = scan_self_with_closed(1, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert result.returncode in (0, 1) and result.stderr == ""


def test_scan_with_stderr_closed_ends_cleanly():
    result = scan_self_with_closed(2, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert result.returncode in (0, 1) and "scanned 1 processes" in result.stdout
