"""The private nginx (tests/nginx_instance.py) against Debian's real nginx and echo module:
it serves from its module copy; a dpkg-style upgrade of that copy leaves master and every
worker mapping the old, deleted inode, still after `nginx -s reload` (glibc hands the
already-loaded object back by its name, so the new file is never read), and clean only
after a restart; `inodewatch scan` sees it; content identity tells a different build from
an identical reinstall."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import content_identity, run_cli, wait_for
from inodewatch.content import compare, locate_build_id
from nginx_instance import (NGINX, NginxInstance, dpkg_style_install, installed_module, maps_inodes,
                            nginx, with_other_build_id)

pytestmark = pytest.mark.integration
_ = nginx  # the fixture, used by name


def processes(instance: NginxInstance) -> list[int]:
    return [instance.master_pid, *instance.worker_pids()]


def scan(pids: list[int]) -> tuple[int, list[dict]]:
    result = run_cli("scan", *[a for pid in pids for a in ("--pid", str(pid))], "--json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def module_findings(pids: list[int], module: Path) -> dict[int, set[str]]:
    """scan's findings about the module copy: pid -> event names, for every pid scanned; the
    exit status is 1 when a finding needs a restart (its content is not identical)."""
    code, events = scan(pids)
    found: dict[int, set[str]] = {pid: set() for pid in pids}
    for event in events:
        if event.get("path") == str(module):
            found[event["pid"]].add(event["event"])
    assert code == (1 if any(e.get("content") != "identical" for e in events) else 0)
    return found


def module_content(pids: list[int], module: Path) -> set[tuple[str, str | None, str | None]]:
    """What scan says of the module's content in every deleted / replaced finding:
    (content, mapped_build_id, disk_build_id)."""
    return {(e["content"], e.get("mapped_build_id"), e.get("disk_build_id"))
            for e in scan(pids)[1] if e.get("path") == str(module)
            and e["event"] in ("mapping.deleted", "mapping.replaced")}


def build_id(data: bytes) -> bytes:
    note = locate_build_id(lambda offset, length: data[offset:offset + length], len(data))
    assert note is not None
    return note.value


def mapped_identity(pid: int, module: Path):
    """What `pid` maps of the module, read through /proc/PID/map_files (deleted or not)."""
    target = os.fsencode(module)
    for line in Path(f"/proc/{pid}/maps").read_bytes().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].removesuffix(b" (deleted)") == target:
            return content_identity(b"/proc/%d/map_files/%s" % (pid, fields[0]))
    raise AssertionError(f"{pid} does not map {module}")


def test_serves_echo_from_its_module_copy(nginx):
    body = nginx.request()
    workers = nginx.worker_pids()
    assert len(workers) == 2 and body == f"inodewatch echo from {body.split()[-1]}\n"
    assert int(body.split()[-1]) in workers  # a worker answered, with the echo module
    copy = nginx.module.stat().st_ino
    system = installed_module()
    for pid in processes(nginx):
        assert maps_inodes(pid, nginx.module) == {(copy, False)}, pid
        assert not maps_inodes(pid, system), f"{pid} maps the system's module"
    assert module_findings(processes(nginx), nginx.module) == {p: set() for p in processes(nginx)}


def upgrade_and_reload(nginx: NginxInstance, new: bytes, expected_content: str) -> int:
    """Install `new` over the module copy as dpkg does, then reload: what master and workers
    map before and after the reload, what scan and content identity say of it."""
    old_ino = nginx.module.stat().st_ino
    dpkg_style_install(nginx.module, new)
    new_ino = nginx.module.stat().st_ino
    assert new_ino != old_ino and nginx.module.read_bytes() == new
    before = processes(nginx)
    for pid in before:
        assert maps_inodes(pid, nginx.module) == {(old_ino, True)}, pid
    stale = module_findings(before, nginx.module)
    assert all(stale[pid] & {"mapping.deleted", "mapping.replaced"} for pid in before), stale
    disk = content_identity(nginx.module)
    mapped = mapped_identity(nginx.master_pid, nginx.module)
    assert compare(mapped, disk) == expected_content
    told = {(expected_content, mapped.build_id, disk.build_id)}
    assert module_content(before, nginx.module) == told

    workers = nginx.reload()
    assert set(workers).isdisjoint(before)
    after = processes(nginx)
    # Measured: the reload does not pick the new file up.  Master and the new workers (forked
    # from it) map only the old, deleted inode; the new one is mapped by no process.
    for pid in after:
        assert maps_inodes(pid, nginx.module) == {(old_ino, True)}, pid
    stale = module_findings(after, nginx.module)
    assert all(stale[pid] & {"mapping.deleted", "mapping.replaced"} for pid in after), stale
    assert compare(mapped_identity(nginx.master_pid, nginx.module), disk) == expected_content
    assert module_content(after, nginx.module) == told
    # scan's exit status: 1 for another build (a restart is needed), 0 for the same bytes
    assert scan(after)[0] == (1 if expected_content == "different" else 0)
    assert nginx.request().startswith("inodewatch echo from ")
    return new_ino


def test_upgrade_to_another_build_is_stale_until_a_restart(nginx):
    old = nginx.module.read_bytes()
    new = with_other_build_id(old)
    assert build_id(new) == bytes(b ^ 0xff for b in build_id(old)) and len(new) == len(old)
    new_ino = upgrade_and_reload(nginx, new, "different")

    nginx.stop()
    nginx.start()  # the rewritten copy loads and serves: the build-id is only a note
    assert nginx.request().startswith("inodewatch echo from ")
    for pid in processes(nginx):
        assert maps_inodes(pid, nginx.module) == {(new_ino, False)}, pid
    assert module_findings(processes(nginx), nginx.module) == {p: set() for p in processes(nginx)}
    assert compare(mapped_identity(nginx.master_pid, nginx.module),
                   content_identity(nginx.module)) == "identical"


def test_identical_reinstall_is_stale_by_inode_identical_by_content(nginx):
    upgrade_and_reload(nginx, nginx.module.read_bytes(), "identical")



def test_a_start_that_fails_stops_and_says_why(tmp_path):
    """A module nginx cannot load: start raises with nginx's own words, nothing is left."""
    module = installed_module()
    if not NGINX.is_file() or module is None:
        pytest.skip("needs nginx and libnginx-mod-http-echo")
    instance = NginxInstance(tmp_path / "nginx", module)
    instance.module.write_bytes(b"not an ELF object")
    with pytest.raises(RuntimeError, match="ngx_http_echo_module.so"):
        instance.start()
    assert instance.proc is None
    instance.stop()  # again: harmless


