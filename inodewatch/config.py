"""The configuration file: the watch daemon's flags, as TOML.

`/etc/inodewatch/inodewatch.toml` is read when it exists; `--config FILE` names another one,
which must exist.  Each setting comes from the command line if the flag is given there, else
from the file, else from its default.  The list settings replace, never extend, each other,
and the targets (pid, exe, name, unit, cgroup) go as a group: `--pid 38314` on the command line
watches 38314 alone, whatever targets the file names.  A list key also takes a
single value (`unit = "nginx.service"`).  Every path is absolute (nothing depends on the
directory the daemon starts in) and, TOML being UTF-8, a name that is not UTF-8 can only be
given on the command line.

```toml
# /etc/inodewatch/inodewatch.toml: the daemon's flags; a flag on the command line wins.
unit = ["nginx.service"]            # --unit: follow the service's processes across restarts
exe = ["/usr/sbin/nginx"]           # --exe
name = ["reload"]                   # --name: the process's comm
cgroup = ["/system.slice/app.service"]  # --cgroup
# pid = [38314]                     # --pid: rarely useful here, pids change at every start
watch = ["/opt/app/plugins/so.so"]  # --watch: only these files; default every mapped file
interval = 1.0                      # --interval: seconds between full re-reads, 0.01..3600
log_file = "/var/log/inodewatch/events.json"  # --log-file; default stdout
log_format = "json"                 # --log-format: auto, json or console
metrics_file = "/var/lib/inodewatch/inodewatch.prom"  # --metrics-file (the unit's StateDirectory)
state_file = "/var/lib/inodewatch/state.json"  # --state-file: history across restarts; default none
max_watches = 50000                 # --max-watches: inotify watches; default half of max_user_watches
guard = true                        # --guard: refuse cp over a mapped file; needs CAP_SYS_ADMIN
guard_also = ["/usr/lib/x86_64-linux-gnu/libapp.so.1"]  # --guard-also
```

How a given flag is told from a default: the command line gives every one of these flags the
default None (argparse's own default for an `append` flag; `--interval` and `--log-format`
must say `default=None`), and `merge` fills the real defaults (`DEFAULTS`) when neither the
command line nor the file sets them.  Values reach the namespace in the flags' own types:
lists of int or str, `watch` as bytes (os.fsencode), because the daemon handles paths as bytes.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_CONFIG = "/etc/inodewatch/inodewatch.toml"
DEFAULTS: dict[str, Any] = {"interval": 1.0, "log_format": "auto", "guard": False}
LOG_FORMATS = ("auto", "json", "console")


class ConfigError(Exception):
    """The configuration file cannot be used (message is one line naming the file)."""


@dataclass(frozen=True)
class Config:
    """The settings a configuration file gives: empty or None where it says nothing."""

    pid: tuple[int, ...] = ()
    exe: tuple[str, ...] = ()
    name: tuple[str, ...] = ()
    unit: tuple[str, ...] = ()
    cgroup: tuple[str, ...] = ()
    watch: tuple[bytes, ...] = ()
    interval: float | None = None
    log_file: str | None = None
    log_format: str | None = None
    metrics_file: str | None = None
    state_file: str | None = None
    max_watches: int | None = None
    guard: bool | None = None
    guard_also: tuple[bytes, ...] = ()


def _is_text(value: Any) -> bool:
    # A NUL would only surface later, as a ValueError from open() deep in the daemon.
    return isinstance(value, str) and value != "" and "\0" not in value


def _is_absolute(value: Any) -> bool:
    return _is_text(value) and value.startswith("/")


def _is_pid(value: Any) -> bool:
    return type(value) is int and value > 0  # not isinstance: TOML's true is no pid


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 1


def _is_bool(value: Any) -> bool:
    return type(value) is bool


def _is_interval(value: Any) -> bool:
    return type(value) in (int, float) and 0.01 <= value <= 3600  # NaN fails too


@dataclass(frozen=True)
class _Setting:
    expected: str  # completes "key 'x' must be ..."
    valid: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda value: value
    many: bool = False  # a repeatable flag: a list, or one value

    def describe(self) -> str:
        return f"{self.expected} or a list of them" if self.many else self.expected

    def parse(self, value: Any) -> Any:
        """The value in the flag's type; ValueError(bad value) if it is not valid."""
        if not self.many:
            return self._one(value)
        return tuple(self._one(v) for v in (value if isinstance(value, list) else [value]))

    def _one(self, value: Any) -> Any:
        if not self.valid(value):
            raise ValueError(value)
        return self.convert(value)


SETTINGS: dict[str, _Setting] = {
    "pid": _Setting("a process id (an integer > 0)", _is_pid, many=True),
    "exe": _Setting("an absolute path", _is_absolute, many=True),
    "name": _Setting("a process name", _is_text, many=True),
    "unit": _Setting("a unit name", _is_text, many=True),
    "cgroup": _Setting("a cgroup path", _is_text, many=True),
    "watch": _Setting("an absolute path", _is_absolute, os.fsencode, many=True),
    "interval": _Setting("a number between 0.01 and 3600", _is_interval, float),
    "log_file": _Setting("an absolute path", _is_absolute),
    "log_format": _Setting("one of " + ", ".join(map(repr, LOG_FORMATS)), LOG_FORMATS.__contains__),
    "metrics_file": _Setting("an absolute path", _is_absolute),
    "state_file": _Setting("an absolute path", _is_absolute),
    "max_watches": _Setting("an integer >= 1", _is_count),
    "guard": _Setting("true or false", _is_bool),
    "guard_also": _Setting("an absolute path", _is_absolute, os.fsencode, many=True),
}


def parse_config(data: bytes, path: str) -> Config:
    """The settings in a configuration file's contents; `path` names it in errors."""
    try:
        table = tomllib.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None  # its message ends "(at line L, column C)"
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = SETTINGS.get(key)
        if setting is None:
            raise ConfigError(f"{path}: unknown key {key!r}")
        try:
            values[key] = setting.parse(value)
        except ValueError as bad:
            raise ConfigError(f"{path}: key {key!r} must be {setting.describe()}, "
                              f"not {bad.args[0]!r}") from None
    return Config(**values)


def _load(path: str, missing_ok: bool) -> Config:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        if missing_ok and isinstance(exc, FileNotFoundError):
            return Config()
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return parse_config(data, path)


def load_config(path: str) -> Config:
    """Read and check the configuration file at `path`, which must exist."""
    return _load(path, missing_ok=False)


def load_default_or(path: str | None) -> Config:
    """`--config FILE` if given (it must exist), else DEFAULT_CONFIG if it exists, else
    no settings at all."""
    if path is not None:
        return load_config(path)
    return _load(DEFAULT_CONFIG, missing_ok=True)


TARGET_KEYS = ("pid", "exe", "name", "unit", "cgroup")


def merge(config: Config, args: argparse.Namespace) -> argparse.Namespace:
    """A copy of `args` where each setting not given on the command line (None) comes from
    `config`, else from DEFAULTS; lists as lists, as argparse's `append` makes them."""
    merged = argparse.Namespace(**vars(args))
    # Targets go as a group: `inodewatch --pid 38314` on a host whose file names units
    # watches 38314 alone, not the service's targets as well.
    targets_given = any(getattr(args, key, None) for key in TARGET_KEYS)
    for f in fields(Config):
        value = getattr(args, f.name, None)
        if value is None and not (targets_given and f.name in TARGET_KEYS):
            value = getattr(config, f.name)
            if isinstance(value, tuple):
                value = list(value) or None
        if value is None:
            value = DEFAULTS.get(f.name)
        setattr(merged, f.name, value)
    return merged
