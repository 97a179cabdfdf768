"""`inodewatch report` on hostile and damaged logs: any bad value costs its line only, and
through the real command line, as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import parse_lines, run_cli
from inodewatch.logread import parse_line

GOOD = [
    '{"timestamp": "2026-01-02T03:04:05.000000Z", "level": "info", "event": "target.attached", '
    '"pid": 7, "comm": "reload", "start_time": "2026-01-02T03:00:00Z"}',
    '{"timestamp": "2026-01-02T03:04:06.000000Z", "level": "info", "event": "target.exited", '
    '"pid": 7, "exit_code": 0, "signal": null, "status_source": "proc_connector", "stale": []}',
]


def warning(**fields: object) -> str:
    return json.dumps({"timestamp": "2026-01-02T03:04:05.500000Z", "level": "warning",
                       "event": "watch.degraded", **fields})


BAD_VALUES = {
    # out of range once in UTC: astimezone raised OverflowError, the whole report was lost
    "year 9999 west of UTC":
        '{"timestamp": "9999-12-31T23:59:59-01:00", "event": "x", "level": "warning"}',
    "year 1 east of UTC":
        '{"timestamp": "0001-01-01T00:00:00+01:00", "event": "x", "level": "warning"}',
    # a float infinity: --json printed it back as Infinity, which is not JSON
    "1e400": warning()[:-1] + ', "detail": 1e400}',
    "-1e400": warning()[:-1] + ', "detail": [1, -1e400]}',
    # more digits than Python converts (its int-str limit)
    "an integer of 5000 digits": warning()[:-1] + ', "detail": ' + "9" * 5000 + "}",
    # too deep for the decoder: RecursionError
    "nested 100,000 deep": warning()[:-1] + ', "detail": ' + "[" * 100_000 + "]" * 100_000 + "}",
}
DEEP = warning()[:-1] + ', "detail": ' + '{"a": ' * 500 + "1" + "}" * 500 + "}"


@pytest.mark.parametrize("name", BAD_VALUES)
def test_a_bad_value_makes_its_line_a_bad_line(name):
    assert parse_line(BAD_VALUES[name].encode()) is None
    events, bad = parse_lines(x.encode() for x in [GOOD[0], BAD_VALUES[name], GOOD[1]])
    assert [e.name for e in events] == ["target.attached", "target.exited"] and bad == 1


def test_values_just_inside_the_limits_are_kept():
    for detail in ("1e308", "-1e308", "9" * 4000, "[" * 60 + "]" * 60, "5e-400", "[1e-400]"):
        assert parse_line((warning()[:-1] + f', "detail": {detail}}}').encode()) is not None
    event = parse_line(b'{"timestamp": "9999-12-31T23:59:59+01:00", "event": "x"}')
    assert event is not None and event.time.year == 9999


@pytest.mark.parametrize("name", BAD_VALUES)
def test_the_command_line_skips_a_bad_value_and_reports_the_rest(name, tmp_path: Path):
    log = tmp_path / "events.json"
    log.write_text("\n".join([GOOD[0], BAD_VALUES[name], warning(detail="polling"), GOOD[1]]) + "\n")
    text = run_cli("report", str(log))
    assert text.returncode == 0, text.stderr
    assert "verdict: pid 7 (reload) exited with status 0" in text.stdout
    assert text.stdout.endswith("read 1 file, 3 events, skipped 1 bad line\n")
    result = run_cli("report", "--json", str(log))
    assert result.returncode == 0, result.stderr
    assert "Infinity" not in result.stdout and "NaN" not in result.stdout
    target, summary = (json.loads(x) for x in result.stdout.splitlines())
    assert target["outcome"] == "exited"
    assert (summary["events"], summary["skipped"]) == (3, 1)
    assert summary["warnings"] == [json.loads(warning(detail="polling"))]


def test_an_out_of_range_time_argument_is_a_usage_error(tmp_path: Path):
    log = tmp_path / "events.json"
    log.write_text(GOOD[0] + "\n")
    result = run_cli("report", str(log), "--until", "9999-12-31T23:59:59-01:00")
    assert result.returncode == 2
    assert "not an ISO 8601 time: '9999-12-31T23:59:59-01:00'" in result.stderr
    assert "internal error" not in result.stderr


def test_year_one_and_year_9999_print_as_iso_times(tmp_path: Path):
    log = tmp_path / "events.json"
    log.write_text('{"timestamp": "0001-01-01T00:00:00Z", "event": "watch.degraded", '
                   '"level": "warning"}\n'
                   '{"timestamp": "9999-12-31T23:59:59.999999+00:00", "event": "watch.degraded", '
                   '"level": "warning"}\n')
    out = run_cli("report", str(log)).stdout
    assert "  0001-01-01T00:00:00.000000Z  watch.degraded" in out
    assert "  9999-12-31T23:59:59.999999Z  watch.degraded" in out


def test_a_deep_value_the_decoder_takes_is_printed_back_whole(tmp_path: Path):
    """What is kept of a line is printed from its own text, never encoded again from the
    decoded value (json.dumps would recurse as deep as the decoder did)."""
    log = tmp_path / "events.json"
    log.write_text("\n".join([GOOD[0], DEEP, GOOD[1]]) + "\n")
    result = run_cli("report", "--json", str(log))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1], parse_constant=None)
    assert summary["warnings"] == [json.loads(DEEP)] and summary["skipped"] == 0
    text = run_cli("report", str(log))
    assert text.returncode == 0 and "internal error" not in text.stderr
    assert "watch.degraded       detail={\"a\": {\"a\"" in text.stdout


def test_hosts_are_remembered_within_bounds():
    """A log may name any number of hosts, of any length: their daemon state (pauses, mount
    namespace) is kept for the most recently used MAX_HOSTS, within HOSTS_BYTES of names."""
    from inodewatch.report import HOSTS_BYTES, MAX_HOSTS, Daemons
    daemons = Daemons()
    kept = daemons.of("web-1")
    kept.mnt_ns = 1
    for i in range(MAX_HOSTS + 100):
        daemons.of(f"h{i}")
        if i % 1000 == 0:
            assert daemons.of("web-1") is kept  # used again: not the first forgotten
    assert len(daemons.states) == MAX_HOSTS and daemons.of("web-1") is kept
    for i in range(3):
        daemons.of(f"{i}" * (HOSTS_BYTES // 2))
    assert daemons.bytes <= HOSTS_BYTES and len(daemons.states) == 2
    assert daemons.of("web-1") is not kept and daemons.of("web-1").mnt_ns is None
