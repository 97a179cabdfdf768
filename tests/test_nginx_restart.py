"""`scan` after a dpkg-style upgrade of the private nginx's echo module, in the operator's
words: master and workers one entry, the unit to restart, the package of the module.

The private instance loads a copy of the module (tests/nginx_instance.py): no system file is
replaced.  Its unit is a cgroup made under /sys/fs/cgroup and named like a service; its
package comes from a copy of this host's dpkg database in which libnginx-mod-http-echo's
list names the copy's path (the lookup on the real database itself: tests/test_packages.py).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from inodewatch.packages import Dpkg
from inodewatch.render import print_scan_table
from inodewatch.scan import attach_packages, scan_pids
from nginx_instance import NginxInstance, dpkg_style_install, nginx, with_other_build_id

pytestmark = pytest.mark.integration
_ = nginx  # the fixture, used by name

DPKG = Path("/var/lib/dpkg")
PACKAGE = "libnginx-mod-http-echo"


def upgrade(instance: NginxInstance) -> list[int]:
    """dpkg's way (MODULE.dpkg-new renamed over it) with another build; the processes."""
    dpkg_style_install(instance.module, with_other_build_id(instance.module.read_bytes()))
    return [instance.master_pid, *instance.worker_pids()]


def test_master_and_workers_are_one_entry_with_their_unit(nginx, make_cgroup):
    unit = f"iw-nginx-{os.getpid()}.service"
    group = make_cgroup(f"iwtest-{os.getpid()}.slice/{unit}")
    pids = upgrade(nginx)
    for pid in pids:
        (group / "cgroup.procs").write_text(str(pid))
    master, *workers = pids
    result = run_cli("scan", *(a for pid in pids for a in ("--pid", str(pid))))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    who = f"nginx: master {master} and 2 workers ({workers[0]}, {workers[1]})"
    rows = [line.split("  ") for line in lines[1:lines.index("")]]
    assert [[cell.strip() for cell in row if cell.strip()] for row in rows] == [
        [who, str(nginx.module), "replaced; old inode deleted", "different", "-"]]
    assert lines[lines.index("To restart:") + 1:-1] == [
        f"  systemctl restart {unit}", f"      {who}: {nginx.module}"]


@pytest.mark.skipif(not (DPKG / "status").is_file() or shutil.which("dpkg-query") is None,
                    reason="needs dpkg")
def test_the_stale_module_is_named_with_its_package(nginx, tmp_path, make_cgroup):
    pids = upgrade(nginx)
    loose = make_cgroup(f"iwtest-{os.getpid()}.slice/no-unit")  # wherever the tests run
    for pid in pids:
        (loose / "cgroup.procs").write_text(str(pid))
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    shutil.copyfile(DPKG / "status", admin / "status")
    listed = (DPKG / "info" / f"{PACKAGE}.list").read_bytes()
    system_module = b"/usr/lib/nginx/modules/ngx_http_echo_module.so"
    assert system_module in listed.split(b"\n")
    (admin / "info" / f"{PACKAGE}.list").write_bytes(
        listed.replace(system_module, os.fsencode(nginx.module)))
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGE],
                             capture_output=True, text=True, check=True).stdout

    summary = scan_pids(pids)
    paths = {f.path for r in summary.reports for f in r.findings}
    owners = Dpkg(os.fsencode(admin), os.fsencode(tmp_path / "cache")).owners(paths)
    summary = attach_packages(summary, owners, pids)
    assert {(f.package.name, f.package.version) for r in summary.reports for f in r.findings
            if f.path == os.fsencode(nginx.module)} == {(PACKAGE, version)}
    out = io.StringIO()
    print_scan_table(summary, out)
    lines = out.getvalue().splitlines()
    assert lines[1].endswith(f"  different  {PACKAGE} {version}")
    assert lines[lines.index("To restart:") + 1:lines.index("To restart:") + 3] == [
        f"  nginx: master {pids[0]} and 2 workers ({pids[1]}, {pids[2]}), not in a unit: "
        "restart it yourself",
        f"      {nginx.module} ({PACKAGE} {version})"]
