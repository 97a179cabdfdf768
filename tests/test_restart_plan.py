"""From findings to what the operator reads: one stale file per held inode, master and
workers as one group, and per unit or container the command that restarts it."""

from __future__ import annotations

import io

import pytest

from inodewatch.cgroups import Placement
from inodewatch.model import Content, FileId, Finding
from inodewatch.packages import Package
from inodewatch.render import print_scan_table, restart_lines
from inodewatch.restart import Member, command_text, groups, label, plan, stale_files
from inodewatch.scan import ProcessReport, ScanSummary
from inodewatch.text import terminal_text

HELD, NEW = FileId(0xFE00, 12), FileId(0xFE00, 13)
DIFFERENT = Content("different", "aa" * 20, "bb" * 20, None)
IDENTICAL = Content("identical", "aa" * 20, "aa" * 20, None)
MODULE = b"/usr/lib/nginx/modules/ngx_http_echo_module.so"
NGINX = Placement(b"nginx.service")


def rm_cp(path: bytes = MODULE, content: Content | None = DIFFERENT) -> list[Finding]:
    """What a scan finds after `rm PATH; cp NEW PATH` (or dpkg's rename over it)."""
    return [Finding("mapping", "deleted", path, HELD, perms=("r--p", "r-xp"), content=content),
            Finding("mapping", "replaced", path, HELD, NEW, perms=("r--p", "r-xp"),
                    content=content)]


def users(uid: int) -> str:
    return {1000: "alice"}.get(uid, str(uid))


# --- one stale file per held inode ------------------------------------------------------------


@pytest.mark.parametrize(("kinds", "state"), [
    ({"deleted", "replaced"}, "replaced; old inode deleted"),
    ({"deleted"}, "deleted"),
    ({"replaced"}, "replaced"),
    ({"missing"}, "nothing at the path"),
    ({"deleted", "replaced", "duplicated"}, "replaced; both versions loaded; old inode deleted"),
])
def test_the_state_says_the_most_telling_first(kinds, state):
    findings = [Finding("mapping", kind, MODULE, HELD, NEW if kind != "deleted" else None)
                for kind in sorted(kinds)]
    (sf,) = stale_files(findings)
    assert sf.state == state and sf.kinds == kinds


def test_one_file_per_held_inode_and_subject():
    findings = [*rm_cp(), Finding("fd", "deleted", b"/var/log/app.log", FileId(1, 7), fd=4),
                Finding("mapping", "deleted", MODULE, FileId(0xFE00, 11))]  # an older inode
    files = stale_files(findings)
    assert [(f.subject, f.held.ino, f.state) for f in files] == [
        ("mapping", 12, "replaced; old inode deleted"), ("fd", 7, "deleted"),
        ("mapping", 11, "deleted")]
    assert files[0].content == DIFFERENT and files[1].fd == 4


# --- groups ----------------------------------------------------------------------------------


def nginx_reports(placement: Placement | None = NGINX) -> list[tuple[Member, list[Finding]]]:
    return [(Member(1234, b"nginx", 1, placement), rm_cp()),
            (Member(1240, b"nginx", 1234, placement), rm_cp()),
            (Member(1241, b"nginx", 1234, placement), rm_cp())]


def test_master_and_workers_holding_one_file_are_one_group():
    (group,) = groups(nginx_reports())
    assert [m.pid for m in group.members] == [1234, 1240, 1241]
    assert label(group, terminal_text) == "nginx: master 1234 and 2 workers (1240, 1241)"


def test_what_keeps_processes_apart():
    reports = [
        *nginx_reports(),
        # a worker of another unit (moved, or a helper in its own scope): its own entry
        (Member(1242, b"nginx", 1234, Placement(b"other.service")), rm_cp()),
        # the master's child holding another inode of the path: another file
        (Member(1243, b"nginx", 1234, NGINX),
         [Finding("mapping", "deleted", MODULE, FileId(0xFE00, 99), content=DIFFERENT)]),
        # a grandchild whose parent does not hold the file: its own group
        (Member(1300, b"nginx", 1299, NGINX), rm_cp()),
        (Member(1299, b"sh", 1234, NGINX), []),
    ]
    got = [(g.top.pid, [m.pid for m in g.members], g.file.held.ino) for g in groups(reports)]
    assert sorted(got) == [(1234, [1234, 1240, 1241], 12), (1242, [1242], 12),
                           (1243, [1243], 99), (1300, [1300], 12)]


def test_a_loop_of_parents_ends():
    """pid reuse can make two processes each other's parent in what a scan read."""
    reports = [(Member(10, b"a", 11, None), rm_cp()), (Member(11, b"a", 10, None), rm_cp())]
    assert sum(len(g.members) for g in groups(reports)) == 2


def test_labels():
    (one,) = groups([(Member(7, b"reload", 1, None), rm_cp())])
    assert label(one, terminal_text) == "pid 7 (reload)"
    mixed = groups([(Member(7, b"bash", 1, None), rm_cp()), (Member(8, b"make", 7, None), rm_cp())])
    assert label(mixed[0], terminal_text) == "pid 7 (bash) and 1 child (8)"
    many = groups([(Member(7, b"php-fpm", 1, None), rm_cp()),
                   *((Member(p, b"php-fpm", 7, None), rm_cp()) for p in range(100, 108))])
    assert label(many[0], terminal_text) == (
        "php-fpm: master 7 and 8 workers (100, 101, 102, 103, 104 and 3 more)")


# --- the plan ---------------------------------------------------------------------------------

ID = "0f99ad5f45163ed14ab8eaf92ed34bb4a631d007f8755a7d79be614bcb0df0ef"


