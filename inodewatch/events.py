"""The event contract: every event inodewatch writes, its levels and its fields.

The daemon's JSON lines and `scan --json`'s are one schema; `inodewatch report`, the console
log, the journal and the metrics read it.  This module is that schema as plain data, and the
one place an event is named: the README's event table and docs/events.md are generated from
it (`python -m inodewatch.eventdoc --write`), and tests/test_events.py fails when they, or
any event the code or the integration tests' logs show, disagree with it.  Adding an event
means adding it here first.

`scan` imports this module (through model and render), so it is pure data with nothing but
`collections.namedtuple`: no typing, no dataclasses (the start-up rule, inodewatch/__init__.py).
"""

from collections import namedtuple


class Field(namedtuple("Field", "name required meaning")):
    """One key of an event's JSON object: name: str; required: bool, the key is on every line
    of the event (its value may still be null where the meaning says so); meaning: str, one
    line, Markdown."""

    __slots__ = ()


class EventSpec(namedtuple("EventSpec", "name levels level_rule when sources fields about_target")):
    """One event: name: str ("mapping.replaced"); levels: tuple[str, ...], every level it is
    logged at, the usual one first; level_rule: str, when the level is not levels[0] ("" if
    it never changes); when: str, one line, what it means; sources: tuple[str, ...],
    "daemon" and/or "scan" (`scan --json`); fields: tuple[Field, ...], its own fields;
    about_target: bool, the daemon's lines of it carry TARGET too (a scan's line always
    carries SCANNED)."""

    __slots__ = ()

    @property
    def subject(self) -> str:
        return self.name.partition(".")[0]

    @property
    def kind(self) -> str:
        return self.name.partition(".")[2]


def _f(name: str, meaning: str) -> Field:
    return Field(name, True, meaning)


def _opt(name: str, meaning: str) -> Field:
    return Field(name, False, meaning)


# --- fields every line, or many events, carry ---------------------------------------------

ENVELOPE = (
    _f("timestamp", "when it was logged: ISO 8601, UTC, microseconds"),
    _f("level", "`critical`, `error`, `warning` or `info` (the event's levels below)"),
    _f("event", "the event's name"),
    _opt("host", "the host name (every line of the daemon; not `scan --json`, not the console)"),
    _opt("boot_id", "the kernel's `/proc/sys/kernel/random/boot_id` (as `host`)"),
)

PLACEMENT = (
    _opt("unit", "the systemd unit it runs in (`nginx.service`, `session-3.scope`, `user@1000.service`)"),
    _opt("user_unit", "the unit inside a user's manager, when `unit` is `user@UID.service`"),
    _opt("container_runtime", "`docker`, `podman`, `containerd`, `cri-o`, `kubernetes`, `lxc` or `machined`"),
    _opt("container_id", "the runtime's id of the container (its name for `lxc` and `machined`)"),
    _opt("container_unit", "the unit inside the container, when it runs systemd"),
)

PID = _f("pid", "the target's process id")

# On the daemon's every event about a target: read when it was attached ({} if it was gone).
TARGET = (
    PID,
    _opt("uid", "the target's real uid"),
    _opt("mnt_ns", "the inode number of its mount namespace (`mnt:[N]`)"),
    *PLACEMENT,
)
# On every line of `scan --json`: the process it is about.
SCANNED = (
    _f("pid", "the process's id"),
    _f("comm", "the process's comm"),
    *PLACEMENT,
    _opt("package", "the Debian package owning the path (host's mount namespace only)"),
    _opt("package_version", "that package's version installed now: what a restart would load"),
)

# --- the fields of a divergence -----------------------------------------------------------

