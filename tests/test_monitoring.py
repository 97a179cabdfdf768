"""scan for monitoring: the Nagios/Icinga plugin line and exit codes, and the node_exporter
textfile (parsed with prometheus-client's own parser)."""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli
from inodewatch.cgroups import Placement
from inodewatch.model import Content, FileId, Finding
from inodewatch.nagios import CRITICAL, OK, UNKNOWN, WARNING, status_line, unknown_line
from inodewatch.packages import Package
from inodewatch.restart import Member, groups, plan
from inodewatch.scanmetrics import MAX_SERIES, OTHER, registry_for

DIFFERENT = Content("different", "aa" * 20, "bb" * 20, None)
UNKNOWN_CONTENT = Content("unknown", None, None, "nothing at the path")
IDENTICAL = Content("identical", "aa" * 20, "aa" * 20, None)
NGINX = Placement(b"nginx.service")


def rm_cp(path=b"/usr/lib/x.so", content=DIFFERENT, ino=12):
    return [Finding("mapping", "deleted", path, FileId(1, ino), content=content),
            Finding("mapping", "replaced", path, FileId(1, ino), FileId(1, 99), content=content)]


def nginx(content=DIFFERENT):
    return [(Member(10, b"nginx", 1, NGINX), rm_cp(content=content)),
            (Member(11, b"nginx", 10, NGINX), rm_cp(content=content))]


def line_for(reports, scanned=40, skipped=60):
    gs = groups(reports)
    return status_line(gs, plan(gs, str)[0], scanned, skipped)


# --- Nagios -------------------------------------------------------------------------------


def test_plugin_states():
    assert line_for([]) == (OK, "INODEWATCH OK - no process needs a restart | stale_processes=0;;;0 "
                                "stale_files=0;;;0 restarts=0;;;0 identical_processes=0;;;0 "
                                "scanned=40;;;0 skipped=60;;;0")
    code, line = line_for(nginx())
    assert code == CRITICAL
    assert line == ("INODEWATCH CRITICAL - 2 processes need a restart for 1 stale file; restart "
                    "nginx.service | stale_processes=2;;;0 stale_files=1;;;0 restarts=1;;;0 "
                    "identical_processes=0;;;0 scanned=40;;;0 skipped=60;;;0")
    assert line_for(nginx(UNKNOWN_CONTENT))[0] == WARNING
    code, line = line_for([*nginx(IDENTICAL), (Member(7, b"reload", 1, None), rm_cp(b"/opt/so.so", UNKNOWN_CONTENT))])
    assert code == WARNING and "1 process needs a restart for 1 stale file; restart pid 7 (reload) |" in line
    assert "identical_processes=2;;;0" in line
    code, line = line_for(nginx(IDENTICAL))
    assert (code, line.split(" | ")[0]) == (OK, "INODEWATCH OK - no process needs a restart "
                                                "(2 run replaced files of identical content)")
    duplicated = [Finding("mapping", "duplicated", b"/x.so", FileId(1, 12), FileId(1, 13))]
    assert line_for([(Member(3, b"a", 1, None), duplicated)])[0] == CRITICAL


def test_no_name_can_break_the_plugin_line():
    evil = Placement(b"x|y=1;;;0\n.service")
    code, line = line_for([(Member(5, b"a", 1, evil), rm_cp())])
    assert line.count("|") == 1 and "\n" not in line and code == CRITICAL
    assert unknown_line("a|b\x1b") == "INODEWATCH UNKNOWN - a\\x7cb\\x1b"


@pytest.mark.integration
def test_the_plugin_exit_codes_on_real_demos(start_demo):
    intact, unknown, different, identical = (start_demo("leak") for _ in range(4))
    os.unlink(unknown.lib)  # nothing at the path: what it runs cannot be compared
    os.unlink(different.lib)
    different.copy_lib("so2.so")
    os.unlink(identical.lib)
    identical.copy_lib("so1.so")

    def plugin(*demos):
        result = run_cli("scan", *(a for d in demos for a in ("--pid", str(d.pid))), "--nagios")
        assert result.stderr == "" and result.stdout.count("\n") == 1, result
        return result.returncode, result.stdout

    assert plugin(intact)[0] == OK
    assert plugin(identical)[0] == OK
    assert plugin(intact, unknown)[0] == WARNING
    code, out = plugin(unknown, different, identical)
    assert code == CRITICAL and out.startswith("INODEWATCH CRITICAL - 2 processes need a restart")
    gone = run_cli("scan", "--pid", str(2 ** 22 + 1), "--nagios")
    assert (gone.returncode, gone.stdout) == (UNKNOWN, f"INODEWATCH UNKNOWN - no such process: {2 ** 22 + 1}\n")
    usage = run_cli("scan", "--nagios")
    assert usage.returncode == UNKNOWN and usage.stdout.startswith("INODEWATCH UNKNOWN - usage error")
    both = run_cli("scan", "--all", "--nagios", "--json")
    assert both.returncode == UNKNOWN


