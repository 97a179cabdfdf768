"""Targets that see another file system than ours: mount namespaces, bind mounts, symlinks."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import TIMEOUT, scan_events, wait_for

pytestmark = pytest.mark.integration


def needs(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in tools:
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (util-linux)")


@pytest.fixture
def namespaced_demo(demo_build, tmp_path):
    """The demo in its own mount namespace, with a tmpfs over its plugin directory, and a
    different so.so at the same path in ours: a naive reader would call it replaced."""
    needs("unshare", "nsenter")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(demo_build / "so2.so", plugins / "so.so")  # what *we* see at the path
    script = (f"mount -t tmpfs tmpfs {plugins} && cp {demo_build}/so1.so {plugins}/so.so && "
              f"exec {demo_build}/reload --mode leak --interval-ms 50 --lib {plugins}/so.so")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "so1: version 1" in proc.stdout.readline() + proc.stdout.readline()
    yield proc, plugins / "so.so"
    proc.kill()
    proc.wait()


def inside(pid: int, command: str) -> None:
    subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c", command], check=True)


def test_judged_against_its_own_view_and_a_real_replacement_is_seen(namespaced_demo, demo_build):
    proc, lib = namespaced_demo
    assert scan_events(proc.pid) == (0, [])  # no false positive from our so.so
    inside(proc.pid, f"rm {lib} && cp {demo_build}/so2.so {lib}")
    code, events = scan_events(proc.pid)
    assert code == 1
    assert {e["event"] for e in events} == {"mapping.deleted", "mapping.replaced"}


def test_the_daemon_watches_the_file_in_the_targets_namespace(namespaced_demo, demo_build, start_watcher):
    proc, lib = namespaced_demo
    watcher = start_watcher(proc.pid, extra=["--interval", "3600"])  # inotify alone must see it
    inside(proc.pid, f"rm {lib} && cp {demo_build}/so2.so {lib}")
    watcher.log.wait("mapping.replaced", pid=proc.pid)
    code, _out, _err = watcher.stop()
    assert code == 0
    # mapping.content follows when cp's file was still empty at its create (content unknown)
    assert [e["event"] for e in watcher.log.read()
            if e["event"].startswith("mapping.") and e["event"] != "mapping.content"] == [
        "mapping.deleted", "mapping.replaced"]


def test_bind_mounted_plugin_directory(start_demo, tmp_path):
    needs("mount", "umount")
    real, bound = tmp_path / "real", tmp_path / "bound"
    real.mkdir()
    bound.mkdir()
    subprocess.run(["mount", "--bind", str(real), str(bound)], check=True)
    try:
        demo = start_demo("leak", lib=os.fsencode(bound / "so.so"))
        assert scan_events(demo.pid) == (0, [])
        os.unlink(real / "so.so")  # replaced through the other name of the directory
        shutil.copy(demo.dir / "so2.so", real / "so.so")
        code, events = scan_events(demo.pid)
        assert code == 1 and {e["event"] for e in events} == {"mapping.deleted", "mapping.replaced"}
        demo.stop()
    finally:
        wait_for(lambda: subprocess.run(["umount", str(bound)]).returncode == 0, TIMEOUT, "umount")


def test_symlinked_plugin_path(demo_build, tmp_path):
    """The host loads through a symlinked directory; maps, and inodewatch, name the real file."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    shutil.copy(demo_build / "so1.so", real / "so.so")
    host = subprocess.Popen([str(demo_build / "reload"), "--lib", str(tmp_path / "link" / "so.so"),
                             "--interval-ms", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert "so1: version 1" in host.stdout.readline() + host.stdout.readline()
        assert scan_events(host.pid) == (0, [])
        os.unlink(real / "so.so")
        shutil.copy(demo_build / "so2.so", tmp_path / "link" / "so.so")
        code, events = scan_events(host.pid)
        assert code == 1 and {e["path"] for e in events} == {str(real / "so.so")}
    finally:
        host.kill()
        host.wait()