PATH = _f("path", "the file's path when the target was first seen holding it")
FD = _f("fd", "the file descriptor")
MAPPED = (
    _f("mapped_dev", "the held inode's device, as maps prints it (`fe:00`)"),
    _f("mapped_ino", "the held inode"),
)
DISK = (
    _f("disk_dev", "the device of the file now at the path"),
    _f("disk_ino", "the inode now at the path"),
)
PERMS = _opt("perms", "every permission string of its mappings, comma-separated (`r--p,r-xp`)")
CONTENT = (
    _opt("content", "`identical`, `different` or `unknown`: what runs compared with what is on disk"),
    _opt("mapped_build_id", "the held file's ELF GNU build-id (hex), where it has one"),
    _opt("disk_build_id", "the build-id of the file at the path, where it has one"),
    _opt("content_reason", "why `content` is `unknown`"),
)
SIZES = (
    _f("size_before", "the size when first seen"),
    _f("size_after", "the size the writer left (`null` while it has the file open)"),
    _f("truncated", "the size was seen below `size_before` first (cp's `O_TRUNC`)"),
)
INODES = (
    _f("old_ino", "the older inode"),
    _f("new_ino", "the inode at the path now"),
)
WRITER = (
    _f("writer_pid", "the process that opened the file (0: outside the daemon's pid namespace)"),
    _f("writer_comm", "its comm (`cp`), `null` once it is gone"),
    _f("writer_exe", "its executable, `null` when unreadable"),
    _f("writer_cmdline", "its arguments (at most 4 KiB of them), `null` when unreadable"),
    _opt("writer_cmdline_truncated", "`true` when `writer_cmdline` was cut"),
)
STALE = _f("stale", "what was diverged then: a list of `{\"event\": NAME, ...its fields}`")
RESOURCE = _opt("resource", "`inotify_watches`, `file_descriptors`, `exit_status`, `state_file`, "
                            "`untrusted_mount`, `fanotify_marks`; none for a missing capability or proc connector")
DETAIL = _f("detail", "a sentence for the operator")

SUBJECTS = ("mapping", "fd")
FINDING = ("daemon", "scan")  # a finding of the pure comparison: both the daemon and scan
DAEMON = ("daemon",)
RESTART = ("warning", "info")
RESTART_RULE = "info when `content` is `identical`"


def _divergence(subject: str, kind: str, when: str, fields: tuple, sources: tuple = FINDING,
                levels: tuple = RESTART, rule: str = RESTART_RULE) -> EventSpec:
    own = (PATH, *((FD,) if subject == "fd" else ()), *fields)
    return EventSpec(f"{subject}.{kind}", levels, rule, when, sources, own, True)


def _mapping_and_fd(kind: str, when: str, fields: tuple, **how: object) -> tuple[EventSpec, ...]:
    """The same divergence of a mapping and of an fd (an fd has no perms)."""
    return tuple(_divergence(subject, kind, when, tuple(f for f in fields
                                                        if subject == "mapping" or f is not PERMS),
                             **how)
                 for subject in SUBJECTS)


_DELETED = _mapping_and_fd("deleted", "the held inode lost its last link", (*MAPPED, PERMS, *CONTENT))
_REPLACED = _mapping_and_fd("replaced", "the path now names another inode",
                            (*MAPPED, *DISK, PERMS, *CONTENT))
_RENAMED = _mapping_and_fd(
    "renamed", "the held inode now lives under another path (the daemon only: a scan cannot tell)",
    (_f("new_path", "where the inode lives now"), *MAPPED, PERMS),
    sources=DAEMON, levels=("warning",), rule="")
_MISSING = _mapping_and_fd("missing", "nothing is at the path, yet the inode is linked elsewhere",
                           (*MAPPED, PERMS), levels=("warning",), rule="")
_CONTENT_AGAIN = _mapping_and_fd(
    "content", "a `deleted` or `replaced` divergence first judged `unknown` (the file at its "
               "path was not complete), judged again once that file changed, now known; once",
    (_f("kind", "the divergence's kind (`deleted`, `replaced`)"), *MAPPED,
     *(Field(f.name, False, f.meaning) for f in DISK), PERMS, *CONTENT), sources=DAEMON)

