"""The configuration file: every key, every error as one line naming file and key, and the
merge with the command line (a given flag wins, defaults fill the rest)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from inodewatch import config
from inodewatch.config import Config, ConfigError, load_config, load_default_or, merge


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "inodewatch.toml"
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return str(path)


def error_of(path: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_key(tmp_path):
    path = write(tmp_path, """
        pid = [38314, 38400]
        exe = ["/usr/sbin/nginx"]
        name = ["reload", "nginx"]
        unit = ["nginx.service"]
        cgroup = ["/system.slice/app.service"]
        watch = ["/opt/app/so.so", "/opt/app/caf\u00e9.so"]
        interval = 0.5
        log_file = "/var/log/inodewatch/events.json"
        log_format = "console"
        metrics_file = "/var/lib/prometheus/node-exporter/inodewatch.prom"
        state_file = "/var/lib/inodewatch/state.json"
        max_watches = 50000
    """)
    assert load_config(path) == Config(
        pid=(38314, 38400), exe=("/usr/sbin/nginx",), name=("reload", "nginx"),
        unit=("nginx.service",), cgroup=("/system.slice/app.service",),
        watch=(b"/opt/app/so.so", "/opt/app/café.so".encode()), interval=0.5,
        log_file="/var/log/inodewatch/events.json", log_format="console",
        metrics_file="/var/lib/prometheus/node-exporter/inodewatch.prom",
        state_file="/var/lib/inodewatch/state.json", max_watches=50000)


def test_a_list_key_takes_one_value_and_interval_an_integer(tmp_path):
    path = write(tmp_path, 'pid = 7\nunit = "a.service"\nwatch = "/x.so"\ninterval = 3600\n')
    loaded = load_config(path)
    assert (loaded.pid, loaded.unit, loaded.watch) == ((7,), ("a.service",), (b"/x.so",))
    assert loaded.interval == 3600.0 and isinstance(loaded.interval, float)


def test_empty_file_sets_nothing(tmp_path):
    assert load_config(write(tmp_path, "# nothing yet\n")) == Config()


def test_the_docstring_example_is_valid(tmp_path):
    example = re.search(r"```toml\n(.*?)```", config.__doc__ or "", re.S)
    assert example is not None
    loaded = load_config(write(tmp_path, example.group(1)))
    assert loaded.unit == ("nginx.service",) and loaded.metrics_file.endswith(".prom")


def test_unknown_key(tmp_path):
    path = write(tmp_path, "intervall = 2\n")
    assert error_of(path) == f"{path}: unknown key 'intervall'"


def test_a_table_is_an_unknown_key(tmp_path):
    path = write(tmp_path, "[daemon]\ninterval = 2\n")
    assert error_of(path) == f"{path}: unknown key 'daemon'"


@pytest.mark.parametrize("line, message", [
    ('interval = "fast"', "key 'interval' must be a number between 0.01 and 3600, not 'fast'"),
    ("interval = 0.001", "key 'interval' must be a number between 0.01 and 3600, not 0.001"),
    ("interval = 3601", "key 'interval' must be a number between 0.01 and 3600, not 3601"),
    ("interval = nan", "key 'interval' must be a number between 0.01 and 3600, not nan"),
    ("interval = true", "key 'interval' must be a number between 0.01 and 3600, not True"),
    ("pid = [1, 0]", "key 'pid' must be a process id (an integer > 0) or a list of them, not 0"),
    ('pid = ["38314"]', "key 'pid' must be a process id (an integer > 0) or a list of them, not '38314'"),
    ("pid = [true]", "key 'pid' must be a process id (an integer > 0) or a list of them, not True"),
    ('exe = ["nginx"]', "key 'exe' must be an absolute path or a list of them, not 'nginx'"),
    ('name = [""]', "key 'name' must be a process name or a list of them, not ''"),
    ("unit = [1]", "key 'unit' must be a unit name or a list of them, not 1"),
    ('cgroup = ["a\\u0000b"]', "key 'cgroup' must be a cgroup path or a list of them, not 'a\\x00b'"),
    ('watch = ["so.so"]', "key 'watch' must be an absolute path or a list of them, not 'so.so'"),
    ('log_file = ["/a"]', "key 'log_file' must be an absolute path, not ['/a']"),
    ('log_format = "xml"', "key 'log_format' must be one of 'auto', 'json', 'console', not 'xml'"),
    ('metrics_file = "m.prom"', "key 'metrics_file' must be an absolute path, not 'm.prom'"),
    ('state_file = "state.json"', "key 'state_file' must be an absolute path, not 'state.json'"),
    ("max_watches = 0", "key 'max_watches' must be an integer >= 1, not 0"),
    ("max_watches = 1.5", "key 'max_watches' must be an integer >= 1, not 1.5"),
    ("max_watches = true", "key 'max_watches' must be an integer >= 1, not True"),
])
def test_wrong_value(tmp_path, line, message):
    path = write(tmp_path, line + "\n")
    assert error_of(path) == f"{path}: {message}"


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, 'unit = ["a.service"]\ninterval = \n')
    message = error_of(path)
    assert message.startswith(f"{path}: ") and "line 2" in message


def test_not_utf8(tmp_path):
    path = write(tmp_path, b'name = ["\xff"]\n')
    assert error_of(path) == f"{path}: not UTF-8 text (byte 9)"


def test_missing_file_given_explicitly(tmp_path):
    path = str(tmp_path / "nope.toml")
    assert error_of(path) == f"cannot read config file {path}: No such file or directory"
    with pytest.raises(ConfigError, match="No such file"):
        load_default_or(path)


def test_unreadable_file(tmp_path):
    assert error_of(str(tmp_path)) == f"cannot read config file {tmp_path}: Is a directory"


def test_default_file_read_only_when_present(tmp_path, monkeypatch):
    default = tmp_path / "inodewatch.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG", str(default))
    assert load_default_or(None) == Config()
    default.write_text("interval = 5\n")
    assert load_default_or(None) == Config(interval=5.0)
    default.write_text("interval = 0\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(default))}: key 'interval'"):
        load_default_or(None)


FLAGS = ("pid", "exe", "name", "unit", "cgroup", "watch", "interval", "log_file", "log_format",
         "metrics_file", "state_file", "max_watches")


def given(**flags: object) -> argparse.Namespace:
    """A namespace as the watch command line leaves it: None for every flag not given."""
    return argparse.Namespace(**{**dict.fromkeys(FLAGS), "command": None, "config": None, **flags})


def test_merge_fills_defaults_when_neither_sets():
    merged = merge(Config(), given())
    assert (merged.interval, merged.log_format) == (1.0, "auto")
    assert merged.pid is merged.watch is merged.log_file is merged.metrics_file is None
    assert merged.command is None and merged.config is None  # other attributes kept


def test_merge_takes_the_file_where_no_flag_is_given():
    file = Config(unit=("nginx.service",), watch=(b"/x.so",), interval=5.0, log_format="json",
                  metrics_file="/m.prom")
    merged = merge(file, given())
    assert merged.pid is None and merged.unit == ["nginx.service"] and merged.watch == [b"/x.so"]
    assert (merged.interval, merged.log_format, merged.metrics_file) == (5.0, "json", "/m.prom")
    assert merge(Config(state_file="/s.json"), given()).state_file == "/s.json"
    assert merge(Config(state_file="/s.json"), given(state_file="/t.json")).state_file == "/t.json"
    assert merge(Config(max_watches=500), given()).max_watches == 500
    assert merge(Config(max_watches=500), given(max_watches=50)).max_watches == 50


def test_targets_on_the_command_line_replace_all_of_the_files_targets():
    file = Config(unit=("nginx.service",), exe=("/usr/sbin/nginx",), interval=5.0)
    merged = merge(file, given(pid=[7]))
    assert (merged.pid, merged.unit, merged.exe, merged.interval) == ([7], None, None, 5.0)


def test_merge_a_given_flag_wins():
    file = Config(pid=(1, 2), interval=5.0, log_file="/var/log/a.json", log_format="json")
    args = given(pid=[7], interval=0.5, log_file="b.json", log_format="console")
    merged = merge(file, args)
    assert (merged.pid, merged.interval, merged.log_file, merged.log_format) == \
        ([7], 0.5, "b.json", "console")
    assert args.pid == [7] and merged is not args  # the parsed arguments are left alone


def test_merge_tolerates_flags_the_parser_lacks():
    merged = merge(Config(cgroup=("/a",)), argparse.Namespace(log_file="x.json"))
    assert merged.log_file == "x.json" and merged.cgroup == ["/a"] and merged.interval == 1.0
