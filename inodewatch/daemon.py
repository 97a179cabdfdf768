"""The watch daemon: one poll loop (inodewatch.reactor), no threads.

Its fds, each with its handler: the inotify fd (files the targets map and hold, and their
directories), one pidfd per target (the exit, never missed), the proc connector socket (how
the target died), a signal wake-up pipe (SIGTERM, SIGINT, SIGHUP), and the output of a
`systemctl show` asked about a --unit target's exit; its timers: the tick (the periodic
re-read that catches whatever inotify cannot see: a file mapped since, a watch that could not
be added), the walk of /proc, the watchdog ping, and each target's follow-up looks after a
reload.  A handler that raises is logged (daemon.error) and the daemon carries on.

Every inotify event only says "look again": the truth always comes from re-reading the
target's /proc and the disk, compared by the pure core (model, diff).  What each target makes
of it -- events, the watches it needs, follow-up looks -- is decided by its state machine
(inodewatch.target); the daemon does the reads, feeds the answers in and acts on the result.

Anyone can make it look again (issue 13, item 11): open a file watched for opens, make
names beside a plugin in a mode-1777 directory, run a matching process that maps 65,000
files.  So the inotify fd is read at most READ_RATE times a second after a burst (each read
takes the whole queue), a file whose events flood one read is muted for those kinds until
its targets are looked at again, and every look is paced (inodewatch.pacing): each target
reacts at once to a normal burst, but the targets of one kind (named by the operator, or
matched by a selector anyone can match) together use at most LOOK_SHARE of a core in the
long run.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import psutil

from inodewatch import __version__, cgroupwalk, procfs
from inodewatch.announce import ANNOUNCE_DELAY, Announcements
from inodewatch.caps import effective_capabilities, missing_features
from inodewatch.cgroups import read_placement
from inodewatch.contentpass import ContentPass
from inodewatch.diff import Event
from inodewatch.fdbudget import FdBudget, raise_fd_limit
from inodewatch.guard import Guard, GuardUnavailable
from inodewatch.guardmarks import GuardMarks, refusal_events, wanted_marks
from inodewatch.heap import Heap
from inodewatch.exits import (
    ConnectorUnavailable,
    ExitReport,
    ExitStatus,
    PendingExits,
    PidWatch,
    ProcConnector,
    ProcessExec,
    ProcessExit,
    ProcessFork,
)
from inodewatch.model import FileId, MappedFile, OpenFile
from inodewatch.notify import Notifier
from inodewatch.pacing import Bucket
from inodewatch.pidns import own_connector_deafness
from inodewatch.reactor import LoopFailed, Reactor, Timer, format_traceback, one_line
from inodewatch.matchers import Selector, operator_named, read_facts, term_text
from inodewatch.state import SAVE_EVERY, SAVE_SHARE, Loaded, StateFile
from inodewatch.target import Target, with_status
from inodewatch.text import safe_text
from inodewatch.unitstatus import UnitQuery
from inodewatch.watch import KIND_EVENTS, WRITE_EVENTS, FileEvent, FileWatcher, max_user_watches
from inodewatch.watchset import Wanted, WatchSet, default_budget

# With a working proc connector, new processes announce themselves; the /proc walk that finds
# them otherwise is then only a rare safety net.
DISCOVERY_WITH_CONNECTOR = 60.0

# The share of each --interval the periodic re-read may take: 0.3 % of a core, or 5 % when
# inotify is degraded and the re-read is all there is.
REREAD_SHARE = 0.003
REREAD_SHARE_DEGRADED = 0.05

# How long the exit status may trail the pidfd's wake-up (it is normally microseconds, and
# the connector's whole queue is read at every wake): then the exit is told without it.
EXIT_STATUS_GRACE = 0.5
# Exits told per wake: a mass exit is told in batches, with inotify's events (the other
# targets') handled in between; each exit costs ~1 ms with 2,000 targets.
EXITS_PER_WAKE = 32

# What the content comparison of one look may hash: a file up to 2 MiB, 4 MiB in all (a
# larger one: content "unknown").  BLAKE2b takes ~3 ms a MiB here, so a target's big data
# files never hold the loop up for more than ~12 ms; libraries carry a build-id, never hashed.
HASH_PER_FILE = 2 * 1024 * 1024
HASH_PER_LOOK = 4 * 1024 * 1024

# /proc/PID/maps is read this many chunks (procfs.MAPS_CHUNK, 128 KB) in one go: nearly every
# process's whole maps is one chunk.  A bigger one (a user can make it 265 MB, which the kernel
# takes ~3 s to print) is read on, MAPS_CHUNKS_PER_TURN at each turn of the loop, between the
# other targets' events; at most MAX_READINGS such reads at once (each holds an fd).  The
# reads are charged to the target's pace like any look: it is looked at again when it allows.
INLINE_MAPS_CHUNKS = 8
MAPS_CHUNKS_PER_TURN = 2
MAX_READINGS = 8

# Looks a user can cause are paced (inodewatch.pacing): each target may spend LOOK_BURST s
# (inodewatch.target) on looks at once, refilled at LOOK_SHARE / (targets of its kind) of a
# core: a demo's look (~1
# ms) is done at once 50 times in a row, a flooded target is looked at every ~10-20 ms, a
# process mapping 65,000 files (~1 s a look) every 10-20 s or less often.  Operator-named
# targets (--pid, --unit, --cgroup) and the ones anyone can match (--name, --exe) have
# separate shares, so an attacker's processes cannot slow the operator's own targets.
LOOK_SHARE = {True: 0.10, False: 0.05}  # by Target.operator
# Attaches of targets anyone can match may take ATTACH_BURST s of looks at once (5,000 demo
# hosts at ~0.8 ms each, with room to spare on a loaded machine), in slices of ATTACH_SLICE
# between which the loop serves its fds, then LOOK_SHARE[False] of a core: an attacker who
# starts thousands of matching processes gets at most that burst, then 5 % of a core.
ATTACH_BURST = 6.0
# One turn of the loop attaches targets anyone can match for at most ATTACH_SLICE s, then
# serves its fds (the other targets' inotify events, exits) before it attaches the next ones.
ATTACH_SLICE = 0.02
DEFERRED_BATCH = 64  # deferred targets taken at a turn (their exits let through at once)
# Reads of the inotify fd: READ_BURST at once, then at most READ_RATE a second, each taking the
# whole queue, so a flood of events cannot keep the loop spinning on reads of a few records:
# under a flood the loop wakes 100 times a second (each wake-up costs ~50 us of the kernel's
# time in a VM, as much as the Python around it), and an event waits 10 ms at most.
READ_BURST = 16
READ_RATE = 100.0
# The proc connector likewise: READ_BURST reads at once, then at most CONNECTOR_RATE a second
# (a birth is matched within 50 ms; an exit's status is read at once, see settle).
CONNECTOR_RATE = 20.0
# A watched file with this many records in one read is flooded (an open loop on it): those
# kinds are muted on it until one of its targets is looked at (WatchSet.mute).
MUTE_AFTER = 8
# After an inotify overflow every target is re-read, at most once per OVERFLOW_PAUSE s: a
# queue overflowing again and again is told (with the count) and re-read once a second.
OVERFLOW_PAUSE = 1.0


@dataclass
class Options:
    pids: list[int]
    watch_paths: set[bytes] | None = None  # --watch: only these files get attention
    interval: float = 1.0
    selector: Selector = field(default_factory=Selector)  # --exe, --name, --unit, --cgroup
    state_file: str | None = None  # --state-file: the targets' history across restarts
    max_watches: int | None = None  # --max-watches; None: half of fs.inotify.max_user_watches
    guard: bool = False  # --guard: refuse opens for writing of the targets' mapped files
    guard_also: tuple[bytes, ...] = ()  # --guard-also: guardable even in a library directory


@dataclass
class Held:
    """What the daemon holds for one target beside its state (inodewatch.target.Target)."""

    pidwatch: PidWatch
    reading: procfs.MapsReading | None = None  # a huge maps read over many turns of the loop
    follow_ups: list[Timer] = field(default_factory=list)  # looks soon after a reload
    # The watch set's move count after the target's last look (WatchSet.covered_since)
    watch_moves: int = 0


class Match(NamedTuple):
    """A process the selector matched, to attach (now or when the attaches' pace allows)."""

    term: tuple[str, bytes]
    operator: bool  # matchers.operator_named
    start_time: int  # its ProcessId's: a pid reused before the attach is told apart
    born: bool  # told by a fork or exec event (announced a moment later)


class AttachError(Exception):
    """A target named on the command line cannot be watched (message is one line)."""


class NoFdLeft(AttachError):
    """The daemon has no file descriptor left for the target's pidfd."""


def describe_process(pid: int) -> dict[str, Any]:
    """comm, exe, cmdline (at most procfs.CMDLINE_LIMIT bytes of it, then `truncated`) and
    start time for target.attached."""
    proc = psutil.Process(pid)
    with proc.oneshot():
        info: dict[str, Any] = {"comm": proc.name()}
        try:
            info["exe"] = os.fsencode(proc.exe())
        except psutil.AccessDenied:
            pass
        started = time.gmtime(proc.create_time())
    try:
        info["cmdline"], truncated = procfs.read_cmdline(pid)
        if truncated:
            info["truncated"] = True
    except procfs.AccessDenied:
        pass
    info["start_time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", started)
    return info


def describe_owner(pid: int) -> dict[str, Any]:
    """uid, mnt_ns and where it runs (unit, container: inodewatch.cgroups), for every event
    about the target; {} if it is gone already."""
    try:
        owner: dict[str, Any] = {"uid": procfs.read_uid(pid),
                                 "mnt_ns": procfs.read_mount_namespace(pid)}
    except (procfs.ProcError, procfs.StatParseError):
        return {}
    if (placement := read_placement(pid)) is not None:
        owner.update(placement.fields())
    return owner


class Daemon:
    def __init__(self, log: Any, sink: Any, options: Options, metrics: Any = None) -> None:
        self.log = log
        self.metrics = metrics  # inodewatch.metrics.Metrics, imported only when asked for
        self.notifier = Notifier.from_environment()  # systemd's Type=notify; no-op elsewhere
        self.metrics_failed = False
        self.sink = sink
        self.options = options
        self.targets: dict[int, Target] = {}
        self.held: dict[int, Held] = {}  # by pid: each target's fds and timers (and prepared ones')
        self.watcher = FileWatcher()
        self.watches = WatchSet(self.watcher, options.max_watches
                                or default_budget(max_user_watches()))
        self.short: set[str] = set()  # resources short now: watch.degraded said, not recovered
        self.reads = Bucket(READ_BURST, time.monotonic())  # reads of the inotify fd
        self.connector_reads = Bucket(READ_BURST, time.monotonic())  # and of the connector
        self.pending_looks: dict[int, None] = {}  # pids to look at when their pace allows
        # Attaching a target anyone can match (its first look) is paced too, for all of them
        # together: a process mapping 65,000 files that forks copies of itself would otherwise
        # cost a look of a second per child.
        self.attaches = Bucket(ATTACH_BURST, time.monotonic())
        self.deferred: dict[int, Match] = {}  # matched, to attach when `attaches` allows
        self.operator_count = 0  # targets with Target.operator (the others: the rest)
        self.overflows = 0  # inotify overflows not told yet
        self.next_recheck = 0.0  # no overflow re-read before this
        self.connector: ProcConnector | None = None
        self.exits = PendingExits(EXIT_STATUS_GRACE, connected=False)
        self.fds = FdBudget(limit=0, base=0)  # sized when run() starts
        self.rediscover = False  # births may have gone unseen: walk /proc at the next wake
        self.reactor = Reactor(on_error=self.on_error, on_gap=self.on_gap)
        self.heap = Heap(time.monotonic())  # the collector's pauses kept short (heap.py)
        # --unit targets' exits that the kernel did not explain, asked of systemd (unitstatus):
        # by pid, the query and the target.exited it completes
        self.unit_queries: dict[int, tuple[UnitQuery, Target, Event]] = {}
        self.stop_reason: str | None = None
        self.reread_queue: deque[int] = deque()  # targets still to re-read in this round
        self.selector = options.selector
        self.newborn: set[int] = set()  # pids the connector announced, to match
        self.gone_terms: set[tuple[str, bytes]] = set()  # terms whose target has exited
        self.reopen_log = False
        self.own_mnt_ns = procfs.read_mount_namespace(os.getpid())
        self.state = StateFile(options.state_file) if options.state_file else None
        self.saved = Loaded()  # histories to give back at attach, until start-up is over
        self.next_state_save = 0.0
        self.untrusted_told: set[bytes] = set()  # mounts named in watch.degraded already
        self.readings: set[int] = set()  # targets whose huge maps is being read
        self.cgroup_walk: cgroupwalk.CgroupWalk | None = None  # births, without the connector
        self.announcements = Announcements()  # target.attached of processes met at birth
        self.execs: set[int] = set()  # targets that exec'd: announced again with their label
        self.guard: Guard | None = None  # under --guard, while it runs
        self.marks: GuardMarks | None = None
        self.own_pids = {os.getpid()}  # never targets: the daemon, the guard's helper

    # --- events out -------------------------------------------------------------------

    def say(self, level: str, name: str, **fields: Any) -> None:
        """Log one event: the only way out, so the metrics count every one."""
        getattr(self.log, level)(name, **fields)
        if self.metrics is not None:
            self.metrics.count_event(name)

    def emit(self, event: Event, pid: int | None = None, target: Target | None = None) -> None:
        """Log `event`, about the target `pid` (or `target`, once it left self.targets)."""
        fields = dict(event.fields)
        if target is None and pid is not None:
            target = self.targets.get(pid)
        if target is not None:
            self.announce(target)  # its target.attached line first, if still held
            fields = {"pid": target.pid, **target.owner, **fields}
        elif pid is not None:
            fields = {"pid": pid, **fields}
        self.say(event.level, event.name, **fields)

    def degraded(self, resource: str, detail: str, **fields: Any) -> None:
        """Say that the daemon is short of `resource`, once until it has recovered."""
        if resource not in self.short:
            self.short.add(resource)
            self.say("warning", "watch.degraded", resource=resource, detail=detail, **fields)

    def recovered(self, resource: str, detail: str) -> bool:
        """Say that a shortage of `resource` is over; False if there was none."""
        if resource not in self.short:
            return False
        self.short.discard(resource)
        self.say("info", "watch.recovered", resource=resource, detail=detail)
        return True

    def live_divergences(self) -> Counter[tuple[str, str]]:
        live: Counter[tuple[str, str]] = Counter()
        for target in self.targets.values():
            live.update(target.live_divergences())
        return live

    def status_line(self) -> str:
        live = sum(t.live_count() for t in self.targets.values())
        return f"watching {len(self.targets)} targets, {live} divergences live"

    def write_metrics(self) -> None:
        if self.metrics is None:
            return
        live = self.live_divergences()
        self.metrics.set_targets(len(self.targets))
        self.metrics.set_live(live)
        error = self.metrics.write()
        if error is not None and not self.metrics_failed:
            print(f"inodewatch: {error}; still watching", file=sys.stderr, flush=True)
        self.metrics_failed = error is not None

    # --- start and stop ---------------------------------------------------------------

    def prepare(self, pid: int) -> Target:
        """Check that `pid` can be watched; raise AttachError with one clear line if not."""
        try:
            ident = procfs.read_identity(pid)
            procfs.check_readable(pid, b"maps")  # fail early, with the capability named
            pidwatch = PidWatch(pid)
            if procfs.read_identity(pid) != ident:  # the pid was reused in between
                pidwatch.close()
                raise ProcessLookupError
        except ProcessLookupError:
            raise AttachError(f"no such process: {pid}") from None
        except procfs.ProcError as exc:
            raise AttachError(str(exc)) from None
        except OSError as exc:  # EMFILE, ENFILE: pidfd_open's own errors
            raise NoFdLeft(f"cannot watch pid {pid}: {exc.strerror} (RLIMIT_NOFILE "
                           f"{self.fds.limit}); raise LimitNOFILE= or ulimit -n") from None
        self.held[pid] = Held(pidwatch)
        return Target.new(ident, time.monotonic(), self.options.watch_paths)

    def attach(self, target: Target, born: bool = False) -> None:
        """Start watching a prepared target; report divergence that already exists.  A
        target met at its birth (`born`: a fork or exec event) is announced a moment later
        (inodewatch.announce), its label read then."""
        info = self.label(target.pid)
        if target.term is not None:
            info["selector"] = term_text(target.term)
            info["reattached"] = self.takes_the_place(target)
        target.owner = describe_owner(target.pid)
        if (history := self.saved.targets.pop(target.ident, None)) is not None:
            # Same process as before our restart: its first look reports what changed since.
            target.history = history
            info["restored"] = True
        self.targets[target.pid] = target
        self.operator_count += target.operator
        self.reactor.register(self.held[target.pid].pidwatch.fileno(),
                              partial(self.on_pidfd, target.pid))
        # Watches first: from the moment target.attached is logged, an in-place write is
        # seen -- an operator (or a test) may act on that line at once.
        events = self.paced_look(target)
        if born:
            self.announcements.hold(target.pid, time.monotonic() + ANNOUNCE_DELAY, info, events)
            return
        self.say("info", "target.attached", pid=target.pid, **target.owner, **info)
        for event in events:
            self.emit(event, target.pid)

    @staticmethod
    def label(pid: int) -> dict[str, Any]:
        """comm, exe, cmdline, start_time (describe_process); {} when it is gone."""
        try:
            return describe_process(pid)
        except (psutil.Error, procfs.ProcError):
            return {}  # it exited already: the pidfd is readable and says so at once

    def announce(self, target: Target) -> None:
        """Log the target.attached line held for `target` (and what its first look found),
        with its label as it is now."""
        held = self.announcements.take(target.pid)
        if held is None:
            return
        info, events = held
        if (now := self.label(target.pid)).get("cmdline"):  # (a zombie's is empty)
            info.pop("truncated", None)
            info.update(now)
        self.say("info", "target.attached", pid=target.pid, **target.owner, **info)
        for event in events:
            self.emit(event, target=target)

    def announce_again(self, pid: int) -> None:
        """A target exec'd: another program, so another label (target.attached again, with
        `exec: true`; the same process, the same life for report)."""
        target = self.targets.get(pid)
        if target is None or self.announcements.holds(pid):
            return  # gone, or not announced yet: its label will be read when it is
        fields: dict[str, Any] = {"exec": True}
        if target.term is not None:
            fields["selector"] = term_text(target.term)
        self.say("info", "target.attached", pid=pid, **target.owner, **self.label(pid), **fields)

    def takes_the_place(self, target: Target) -> bool:
        """`reattached`: a process of the selector's that exited is replaced by this one,
        not joined by it -- a new worker its live master forked is no re-attach."""
        if target.term not in self.gone_terms:
            return False
        try:
            parent = self.targets.get(procfs.read_stat(target.pid).ppid)
        except procfs.ProcError:
            parent = None
        return parent is None or parent.term != target.term

    def consider(self, pids: list[int], born: bool = False) -> None:
        """Attach to those of `pids` that the selector matches (and we can read), while the
        fd budget lets us; `born`: they were told by fork or exec events.  Targets anyone can
        match wait in `deferred` when the attaches' pace or this turn's slice is spent."""
        matched: dict[int, Match] = {}
        for pid in pids:
            if pid in self.targets or pid in self.deferred or pid in self.own_pids:
                continue
            try:
                facts = read_facts(pid, self.selector)
                term = self.selector.match(facts)
                # A dying process has nothing left to watch (and its fd would be wasted).
                if term is not None and not (stat := procfs.read_stat(pid)).is_exiting:
                    matched[pid] = Match(term, operator_named(term, facts.cgroups),
                                         stat.start_time, born)
            except procfs.ProcError:
                continue  # gone, a kernel thread, or not ours to read
        if not matched:
            return
        # Let their exits through before anyone can see them attached (and kill them).
        self.follow_exits([*self.targets, *matched])
        slice_ends = time.monotonic() + ATTACH_SLICE
        for pid, match in matched.items():
            if match.operator or self.may_attach(slice_ends):
                self.attach_match(pid, match)
            else:
                self.deferred[pid] = match  # attached when the attaches' pace allows

    def may_attach(self, slice_ends: float) -> bool:
        """Whether a target anyone can match may be attached now: the attaches' pace allows,
        and this turn's ATTACH_SLICE is not spent (then the loop serves its fds first)."""
        now = time.monotonic()
        return now < slice_ends and self.attaches.allows(now, LOOK_SHARE[False])

    def attach_match(self, pid: int, match: Match) -> None:
        """Attach a process the selector matched, if it can be watched (and is the same one)."""
        started = time.monotonic()
        try:
            if not self.fds.admits(len(self.targets)):
                raise NoFdLeft
            target = self.prepare(pid)
        except NoFdLeft:
            self.degraded("file_descriptors",
                          f"pid {pid} not watched: {self.fds.describe(len(self.targets))}")
            return
        except AttachError:
            return  # gone, or not ours to read
        if target.ident.start_time != match.start_time:  # another process has the pid now
            self.held.pop(pid).pidwatch.close()
            self.newborn.add(pid)  # matched again, from its own facts, at the next turn
            return
        target.term, target.operator = match.term, match.operator
        self.attach(target, match.born)
        if not match.operator:
            self.attaches.take(time.monotonic() - started, time.monotonic(), LOOK_SHARE[False])

    def discover(self) -> None:
        self.consider(procfs.list_pids())

    def discovery_period(self) -> float:
        """Seconds between walks of /proc.  With the connector, births announce themselves;
        without it, a selector of units and cgroups only is served by a walk of those cgroups
        at every tick (see walk_cgroups), and anything else by the walk of /proc."""
        if self.connector is not None:
            return DISCOVERY_WITH_CONNECTOR
        if cgroupwalk.covers(self.selector) and (root := cgroupwalk.cgroup_root()) is not None:
            self.cgroup_walk = cgroupwalk.CgroupWalk(self.selector, root)
            return DISCOVERY_WITH_CONNECTOR
        return self.options.interval

    def walk_cgroups(self) -> None:
        """The new processes of the selected units and cgroups (no connector to tell them)."""
        if self.cgroup_walk is not None:
            self.consider(self.cgroup_walk.pids())

    def open_exit_source(self) -> str | None:
        """Subscribe to the proc connector; the reason it is unavailable, if it is."""
        if (deaf := own_connector_deafness()) is not None:  # it would subscribe, then hear nothing
            return (f"proc connector unusable: {deaf}, so exits are seen through pidfds, "
                    "without their status (signal and exit code unknown)")
        try:
            self.connector = ProcConnector.open()
        except ConnectorUnavailable as exc:
            return (f"proc connector unavailable ({exc.reason}): exits are seen through "
                    "pidfds, without their status")
        # After the pidfds (and inotify): an exit's status trails its pidfd's wake-up.
        self.reactor.register(self.connector.fileno(), self.on_connector, order=2)
        self.exits.connected = True
        return None

    def follow_exits(self, pids: list[int] | None = None) -> None:
        """Let the kernel pass us only our targets' exits, and births when a selector may
        match them (see exits.exit_filter)."""
        if self.connector is not None:
            try:
                self.connector.follow(list(self.targets) if pids is None else pids,
                                      births=bool(self.selector))
            except OSError:
                pass  # unfiltered still works, at a higher cost on a busy host

    def install_signals(self) -> socket.socket:
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._signal_writer = writer  # keep it open as long as the reader

        def on_stop(signum: int, _frame: Any) -> None:
            self.stop_reason = signal.Signals(signum).name

        def on_hup(_signum: int, _frame: Any) -> None:
            self.reopen_log = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        return reader

    # --- watches ----------------------------------------------------------------------

    @staticmethod
    def watches_at(disk: procfs.DiskView, masks: dict[bytes, int]) -> Wanted:
        """A target's watches (Target.wanted_watches) as the watch set takes them: under the
        target's root (/proc/PID/root when it lives in another mount namespace, so the watch
        lands on its file, not ours), with the inode now there."""
        # never a watch on a FUSE or network mount: adding it walks the path there
        return {disk.root + path: (mask, disk(path)) for path, mask in masks.items()
                if disk.trusts(path)}

    def sync_watches(self, target: Target, wanted: Wanted) -> None:
        if self.watches.sync(target.pid, wanted, target.operator):
            # The target may have opened the new file before its watch existed: look again
            # shortly, or a reload done in that gap would wait for the next tick.
            self.follow_up(target)

    # --- the guard (--guard) ---------------------------------------------------------------

    def start_guard(self) -> None:
        try:
            self.guard = Guard()  # from the main thread: its helper dies with it (PDEATHSIG)
        except GuardUnavailable as exc:
            raise AttachError(f"--guard: {exc}") from None
        self.marks = GuardMarks(self.guard)
        self.own_pids.add(self.guard.helper_pid)

    def sync_marks(self, target: Target, disk: procfs.DiskView | None) -> None:
        """Guard what `target` maps now (none: it is gone)."""
        if self.marks is None:
            return
        wanted = {} if disk is None else wanted_marks(
            target.mapped.values(), disk.root, disk, disk.trusts, self.options.guard_also,
            self.options.watch_paths)
        try:
            refused = self.marks.sync(target.pid, wanted)
        except GuardUnavailable as exc:  # its helper died or hung
            self.guard_failed(exc)
            return
        if refused:
            path, error = refused[0]
            self.degraded("fanotify_marks", f"{len(refused)} mapped file(s) of pid {target.pid} "
                          f"not guarded, e.g. {safe_text(path)}: {error.strerror} (raise "
                          "fs.fanotify.max_user_marks); tried again at its next look")

    def on_guard(self, _now: float) -> None:
        """The guard's records: each refusal told to every target it protected."""
        assert self.guard is not None and self.marks is not None
        drained = self.guard.drain()
        for refusal in drained.records:
            held = {}
            for pid in self.marks.holders(refusal.file):
                target = self.targets.get(pid)
                held[pid] = None if target is None else target.holding(refusal.file.ino)
            for pid, event in refusal_events(refusal, held, self.guard.deny_errno):
                self.emit(event, pid or None)
        if drained.dropped:
            self.say("warning", "guard.dropped", dropped=drained.dropped,
                     detail=f"{drained.dropped} records of refused writers lost on their way to "
                            "the log (every open was answered)")
        if self.guard.failure is not None:
            self.guard_failed(self.guard.failure)

    def guard_failed(self, reason: object) -> None:
        """The guard stopped: say so, and watch on without it."""
        assert self.guard is not None
        self.reactor.unregister(self.guard.fileno())
        self.guard.close()
        self.guard = self.marks = None
        self.say("error", "guard.stopped", reason=str(reason),
                 detail="the guard no longer runs: opens for writing of mapped files are allowed "
                        "again; the daemon goes on watching (restart it to guard again)")

    def check_watch_room(self) -> None:
        """watch.degraded once when paths go unwatched for lack of watches, watch.recovered
        once every path wanted is watched again."""
        unwatched = self.watches.unwatched()
        if unwatched and "inotify_watches" not in self.short:
            ws = self.watches
            pids = ws.affected()
            if ws.ceiling is not None:
                why = (f"the kernel refused more (fs.inotify.max_user_watches "
                       f"{max_user_watches()}, shared by every process of this user, is spent)")
            else:
                why = (f"the budget of {ws.budget} watches (--max-watches; default half of "
                       f"fs.inotify.max_user_watches) or of {ws.per_target} per target is spent")
            self.degraded("inotify_watches",
                          f"{unwatched} paths of {len(pids)} targets are not watched: {why}; "
                          "they are compared at each target's periodic re-read instead",
                          unwatched=unwatched, pids=pids[:20], max_watches=ws.budget)
        elif not unwatched:
            self.recovered("inotify_watches", "every path wanted is watched again")

    # --- looking again ----------------------------------------------------------------

    def read_snapshot(self, target: Target, disk: procfs.DiskView,
                      maps: procfs.MapsRead) -> tuple[list[MappedFile], list[OpenFile]] | None:
        """The target's files now (`maps`: its maps, just read), or None when it is exiting
        (then the pidfd tells)."""
        pid = target.pid
        try:
            mapped = procfs.read_mapped_files(pid, disk, maps)
            open_files = procfs.read_open_files(pid, disk)
            after = procfs.read_stat(pid)
        except (procfs.ProcError, ProcessLookupError):
            return None  # exiting: its pidfd tells
        for unknown in disk.unknown:  # each untrusted mount said once, as data
            if unknown.reason == procfs.UNTRUSTED_MOUNT and unknown.where not in self.untrusted_told:
                self.untrusted_told.add(unknown.where)
                self.say("warning", "watch.degraded", resource="untrusted_mount", pid=pid,
                         detail="files on a FUSE or network mount are not looked at (a stat "
                                "there may never return): " + safe_text(unknown.where))
        # A dying process's maps read empty: a snapshot taken across the exit is no news.
        if after.start_time != target.ident.start_time or after.is_exiting:
            return None
        return mapped, open_files

    def look_rate(self, target: Target) -> float:
        """The share of a core this target's looks refill at: its kind's, split among them."""
        same_kind = self.operator_count if target.operator else len(self.targets) - self.operator_count
        return LOOK_SHARE[target.operator] / max(1, same_kind)

    def paced_look(self, target: Target) -> list[Event]:
        """look(), its time charged to the target's pace."""
        started = time.monotonic()
        events = self.look(target)
        now = time.monotonic()
        target.pace.take(now - started, now, self.look_rate(target))
        return events

    def look_now(self, target: Target) -> None:
        """Look at the target now, whatever its pace."""
        for event in self.paced_look(target):
            self.emit(event, target.pid)

    def want_look(self, target: Target) -> None:
        """Look at the target as soon as its pace allows (at once, unless it is flooded)."""
        self.pending_looks[target.pid] = None

    def run_looks(self) -> None:
        """The looks asked for whose pace allows them now."""
        for pid in list(self.pending_looks):
            target = self.targets.get(pid)
            if target is None:
                del self.pending_looks[pid]
            elif (self.held[pid].reading is None
                  and target.pace.allows(time.monotonic(), self.look_rate(target))):
                del self.pending_looks[pid]
                self.look_now(target)

    def looks_due(self, now: float) -> float | None:
        """When the first look asked for may be done."""
        due = [t.pace.ready_at(now, self.look_rate(t))
               for t in map(self.targets.get, self.pending_looks)
               if t is not None and self.held[t.pid].reading is None]
        return min(due) if due else None

    def look(self, target: Target) -> list[Event]:
        """Read the target again and bring its watches up to date; the events that means.
        A huge maps is read on in later turns of the loop (read_huge_maps): then the events
        come from there, and a look asked for meanwhile is made once that read is done and
        the target's pace allows (its reads are charged to it like any look)."""
        held = self.held[target.pid]
        if held.reading is not None:
            self.want_look(target)
            return []
        try:
            held.reading = procfs.MapsReading(target.pid)
        except procfs.ProcError:
            return []  # exiting: its pidfd tells
        events = self.read_on(target, INLINE_MAPS_CHUNKS)
        if held.reading is not None and len(self.readings) > MAX_READINGS:
            self.stop_reading(target)  # too many under way: this one starts again later
            self.want_look(target)
        return events

    def read_on(self, target: Target, chunks: int) -> list[Event]:
        """Read `chunks` more of the target's maps; once it is whole, the look's events."""
        held = self.held[target.pid]
        assert held.reading is not None
        try:
            maps = held.reading.advance(chunks)
        except procfs.ProcError:
            maps = None  # exiting: its pidfd tells
            self.stop_reading(target)
        if maps is None:
            if held.reading is not None:
                self.readings.add(target.pid)
            return []
        self.stop_reading(target)
        return self.finish_look(target, maps)

    def stop_reading(self, target: Target) -> None:
        held = self.held[target.pid]
        if held.reading is not None:
            held.reading.close()
            held.reading = None
        self.readings.discard(target.pid)

    def read_huge_maps(self) -> None:
        """One turn's share of every huge maps under way."""
        for pid in list(self.readings):
            target = self.targets[pid]
            started = time.monotonic()
            events = self.read_on(target, MAPS_CHUNKS_PER_TURN)
            now = time.monotonic()
            target.pace.take(now - started, now, self.look_rate(target))
            for event in events:
                self.emit(event, pid)

    def finish_look(self, target: Target, maps: procfs.MapsRead) -> list[Event]:
        """Feed the target its snapshot and the disk's answers; bring its watches (and the
        guard's marks) up to what it needs now."""
        disk = procfs.DiskView(target.pid)
        snapshot = self.read_snapshot(target, disk, maps)
        if snapshot is None:
            return []
        held = self.held[target.pid]

        def write_watched(path: bytes, file: FileId) -> bool:  # since this target's last look
            return self.watches.covered_since(disk.root + path, file, WRITE_EVENTS,
                                              held.watch_moves)

        judge = ContentPass(HASH_PER_FILE, HASH_PER_LOOK)  # one pass: this look
        events, masks = target.look(*snapshot, time.monotonic(), disk.look,
                                    lambda f: judge.judge(target.pid, f, disk.root, disk.mounts),
                                    write_watched)
        self.sync_watches(target, self.watches_at(disk, masks))
        held.watch_moves = self.watches.moves
        self.sync_marks(target, disk)
        return events

    def on_file_events(self, events: list[FileEvent]) -> None:
        touched: set[int] = set()
        reloading: set[int] = set()
        flooded: dict[bytes, int] = {}
        for ev in events:
            if ev.kind == "ignored":
                self.watches.forget(ev.path)
            elif ev.records >= MUTE_AFTER and ev.name is None:
                flooded[ev.path] = flooded.get(ev.path, 0) | KIND_EVENTS.get(ev.kind, 0)
            for pid in self.watches.holders(ev.path):
                target = self.targets[pid]
                watched = self.watches.watched_inode(ev.path)
                stat = partial(self.stat_watched, pid, ev.path)
                reaction = target.on_file_event(ev.kind, watched, time.monotonic(),
                                                self.look_rate(target), stat)
                events_out = reaction.events
                if reaction.look_first:
                    assert watched is not None
                    self.look_now(target)
                    events_out = target.write_began(watched, stat)
                for event in events_out:
                    self.emit(event, pid)
                if reaction.reload:
                    reloading.add(pid)
                touched.add(pid)
        for path, kinds in flooded.items():
            self.watches.mute(path, kinds)
        for pid in touched:
            self.want_look(self.targets[pid])
        for pid in reloading:
            self.follow_up(self.targets[pid])
        self.run_looks()

    def follow_up(self, target: Target) -> None:
        """Look at the target again at the times it asks for (Target.follow_ups), in place
        of those it asked for before."""
        held = self.held[target.pid]
        for timer in held.follow_ups:
            timer.cancel()
        held.follow_ups = [self.reactor.call_at(at, partial(self.followed_up, target.pid))
                           for at in target.follow_ups(time.monotonic())]

    def followed_up(self, pid: int, _now: float) -> None:
        if (target := self.targets.get(pid)) is not None:
            self.want_look(target)

    @staticmethod
    def stat_watched(pid: int, path: bytes) -> os.stat_result | None:
        """What the watch path `path` of target `pid` names now, if it may still be stat'ed
        (it resolves as the target sees it)."""
        disk = procfs.DiskView(pid)
        if not (path.startswith(disk.root) and disk.trusts(path[len(disk.root):])):  # mounted since?
            return None
        try:
            return os.stat(path)
        except OSError:
            return None

    def recheck(self) -> None:
        """Inotify may have missed events (its queue overflowed, or the loop did not run):
        look for in-place writes by size and mtime in every target, including one that
        has died meanwhile (what it mapped is remembered), then re-read every target (a
        target anyone can match whose pace does not allow it now: when it does)."""
        now = time.monotonic()
        for target in list(self.targets.values()):
            if not target.checks_now(now, self.look_rate(target)):
                self.want_look(target)
                continue
            known = target.owner.get("mnt_ns")
            disk = procfs.DiskView(target.pid,
                                   namespace=f"mnt:[{known}]".encode() if known else None)
            for event in target.missed_writes(disk.look):
                self.emit(event, target.pid)
            self.look_now(target)

    def look_in_turn(self) -> None:
        """The periodic re-read, the safety net for what inotify cannot see: targets in turn,
        for at most a small share of this tick.  With few targets each is re-read every
        tick; with hundreds, in turn over several ticks, so the daemon stays near idle and
        returns to poll() (and to inotify's events) within milliseconds."""
        share = REREAD_SHARE_DEGRADED if "inotify_watches" in self.short else REREAD_SHARE
        stop_at = time.monotonic() + share * self.options.interval
        if not self.reread_queue:
            self.reread_queue.extend(self.targets)
        while self.reread_queue:
            pid = self.reread_queue.popleft()
            target = self.targets.get(pid)
            # A target whose looks are in debt (flooded, or huge) waits for a later round.
            if target is not None and target.pace.allows(time.monotonic(), self.look_rate(target)):
                self.look_now(target)
                if time.monotonic() >= stop_at:
                    break

    # --- exits ------------------------------------------------------------------------

    def read_connector(self, now: float) -> None:
        """Take in the connector's whole queue: exit statuses, births, and overruns."""
        assert self.connector is not None
        for ev in self.connector.read():
            if isinstance(ev, ProcessExit) and ev.pid == ev.tgid and ev.pid in self.targets:
                self.exits.status(ev.pid, ev.wait_status)
            elif isinstance(ev, ProcessExec) and ev.tgid in self.targets:
                self.execs.add(ev.tgid)
            elif isinstance(ev, ProcessExec) and self.selector:
                self.newborn.add(ev.tgid)
            elif isinstance(ev, ProcessFork) and self.selector and (
                    ev.parent_tgid in self.targets or ev.parent_tgid in self.newborn
                    or ev.parent_tgid in self.deferred):
                # A fork is a copy of its parent: it can match only if its parent did (a
                # worker forked by a host it matches).  Anything else that comes to match
                # does so by an exec, or is found by the walk of /proc.
                self.newborn.add(ev.child_pid)
        if self.connector.overrun:  # the kernel dropped events: exits' statuses, births
            self.connector.overrun = False
            self.exits.overran(now)
            self.rediscover = bool(self.selector)

    def on_connector(self, now: float) -> None:
        """The connector's queue, read at most CONNECTOR_RATE times a second after a burst:
        on a host that forks and execs a thousand processes a second, each wake-up for one
        birth would cost more than the birth's own check.  Exits do not wait: while one is
        pending (its pidfd told) the queue is read at every wake (settle)."""
        self.connector_reads.take(1, now, CONNECTOR_RATE)
        self.read_connector(now)
        if not self.connector_reads.allows(now, CONNECTOR_RATE):
            assert self.connector is not None
            self.reactor.pause(self.connector.fileno(),
                               self.connector_reads.ready_at(now, CONNECTOR_RATE))

    def on_pidfd(self, pid: int, now: float) -> None:
        """The target's pidfd says it exited: its status is on its way (or lost); the fd is
        not needed any more."""
        pidwatch = self.held[pid].pidwatch
        self.reactor.unregister(pidwatch.fileno())
        pidwatch.close()
        self.exits.exited(pid, now)

    def settle_exits(self, now: float) -> None:
        """Tell the exits whose status came (or whose wait ran out), and what that says
        about the connector."""
        reports = self.exits.done(now, EXITS_PER_WAKE)
        for report in reports:
            self.on_exit(report)
        for notice in self.exits.notices():
            if notice == "degraded":
                self.degraded("exit_status",
                              "proc connector queue overran (ENOBUFS): the kernel dropped "
                              "events; exits whose status was among them are reported with "
                              "status_source lost")
            else:
                self.recovered("exit_status", "exit statuses arrive from the proc connector again")
        if reports:
            if not self.exits.pending():  # once a mass exit is told, not at every batch
                self.follow_exits()
            if (self.fds.has_room(len(self.targets))
                    and self.recovered("file_descriptors",
                                       "file descriptors are available again for new targets")):
                self.rediscover = bool(self.selector)  # the refused ones, if still there

    def on_exit(self, report: ExitReport) -> None:
        target = self.targets.pop(report.pid)
        self.announce(target)
        self.stop_reading(target)
        for timer in self.held.pop(report.pid).follow_ups:
            timer.cancel()
        self.operator_count -= target.operator
        exited = target.exited(report.status)
        if target.asks_systemd(report.status):
            assert target.term is not None
            self.unit_queries[target.pid] = (UnitQuery(target.pid, target.term[1],
                                                       time.monotonic()),
                                             target, exited)
        else:
            self.emit(exited, target=target)
        if target.term is not None:
            self.gone_terms.add(target.term)
        self.sync_watches(target, {})
        self.sync_marks(target, None)

    def ask_units(self, now: float) -> None:
        """Start the systemd queries that are due; log the exits whose query gave up with the
        status the kernel gave (none)."""
        for pid, (query, _target, _exited) in list(self.unit_queries.items()):
            if query.given_up(now):
                self.unit_answered(pid, None)
            elif query.retry_at is not None and query.retry_at <= now:
                if (fd := query.start()) is None:
                    self.unit_answered(pid, None)
                else:
                    self.reactor.register(fd, partial(self.on_unit_output, pid, fd))

    def on_unit_output(self, pid: int, fd: int, now: float) -> None:
        query = self.unit_queries[pid][0]
        status = query.read(now)
        if query.child is None:  # its answer is in
            self.reactor.unregister(fd)
        if status is not None or query.given_up(now):
            self.unit_answered(pid, status)

    def unit_answered(self, pid: int, status: ExitStatus | None) -> None:
        """Log the exit, with systemd's status when it gave one."""
        query, target, exited = self.unit_queries.pop(pid)
        if query.child is not None:
            assert query.child.stdout is not None
            self.reactor.unregister(query.child.stdout.fileno())
            query.finish()
        self.emit(exited if status is None else with_status(exited, status), target=target)

    # --- the state file ---------------------------------------------------------------

    def load_state(self) -> None:
        if self.state is not None:
            self.saved = self.state.load()
            if self.saved.problem is not None:
                self.say("warning", "watch.degraded", resource="state_file", detail=self.saved.problem)

    def report_lost(self) -> None:
        """Saved targets that are gone: they ended while we were down, unseen (one
        target.lost each).  A saved target still running but no longer selected is dropped."""
        lost = dict(self.saved.other_boot)
        for ident, history in self.saved.targets.items():
            try:
                alive = procfs.read_identity(ident.pid) == ident
            except (procfs.ProcError, ProcessLookupError):
                alive = False
            if not alive:
                lost[ident] = history
        for ident, history in lost.items():
            detail = ("the machine restarted since" if ident in self.saved.other_boot
                      else "it ended while the daemon was not running")
            self.say("warning", "target.lost", pid=ident.pid, stale=history.stale(),
                     detail=f"{detail}: how it ended is unknown")
        self.saved = Loaded()

    def save_state(self, now: float, force: bool = False) -> None:
        """Rewrite the state file if it changed, at most every SAVE_EVERY seconds (and
        rarer if writing it takes more than SAVE_SHARE of the time)."""
        if self.state is None or (now < self.next_state_save and not force):
            return
        started = time.monotonic()
        news = self.state.save((t.ident, t.history, t.mapped) for t in self.targets.values())
        self.next_state_save = now + max(SAVE_EVERY, (time.monotonic() - started) / SAVE_SHARE)
        if news is not None:
            self.say(news[0], news[1], resource="state_file", detail=news[2])

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Attach, serve the loop until every target has exited (with a selector: until
        stopped), stop; the exit status (1: an error kept repeating)."""
        self.start()
        failed = None
        try:
            self.reactor.run(going=lambda: bool(self.targets or self.selector)
                             and self.stop_reason is None)
        except LoopFailed as exc:
            failed = str(exc)
        self.stop(f"error: {failed}" if failed else self.stop_reason or "all targets exited",
                  "error" if failed else "info")
        if failed:
            print(f"inodewatch: stopping: {failed}", file=sys.stderr, flush=True)
        return 1 if failed else 0

    def start(self) -> None:
        """Everything before the loop: the guard, the exit source, the named targets, the
        signals, the first looks and discovery; then the loop's handlers, timers and steps."""
        self.fds.limit = raise_fd_limit()
        if self.options.guard:
            self.start_guard()
        # Subscribe before taking the targets: an exit right after is then still told.
        unavailable = self.open_exit_source()
        prepared = [self.prepare(pid) for pid in self.options.pids]
        wake = self.install_signals()
        self.say("info", "daemon.started", version=__version__, targets=self.options.pids,
                 **({"selectors": [term_text(t) for t in self.selector.terms()]}
                    if self.selector else {}),
                 mnt_ns=self.own_mnt_ns)
        if self.guard is not None:
            self.say("info", "guard.started", errno=errno.errorcode[self.guard.deny_errno],
                     helper_pid=self.guard.helper_pid)
            # First: an opener of a guarded file waits for the helper, not for the loop, but
            # the records of refusals are the most urgent lines there are.
            self.reactor.register(self.guard.fileno(), self.on_guard, order=0)
        if unavailable:
            self.say("warning", "watch.degraded", detail=unavailable)
        self.load_state()
        for detail in missing_features(effective_capabilities()):
            self.say("warning", "watch.degraded", detail=detail)
        self.reactor.register(self.watcher.fileno(), self.read_inotify, order=1)
        self.reactor.register(wake.fileno(), lambda _now: _drain(wake))
        self.follow_exits([t.pid for t in prepared])
        # Every fd held now stays for the daemon's life; from here on one more per target.
        self.fds.base = _open_fds() - len(prepared)
        for target in prepared:
            self.attach(target)
        discovery = self.discovery_period()
        if self.selector:
            self.discover()
            self.reactor.call_every(discovery, lambda _now: self.discover())
        self.report_lost()
        self.check_watch_room()
        self.notifier.ready(self.status_line())
        self.reactor.call_every(self.options.interval, self.tick)
        if ping_every := self.notifier.watchdog_interval():
            self.reactor.call_every(ping_every, lambda _now: self.notifier.watchdog())
        self.schedule()

    def schedule(self) -> None:
        """What the loop does after the handlers and timers of every wake, in this order, and
        the deadlines it wakes for."""
        for step in (self.recheck_overflowed, self.settle, self.ask_units, self.attach_newborn,
                     self.attach_deferred, self.announce_due, self.announce_execs,
                     self.reopen_log_if_asked, lambda _now: self.read_huge_maps(),
                     lambda _now: self.run_looks(), self.rediscover_if_asked,
                     lambda _now: self.check_watch_room(), self.save_state):
            self.reactor.every_turn(step)
        for deadline in (lambda now: self.exits.next_deadline(), self.looks_due,
                         lambda now: now if self.readings else None,
                         lambda now: (self.attaches.ready_at(now, LOOK_SHARE[False])
                                      if self.deferred else None),
                         lambda now: self.next_recheck if self.overflows else None,
                         lambda now: min((min(q.deadline, q.retry_at or q.deadline)
                                          for q, _, _ in self.unit_queries.values()), default=None),
                         lambda now: self.announcements.next_due(),
                         lambda now: self.next_state_save if self.state else None):
            self.reactor.wake_by(deadline)

    def stop(self, reason: str, level: str) -> None:
        for pid in list(self.unit_queries):  # stopping: unanswered, as the kernel told them
            self.unit_answered(pid, None)
        self.notifier.stopping(reason)
        self.save_state(time.monotonic(), force=True)
        self.say(level, "daemon.stopped", reason=reason, targets=sorted(self.targets))
        self.write_metrics()

    def close(self) -> None:
        """Release every fd the daemon holds (run() leaves them to the process's end)."""
        for target in self.targets.values():
            self.stop_reading(target)
        for held in self.held.values():
            held.pidwatch.close()
        for query, _target, _exited in self.unit_queries.values():
            query.finish()
        if self.connector is not None:
            self.connector.close()
        if self.guard is not None:
            self.guard.close()
        self.watcher.close()
        self.reactor.close()

    # --- the loop's handlers, timers and steps ------------------------------------------

    def on_error(self, handler: str, exc: BaseException) -> None:
        self.say("error", "daemon.error", handler=handler, error=f"{type(exc).__name__}: "
                 f"{one_line(exc)}", traceback=format_traceback(exc))

    def on_gap(self, lost: float) -> None:
        self.say("warning", "watch.gap", gap_s=round(lost, 3),
                 detail=f"the daemon did not run for {lost:.1f} s (stopped, paused or "
                        "overloaded); events after this line carry the time it resumed")
        self.recheck()

    def read_inotify(self, now: float) -> None:
        """Take inotify's whole queue; past the read pace, leave its fd out of poll() until
        the pace allows."""
        self.reads.take(1, now, READ_RATE)
        events = self.watcher.read()
        self.overflows += self.watcher.overflowed
        self.on_file_events(events)
        if not self.reads.allows(now, READ_RATE):
            # Out of the poll set, not merely masked: inotify wakes every poller of its fd at
            # every event, whatever events the poller asked for.
            self.reactor.pause(self.watcher.fileno(), self.reads.ready_at(now, READ_RATE))

    def recheck_overflowed(self, now: float) -> None:
        if self.overflows and now >= self.next_recheck:
            self.say("warning", "watch.overflow", overflows=self.overflows,
                     detail="inotify queue overflowed; re-reading every target")
            self.overflows = 0
            self.next_recheck = now + OVERFLOW_PAUSE
            self.recheck()

    def settle(self, now: float) -> None:
        """While an exit is pending, the connector's queue at every wake (the status trails
        the pidfd), then the exits that can be told."""
        if self.connector is not None and self.exits.pending():
            self.read_connector(now)
        self.settle_exits(now)

    def attach_newborn(self, _now: float) -> None:
        if self.newborn:
            newborn, self.newborn = sorted(self.newborn), set()
            self.consider(newborn, born=True)

    def attach_deferred(self, _now: float) -> None:
        """The next of the targets waiting for the attaches' pace (matched already: their
        facts are not read again; a pid reused meanwhile is told by its start time)."""
        if not self.deferred or not self.may_attach(slice_ends := time.monotonic() + ATTACH_SLICE):
            return
        # the next few, their exits let through first (one filter for the batch)
        batch = [self.deferred.popitem() for _ in range(min(DEFERRED_BATCH, len(self.deferred)))]
        self.follow_exits([*self.targets, *(pid for pid, _ in batch)])
        for i, (pid, match) in enumerate(batch):
            if i and not self.may_attach(slice_ends):
                self.deferred.update(batch[i:])
                return
            self.attach_match(pid, match)

    def announce_due(self, _now: float) -> None:
        for pid in self.announcements.due(time.monotonic()):
            self.announce(self.targets[pid])

    def announce_execs(self, _now: float) -> None:
        execs, self.execs = sorted(self.execs), set()
        for pid in execs:
            self.announce_again(pid)

    def reopen_log_if_asked(self, _now: float) -> None:
        if self.reopen_log:
            self.reopen_log = False
            self.sink.reopen()

    def tick(self, now: float) -> None:
        """Every --interval: watches refused before, the periodic re-read, the cgroups'
        new processes, the metrics, the log's health, systemd's status line, and the heap
        frozen (heap.py)."""
        self.watches.retry()
        self.look_in_turn()
        self.walk_cgroups()
        self.write_metrics()
        self.sink.check()
        if self.notifier.enabled:  # (a walk of every target: not for nobody)
            self.notifier.status(self.status_line())
        self.heap.tick(now)

    def rediscover_if_asked(self, _now: float) -> None:
        if self.selector and self.rediscover:
            self.rediscover = False
            self.discover()


def _open_fds() -> int:
    """How many fds this process holds (the listing's own fd not counted)."""
    return len(os.listdir("/proc/self/fd")) - 1


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