@pytest.mark.parametrize(("placement", "command", "note"), [
    (NGINX, "systemctl restart nginx.service", None),
    (Placement(b"init.scope"), "systemctl daemon-reexec", "systemd itself (pid 1)"),
    (Placement(b"user@1000.service", b"app.service"),
     "systemctl --user -M alice@ restart app.service", None),
    (Placement(b"user@1000.service", b"init.scope"), "systemctl --user -M alice@ daemon-reexec", None),
    (Placement(b"user@1001.service", b"app.service"),
     "systemctl --user -M 1001@ restart app.service", None),
    (Placement(f"docker-{ID}.scope".encode(), None, "docker", ID.encode()),
     f"docker restart {ID}", None),
    (Placement(b"user@1000.service", f"libpod-{ID}.scope".encode(), "podman", ID.encode()),
     f"podman restart {ID}", "as alice: a rootless container"),
    (Placement(f"cri-containerd-{ID}.scope".encode(), None, "containerd", ID.encode()),
     f"crictl stop {ID}", "the kubelet starts it again, as the pod's restartPolicy says"),
    (Placement(None, None, "kubernetes", ID.encode()), f"crictl stop {ID}",
     "the kubelet starts it again, as the pod's restartPolicy says"),
    (Placement(None, None, "lxc", b"web", b"nginx.service"), "lxc-stop --reboot --name web", None),
    (Placement(b"systemd-nspawn@debian.service", None, "machined", b"debian", b"nginx.service"),
     "systemctl -M debian restart nginx.service", None),
    (Placement(b"machine-x.scope", None, "machined", b"x"), "machinectl reboot x", None),
])
def test_the_command_for_each_placement(placement, command, note):
    (action,), identical = plan(groups(nginx_reports(placement)), users)
    assert (command_text(action.command), action.note, identical) == (command, note, [])
    assert [m.pid for m in action.groups[0].members] == [1234, 1240, 1241]


@pytest.mark.parametrize(("placement", "sentence"), [
    (None, "not in a unit: restart it yourself"),
    (Placement(b"session-3.scope"), "in login session session-3.scope: restart it yourself (or log in again)"),
    (Placement(b"run-r0123.scope"), "in run-r0123.scope: restart it yourself"),
    (Placement(b"user@1000.service", b"vte-spawn-1.scope"), "in vte-spawn-1.scope of alice: restart it yourself"),
])
def test_no_command_restarts_it(placement, sentence):
    (action,), _ = plan(groups([(Member(42, b"reload", 1, placement), rm_cp())]), users)
    assert action.command is None and action.note == sentence


def test_the_plan_merges_per_unit_and_orders_commands_first():
    reports = [
        (Member(9, b"reload", 1, None), rm_cp(b"/opt/demo/so.so")),
        *nginx_reports(),
        (Member(1234, b"nginx", 1, NGINX),
         [Finding("mapping", "deleted", b"/usr/lib/x86_64-linux-gnu/libssl.so.3", FileId(1, 5),
                  content=DIFFERENT)]),
        (Member(50, b"app", 1, Placement(b"user@1000.service", b"app.service")), rm_cp()),
        (Member(60, b"db", 1, Placement(b"a.service")), rm_cp(content=IDENTICAL)),
    ]
    actions, identical = plan(groups(reports), users)
    assert [command_text(a.command) if a.command else a.note for a in actions] == [
        "systemctl restart nginx.service", "systemctl --user -M alice@ restart app.service",
        "not in a unit: restart it yourself"]
    assert sorted(g.file.path for g in actions[0].groups) == [
        b"/usr/lib/nginx/modules/ngx_http_echo_module.so", b"/usr/lib/x86_64-linux-gnu/libssl.so.3"]
    assert [g.top.pid for g in identical] == [60]


def test_hostile_unit_names_are_quoted_and_escaped():
    evil = Placement(b"user@1000.service", b"x$(reboot);\x1b[2J.service")
    lines = restart_lines(groups([(Member(5, b"app", 1, evil), rm_cp())]), users)
    assert lines[1] == "  systemctl --user -M alice@ restart 'x$(reboot);\\x1b[2J.service'"


def test_the_table_end_to_end():
    packaged = [f._replace(package=Package("libnginx-mod-http-echo", "1:0.63-4")) for f in rm_cp()]
    summary = ScanSummary([
        ProcessReport(1234, b"nginx", packaged, (), 1, NGINX),
        ProcessReport(1240, b"nginx", packaged, (), 1234, NGINX),
        ProcessReport(1241, b"nginx", packaged, (), 1234, NGINX),
        ProcessReport(9, b"reload", rm_cp(b"/opt/demo/so.so", IDENTICAL), (), 1, None)])
    out = io.StringIO()
    print_scan_table(summary, out)
    assert out.getvalue().splitlines() == [
        "PROCESS                                        FILE                                            STATE                        CONTENT    PACKAGE",
        "pid 9 (reload)                                 /opt/demo/so.so                                 replaced; old inode deleted  identical  -",
        "nginx: master 1234 and 2 workers (1240, 1241)  /usr/lib/nginx/modules/ngx_http_echo_module.so  replaced; old inode deleted  different  libnginx-mod-http-echo 1:0.63-4",
        "",
        "To restart:",
        "  systemctl restart nginx.service",
        "      nginx: master 1234 and 2 workers (1240, 1241): /usr/lib/nginx/modules/ngx_http_echo_module.so (libnginx-mod-http-echo 1:0.63-4)",
        "No restart needed (identical content): pid 9 (reload) /opt/demo/so.so",
        "scanned 4 processes: 4 diverged, 8 findings (2 of identical content)",
    ]
