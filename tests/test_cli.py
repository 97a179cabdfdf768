"""The command line contract: exit codes and one-line errors."""

from __future__ import annotations

import os

import pytest

from conftest import run_cli


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
