"""report's end: the tally of outcomes, and brief lives folded per command (a selector on
nginx catches every `nginx -s reload`: 43 lives that say nothing, out of 95)."""

from __future__ import annotations

import json

import pytest

from conftest import TIMEOUT, wait_for
from inodewatch.tally import tally_line
from nginx_instance import NGINX, nginx
from test_report import DELETED, attached, exited, line, report, write

_ = nginx  # the fixture, used by name
RELOAD = ["/usr/sbin/nginx", "-s", "reload"]


def lives(tmp_path):
    lines = [attached(0, pid=100, comm="nginx", cmdline=["nginx: master process /usr/sbin/nginx"]),
             line(1, "mapping.deleted", 100, "warning", **DELETED)]
    for i in range(43):  # the reloads: attached at their exec, gone a few ms later
        pid = 1000 + i
        lines += [attached(2 + i, pid=pid, comm="nginx", cmdline=RELOAD),
                  exited(2 + i + 0.004, pid=pid, exit_code=0)]
    lines += [attached(50, pid=2000, comm="nginx", cmdline=RELOAD), exited(51.5, pid=2000, exit_code=0),
              attached(52, pid=2001, comm="nginx", cmdline=RELOAD),
              line(52.1, "mapping.deleted", 2001, "warning", **DELETED), exited(52.2, pid=2001, exit_code=0),
              attached(53, pid=2002, comm="sh", cmdline=["sh", "-c", "true"]), exited(53.01, pid=2002, exit_code=0),
              attached(54, pid=2003, comm="nginx", cmdline=RELOAD), exited(54.5, pid=2003, signal="SIGKILL")]
    return write(tmp_path / "events.json", lines)


def test_brief_lives_are_folded_per_command_and_everything_is_tallied(tmp_path):
    text = report(str(lives(tmp_path)))
    headers = [x for x in text.splitlines() if x.startswith("pid ")]
    # the master, the reload that took 1.5 s, the one that diverged, the lone sh: one by one
    assert headers == ["pid 100 (nginx)", "pid 2000 (nginx)", "pid 2001 (nginx)", "pid 2002 (sh)"]
    assert text.splitlines()[-3:] == [
        "44 lives of /usr/sbin/nginx -s reload: each ended within a second, nothing diverged",
        "48 lives: 1 killed, 46 exited, 1 still running stale code",
        "read 1 file, 97 events, skipped 0 bad lines"]


def test_the_json_summary_carries_the_outcomes_and_every_life(tmp_path):
    out = [json.loads(x) for x in report(str(lives(tmp_path)), "--json").splitlines()]
    assert len([o for o in out if o["type"] == "target"]) == 48  # JSON folds nothing
    assert out[-1]["outcomes"] == {"killed": 1, "exited": 46, "running_stale": 1}


def test_the_tally_line():
    assert tally_line({}) == "0 lives: none"
    assert tally_line({"crashed_after_overwrite": 1}) == "1 life: 1 crashed after an overwrite"


@pytest.mark.integration
def test_a_real_reload_loop_is_one_line(nginx, start_watcher, tmp_path):
    """The daemon on --exe nginx while `nginx -s reload` runs 5 times: 5 lives of that
    command, folded; the new workers each reload forks are lives of their own."""
    watcher = start_watcher(extra=["--exe", str(NGINX)])
    watcher.log.wait("target.attached", pid=nginx.master_pid)
    for _ in range(5):
        nginx.reload()
    command = " ".join([str(NGINX), "-p", f"{nginx.prefix}/", "-c", str(nginx.conf),
                        "-e", str(nginx.error_log), "-s", "reload"])

    def reloads_ended():
        ended = {e["pid"] for e in watcher.log.read() if e["event"] == "target.exited"}
        return [e for e in watcher.log.read() if e["event"] == "target.attached"
                and e.get("cmdline") == command.split() and e["pid"] in ended]
    reloads = wait_for(lambda: len(reloads_ended()) == 5 and reloads_ended(), TIMEOUT,
                       "the 5 reload commands' exits")
    watcher.stop()
    text = report(str(watcher.log.path))
    assert f"5 lives of {command}: each ended within a second, nothing diverged" in text
    headers = {x.split()[1] for x in text.splitlines() if x.startswith("pid ")}
    assert str(nginx.master_pid) in headers and not headers & {str(e["pid"]) for e in reloads}