EVENTS = (
    EventSpec("daemon.started", ("info",), "", "the daemon starts", DAEMON, (
        _f("version", "inodewatch's version"),
        _f("targets", "the pids named by `--pid`"),
        _opt("selectors", "the selector's terms, e.g. `[\"exe=/usr/sbin/nginx\"]`, when any"),
        _f("mnt_ns", "the daemon's own mount namespace"),
    ), False),
    EventSpec("daemon.stopped", ("info", "error"), "error when an error kept repeating (exit 1)",
              "the daemon stops", DAEMON, (
        _f("reason", "why it stops (`all targets exited`, the signal that stopped it, or the "
                     "error that kept repeating)"),
        _f("targets", "the pids still watched"),
    ), False),
    EventSpec("daemon.error", ("error",), "",
              "a bug: one of the loop's handlers raised, and the daemon carries on; the same error "
              "10 times within 1 s stops it (daemon.stopped at level error, exit 1)", DAEMON, (
        _f("handler", "what raised, e.g. `Daemon.on_file_events`"),
        _f("error", "the exception, on one line"),
        _f("traceback", "Python's traceback, for the bug report"),
    ), False),
    EventSpec("target.attached", ("info",), "",
              "a target is being watched; again with `exec: true` when it execs another program (the "
              "proc connector tells; same process, same `start_time`)",
              DAEMON, (
                  _opt("comm", "its comm"),
                  _opt("exe", "its executable"),
                  _opt("cmdline", "its arguments (at most 4 KiB of them; trailing empty ones dropped)"),
                  _opt("truncated", "`true` when `cmdline` was cut"),
                  _opt("start_time", "when it started (UTC, seconds)"),
                  _opt("selector", "the selector's term that found it (`exe=/usr/sbin/nginx`)"),
                  _opt("reattached", "found by a selector in the place of one of its processes that exited"),
                  _opt("restored", "`true`: its history came from `--state-file`"),
                  _opt("exec", "`true`: the same process exec'd another program"),
              ), True),
    EventSpec("target.exited", ("info", "warning"), "warning if killed by a signal",
              "the target is gone", DAEMON, (
                  _f("exit_code", "its exit status; `null` when a signal killed it"),
                  _f("signal", "the signal's name (`SIGSEGV`), or `null`"),
                  _f("core_dumped", "whether it dumped core"),
                  _f("status_source", "`proc_connector`: the status is known; `lost`: the connector works but "
                     "the status did not come within 0.5 s of the exit (e.g. dropped in a queue "
                     "overrun); `pidfd`: no connector, no status; `systemd`: no connector, and "
                     "the status is the `--unit` target's `ExecMainCode`/`ExecMainStatus` "
                     "(inodewatch.unitstatus)"),
                  STALE,
              ), True),
    EventSpec("target.lost", ("warning",), "",
              "at start: a target of the state file is gone (it ended while the daemon was down, "
              "unseen); it carries no `uid`, `mnt_ns` nor placement: it cannot be read any more",
              DAEMON, (PID, STALE, DETAIL), False),
    *_DELETED[:1], *_REPLACED[:1], *_RENAMED[:1], *_MISSING[:1],
    EventSpec("mapping.overwritten", ("critical",), "",
              "the held inode's data was written or truncated in place (the crash case): logged at its "
              "first write (IN_MODIFY), before the crash can come; a `touch`, `: >>` or any open for "
              "writing that changes no byte is not one", DAEMON,
              (PATH, *MAPPED, _f("perms", PERMS.meaning), *SIZES), True),
    EventSpec("mapping.write_refused", ("critical",), "",
              "`--guard` refused an open for writing of the held inode (it would have crashed the "
              "target: `cp` over a mapped file); the file is unchanged.  Once per writer process "
              "and file, on every target mapping it", DAEMON,
              (PATH, *MAPPED, *WRITER,
               _f("errno", "what the writer's open got: `ETXTBSY` (\"Text file busy\") or `EPERM`"),
               _f("flags", "the open's flags, e.g. `O_WRONLY|O_CREAT|O_TRUNC`"),
               DETAIL), True),
    EventSpec("mapping.overwrite_closed", ("warning",), "",
              "the writer of an overwrite closed the file (IN_CLOSE_WRITE)", DAEMON,
              (PATH, *MAPPED, *SIZES), True),
    _divergence("mapping", "duplicated",
                "two versions loaded at once: the target maps the file now at the path and, under the "
                "same path, an older inode (besides its `mapping.deleted` / `mapping.replaced`); once "
                "per older inode, until it is unmapped (then `mapping.reloaded`)",
                (*INODES, PERMS), levels=("warning",), rule=""),
    _CONTENT_AGAIN[0],
    EventSpec("mapping.reloaded", ("info",), "", "the target maps the version on disk again (also when it was replaced and reloaded "
              "between two looks, the divergence never seen)",
              DAEMON, (PATH, *INODES), True),
    *_DELETED[1:], *_REPLACED[1:], *_RENAMED[1:], *_MISSING[1:], _CONTENT_AGAIN[1],
    EventSpec("watch.overflow", ("warning",), "",
              "inotify's queue overflowed: every target is re-read, at most once a second", DAEMON,
              (_f("overflows", "how many overflows since the last line"), DETAIL), False),
    EventSpec("watch.degraded", ("warning",), "",
              "the daemon is short of something, said once until it recovers (`resource`); without "
              "`resource`: a missing capability, or no usable proc connector (exit status unknown, "
              "e.g. in a container)", DAEMON, (
                  RESOURCE, DETAIL,
                  _opt("unwatched", "`inotify_watches`: how many paths have no watch"),
                  _opt("pids", "`inotify_watches`: the targets concerned (at most 20)"),
                  _opt("max_watches", "`inotify_watches`: the watch budget"),
                  _opt("pid", "`untrusted_mount`: the target that met the mount"),
              ), False),
    EventSpec("watch.recovered", ("info",), "", "that `resource` is no longer short (`inotify_watches`: every path wanted is watched "
              "again)", DAEMON,
              (_f("resource", RESOURCE.meaning), DETAIL), False),
    EventSpec("guard.started", ("info",), "",
              "`--guard`: the guard runs; opens for writing of the targets' mapped files are refused "
              "from now on", DAEMON, (
        _f("errno", "what a refused writer gets: `ETXTBSY` where the kernel lets the guard choose "
                    "(Linux 6.14), else `EPERM`"),
        _f("helper_pid", "the guard's helper process, which answers the opens"),
    ), False),
    EventSpec("guard.unjudged", ("warning",), "",
              "an open of a guarded file whose flags could not be read (the opener was not asleep "
              "yet after ~20 ms, is in another pid namespace, or opened through io_uring): allowed, "
              "never hung; once per opener and file", DAEMON,
              (_f("path", "the file's name now"), _f("pids", "the targets mapping it"), *WRITER,
               DETAIL), False),
    EventSpec("guard.dropped", ("warning",), "",
              "records of refusals were lost on their way to the log (the loop fell behind a flood "
              "of refused writers); the opens themselves were all answered", DAEMON,
              (_f("dropped", "how many since the last line"), DETAIL), False),
    EventSpec("guard.stopped", ("error",), "",
              "the guard no longer runs (its helper died or hung, and was killed): every open is "
              "allowed from now on; the daemon goes on watching", DAEMON,
              (_f("reason", "why"), DETAIL), False),
    EventSpec("watch.gap", ("warning",), "",
              "the loop did not run for more than 2 s beyond the waits it asked for (the daemon was "
              "stopped, a frozen VM, an overloaded host); logged when it resumes, so the gap is "
              "`[timestamp - gap_s, timestamp]`, and every event logged right after it carries the "
              "resume's time",
              DAEMON, (_f("gap_s", "how long (seconds)"), DETAIL), False),
)

BY_NAME = {spec.name: spec for spec in EVENTS}
NAMES = tuple(BY_NAME)

# The kinds of divergence a comparison finds (model.Finding.kind), and those that can be
# live in a target (a finding, or an overwrite); an fd is never overwritten nor duplicated.
FINDING_KINDS = ("deleted", "replaced", "renamed", "missing", "duplicated")
DIVERGENCE_KINDS = (*FINDING_KINDS, "overwritten")
LIVE = tuple((s.subject, s.kind) for s in EVENTS
             if s.subject in SUBJECTS and s.kind in DIVERGENCE_KINDS)