@pytest.mark.parametrize("spelling", ["dot", "symlinked_dir"])
def test_module_path_spelled_otherwise_maps_both_versions(nginx, spelling):
    """Measured: a reload whose load_module names the upgraded file by another spelling
    (PREFIX/modules/./NAME, or through a symlink to the modules directory) makes glibc open
    it as a new object (its name matches no loaded one, its inode neither); the old one
    stays too, so master and workers map both inodes under one path (the kernel's name is
    the resolved one)."""
    if spelling == "dot":
        ref = f"{nginx.prefix}/modules/./{nginx.module.name}"
    else:
        (nginx.prefix / "modlink").symlink_to("modules")
        ref = f"modlink/{nginx.module.name}"
    old_ino = nginx.module.stat().st_ino
    dpkg_style_install(nginx.module, with_other_build_id(nginx.module.read_bytes()))
    new_ino = nginx.module.stat().st_ino
    nginx.reload(ref)
    for pid in processes(nginx):
        assert maps_inodes(pid, nginx.module) == {(old_ino, True), (new_ino, False)}, pid
    stale = module_findings(processes(nginx), nginx.module)
    assert all(stale.values()), stale
    assert nginx.request().startswith("inodewatch echo from ")


def test_in_place_rewrite_of_identical_bytes_crashes_workers_then_the_master(nginx):
    """Measured: `cp` of the very same bytes over the live module (truncate, then write)
    drops the processes' relocated pages: the worker serving the next request dies of
    SIGSEGV (as does each one the master forks to replace it), and at the next reload the
    master itself dies of SIGSEGV."""
    data = nginx.module.read_bytes()
    ino = nginx.module.stat().st_ino
    with open(nginx.module, "wb") as f:  # as cp does: O_TRUNC, then write
        f.write(data)
    assert nginx.module.stat().st_ino == ino and nginx.module.read_bytes() == data
    with pytest.raises(OSError):
        nginx.request()
    # the master logs its worker's death when it has handled the SIGCHLD: soon, not at once
    wait_for(lambda: "exited on signal 11" in nginx.error_log.read_text(),
             what="nginx's alert about its worker's SIGSEGV")
    nginx.send_reload()
    assert nginx.wait_master_exit() == -signal.SIGSEGV