# --- the textfile -------------------------------------------------------------------------


def parsed(reports, scanned=40, skipped=60):
    text = generate_latest(registry_for(groups(reports), scanned, skipped, now=1.5e9)).decode()
    return {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
            for f in text_string_to_metric_families(text)}


def test_the_textfile_per_unit_and_per_file():
    packaged = [f._replace(package=Package("libssl3:amd64", "3.0.15-1~deb12u1"))
                for f in rm_cp(b"/usr/lib/x86_64-linux-gnu/libssl.so.3")]
    got = parsed([*nginx(), (Member(10, b"nginx", 1, NGINX), packaged),
                  (Member(20, b"app", 1, Placement(b"user@1000.service", b"app.service")), rm_cp()),
                  (Member(30, b"web", 1, Placement(None, None, "docker", b"ab" * 32)), rm_cp()),
                  (Member(40, b"db", 1, None), rm_cp(b"/opt/db.so", IDENTICAL))])
    assert got["inodewatch_scan_stale_processes"] == {
        (("container", ""), ("unit", "nginx.service"), ("user_unit", "")): 2,
        (("container", ""), ("unit", "user@1000.service"), ("user_unit", "app.service")): 1,
        (("container", "docker:" + "ab" * 32), ("unit", ""), ("user_unit", "")): 1}
    assert got["inodewatch_scan_stale_file_processes"] == {
        (("package", ""), ("path", "/usr/lib/x.so")): 4,
        (("package", "libssl3:amd64 3.0.15-1~deb12u1"), ("path", "/usr/lib/x86_64-linux-gnu/libssl.so.3")): 1}
    # the community script's metric: processes mapping a deleted file, whatever its content
    assert got["node_processes_linking_deleted_libraries"] == {
        (("library_name", "x.so"), ("library_path", "/usr/lib")): 4,
        (("library_name", "libssl.so.3"), ("library_path", "/usr/lib/x86_64-linux-gnu")): 1,
        (("library_name", "db.so"), ("library_path", "/opt")): 1}
    assert got["inodewatch_scan_identical_processes"] == {(): 1}
    assert got["inodewatch_scan_processes_scanned"] == {(): 40}
    assert got["inodewatch_scan_processes_skipped"] == {(): 60}
    assert got["inodewatch_scan_timestamp_seconds"] == {(): 1.5e9}


def test_hostile_names_stay_labels_and_a_flood_stays_small():
    weird = b'/tmp/a"b\\c\nd\xff.so'
    got = parsed([(Member(5, b"x", 1, None), rm_cp(weird))])
    (labels,) = got["inodewatch_scan_stale_file_processes"]
    assert dict(labels)["path"] == weird.decode("utf-8", "backslashreplace")
    flood = [(Member(1000 + i, b"x", 1, None), rm_cp(b"/tmp/f%d.so" % i, ino=i)) for i in range(MAX_SERIES + 50)]
    got = parsed(flood)
    files = got["inodewatch_scan_stale_file_processes"]
    assert len(files) == MAX_SERIES + 1
    assert files[(("package", OTHER), ("path", OTHER))] == 50
    assert sum(files.values()) == MAX_SERIES + 50


@pytest.mark.integration
def test_scan_writes_the_textfile_and_prints_as_ever(start_demo, tmp_path):
    demo = start_demo("leak")
    os.unlink(demo.lib)
    demo.copy_lib("so2.so")
    (tmp_path / "metrics").mkdir()
    prom = tmp_path / "metrics" / "scan.prom"
    result = run_cli("scan", "--pid", str(demo.pid), "--json", "--metrics-file", str(prom))
    assert result.returncode == 1
    assert {json.loads(line)["event"] for line in result.stdout.splitlines()} == {
        "mapping.deleted", "mapping.replaced"}
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    (sample,) = families["inodewatch_scan_stale_file_processes"].samples
    assert sample.labels["path"] == os.fsdecode(demo.lib) and sample.value == 1
    assert list(prom.parent.iterdir()) == [prom]  # no temporary file left
    bad = run_cli("scan", "--pid", str(demo.pid), "--metrics-file", str(tmp_path / "no" / "x.prom"))
    assert bad.returncode == 2 and bad.stderr.startswith("inodewatch: cannot write metrics file")
