"""Command line: argument parsing, exit codes, one-line error messages.

Exit codes: 0 nothing diverged (or only to identical content) / clean stop, 1 a scan found
divergence that needs a restart, 2 usage or environment error.  Every error is one line on stderr, never a traceback.  Modules are
imported per command, because every `scan` pays the start-up time.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# typing only for the checkers: `--version` and every `scan` would pay its import (~5 ms)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

from inodewatch import __version__

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2
EXIT_NAGIOS_UNKNOWN = 3  # a plugin's UNKNOWN: scan --nagios could not scan

DESCRIPTION = """\
Tell which version of a shared object a running process really runs.

Watch mode (the default) follows the target's /proc/PID/maps and fd table together with
inotify events on the files it maps, and logs one JSON line per state change: a mapped
file deleted, replaced, renamed or overwritten in place, the target reloading it, and how
the target died.

  inodewatch --pid 38314                 watch until the target exits
  inodewatch --exe /usr/sbin/nginx       watch every nginx, re-attach when it restarts
  inodewatch --exe /usr/sbin/nginx --guard   ... and refuse a cp over a module nginx maps
  inodewatch scan --pid 38314            one pass: what diverges now (exit 1 if a restart is needed)
  inodewatch scan --all --json           the same for every process, as JSON lines
  inodewatch report events.json*         post-mortem: per target a timeline and a verdict
"""


def terminal_columns() -> int:
    """The width shutil.get_terminal_size() gives, without importing shutil."""
    try:
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, sized without shutil: argparse builds a formatter for every add_argument
    and imports shutil (with zlib, bz2, lzma) to size it, ~4 ms that every `scan` would pay."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=max(terminal_columns() - 2, 20))


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same, the description printed as written (the top-level examples)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, as every other error."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def pid_arg(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return pid


def interval_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.01 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"not an interval between 0.01 and 3600 seconds: {text!r}")
    return value


def watches_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a number of watches (an integer >= 1): {text!r}")
    return value


def build_parser(argv: Sequence[str] = ()) -> Parser:
    """The parser; `argv` only decides whether the report command's own arguments (defined
    by, and costing the import of, inodewatch.report) are needed."""
    parser = Parser(prog="inodewatch", description=DESCRIPTION,
                    formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"inodewatch {__version__}")
    watch = parser.add_argument_group("watch mode (the default command)")
    watch.add_argument("--pid", type=pid_arg, action="append", metavar="PID",
                       help="process to watch (repeatable); without a selector below, runs "
                            "until every target has exited")
    watch.add_argument("--exe", action="append", metavar="PATH",
                       help="watch every process running this executable, now and when it "
                            "starts again (repeatable); runs until stopped")
    watch.add_argument("--name", action="append", metavar="COMM",
                       help="watch every process with this name (as in ps -o comm; repeatable)")
    watch.add_argument("--unit", action="append", metavar="NAME.service",
                       help="watch the processes of this systemd unit (repeatable)")
    watch.add_argument("--cgroup", action="append", metavar="PATH",
                       help="watch the processes in this cgroup or below it, e.g. "
                            "/sys/fs/cgroup/system.slice/app.service (repeatable)")
    watch.add_argument("--watch", type=os.fsencode, action="append", metavar="PATH",
                       help="only these files get attention, e.g. /opt/app/so.so (repeatable); "
                            "default: every file the target maps or holds open")
    # Defaults are None so a flag given can be told from the config file's value (config.merge).
    watch.add_argument("--interval", type=interval_arg, metavar="SECONDS",
                       help="pace of the fallback re-read of maps and fds (default: 1.0); each "
                            "tick re-reads targets in turn for at most 0.3%% of it")
    watch.add_argument("--max-watches", type=watches_arg, metavar="N",
                       help="inotify watches the daemon may hold, files and directories "
                            "(default: half of fs.inotify.max_user_watches); one target gets at "
                            "most 1/16 of them (at least 256); --pid/--unit/--cgroup targets "
                            "before --name/--exe ones; paths left unwatched are compared at the "
                            "periodic re-read")
    watch.add_argument("--log-file", metavar="FILE",
                       help="append JSON lines to FILE (reopened on SIGHUP); default: stdout")
    watch.add_argument("--log-format", choices=("auto", "json", "console"),
                       help="auto (default): console on a terminal, JSON otherwise")
    watch.add_argument("--metrics-file", metavar="PATH",
                       help="write Prometheus gauges here for node_exporter's textfile "
                            "collector, atomically (name it *.prom)")
    watch.add_argument("--state-file", metavar="PATH",
                       help="keep what is known of each target here (written atomically when it "
                            "changes), so a restarted daemon reports what happened while it was "
                            "down; default: none")
    watch.add_argument("--guard", action="store_true", default=None,
                       help="refuse an open for writing of any file a target maps (cp over a "
                            "live plugin: the writer gets 'Text file busy', the target lives); "
                            "needs CAP_SYS_ADMIN; files the loader finds in the system library "
                            "directories are never guarded (README: the guard)")
    watch.add_argument("--guard-also", type=os.fsencode, action="append", metavar="PATH",
                       help="with --guard: guard this file, or the files under this directory, "
                            "even in a system library directory (never ld.so or libc)")
    watch.add_argument("--config", metavar="FILE",
                       help="settings as TOML, the same keys as these flags (default: "
                            "/etc/inodewatch/inodewatch.toml if it exists); flags win")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    scan = commands.add_parser(
        "scan", help="one pass over processes, no watching",
        description="Report, once, every mapped or open file that no longer matches the "
                    "file on disk at its path. Exit 0 if none, 1 if some, 2 on error.")
    who = scan.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=pid_arg, action="append", metavar="PID",
                     help="process to scan (repeatable)")
    who.add_argument("--all", action="store_true",
                     help="every process (kernel threads and unreadable ones are skipped and counted)")
    output = scan.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print the findings as the watch mode's JSON event lines")
    output.add_argument("--nagios", action="store_true",
                        help="print one Nagios/Icinga plugin status line with perfdata; exit 0 "
                             "OK, 1 WARNING (code that may differ from the disk's), 2 CRITICAL "
                             "(known to differ), 3 UNKNOWN (the scan failed)")
    scan.add_argument("--metrics-file", metavar="PATH",
                      help="also write what the scan found for node_exporter's textfile "
                           "collector, atomically (name it *.prom)")

    report = commands.add_parser(
        "report", help="post-mortem: per target a timeline and a verdict, from JSON logs",
        description="Read the daemon's JSON logs (plain or .gz, rotated files in any order; bad "
                    "lines are counted and skipped) and print, per target, a timeline and a "
                    "verdict, e.g. which overwritten file preceded a SIGSEGV.")
    if "report" in argv:
        from inodewatch import report as report_module

        report_module.add_arguments(report)
    return parser


def fail(message: str) -> int:
    print(f"inodewatch: {message}", file=sys.stderr)
    return EXIT_USAGE


def usage_error(message: str) -> int:
    return fail(f"error: {message} (see --help)")


def run_scan(args: argparse.Namespace) -> int:
    from inodewatch import procfs, render
    from inodewatch.scan import scan_all, scan_pids

    try:
        summary = scan_all() if args.all else scan_pids(args.pid)
    except procfs.ProcError as exc:
        return nagios_unknown(str(exc)) if args.nagios else fail(str(exc))
    if args.metrics_file or args.nagios:
        groups = render.scan_groups(summary)
        if args.metrics_file:
            from inodewatch import scanmetrics  # prometheus_client: ~80 ms, only when asked

            if (error := scanmetrics.write(args.metrics_file, groups, len(summary.reports),
                                           summary.skipped)) is not None:
                return nagios_unknown(error) if args.nagios else fail(error)
        if args.nagios:
            from inodewatch.nagios import status_line
            from inodewatch.restart import plan

            code, line = status_line(groups, plan(groups, render.user_name)[0],
                                     len(summary.reports), summary.skipped)
            print(line)
            return code
    if args.json:
        render.print_scan_events(summary)
    else:
        render.print_scan_table(summary)
    return EXIT_DIVERGED if summary.restart_needed else EXIT_OK


def nagios_unknown(message: str) -> int:
    from inodewatch.nagios import unknown_line

    print(unknown_line(message))
    return EXIT_NAGIOS_UNKNOWN


def run_report(args: argparse.Namespace) -> int:
    from inodewatch import report

    try:
        return report.run(args)
    except report.ReportError as exc:
        return fail(str(exc))


def run_watch(args: argparse.Namespace) -> int:
    from inodewatch.daemon import AttachError, Daemon, Options
    from inodewatch.eventlog import LogSink, choose_format, make_logger, origin
    from inodewatch.text import escape_control
    from inodewatch.matchers import SelectorError, absent_terms, make_selector

    if not (args.pid or args.exe or args.name or args.unit or args.cgroup):
        return usage_error("nothing to watch: give --pid, --exe, --name, --unit or --cgroup "
                           "(or set them in the config file), or a command such as scan")
    try:
        selector = make_selector(args.exe or [], args.name or [], args.cgroup or [], args.unit or [])
    except SelectorError as exc:
        return usage_error(str(exc))
    for absent in absent_terms(selector):
        print(f"inodewatch: warning: {escape_control(absent)}; watching for it all the same",
              file=sys.stderr, flush=True)
    metrics = None
    if args.metrics_file:
        from inodewatch.metrics import Metrics

        metrics = Metrics(args.metrics_file)
        if (error := metrics.write()) is not None:
            return fail(error)
    try:
        sink = LogSink(path=args.log_file)
    except OSError as exc:
        return fail(f"cannot open log file {args.log_file}: {exc.strerror}")
    fmt = choose_format(args.log_format, sink)
    if fmt == "json" and args.log_file is None:
        from inodewatch.journal import JournalSink

        if (native := JournalSink.for_stdout()) is not None:  # stdout is journald's stream
            sink, fmt = native, "journal"
    log = make_logger(sink, fmt, origin())
    options = Options(pids=args.pid or [], interval=args.interval,
                      watch_paths=set(map(os.path.realpath, args.watch)) if args.watch else None,
                      selector=selector,
                      state_file=args.state_file, max_watches=args.max_watches,
                      guard=args.guard,
                      guard_also=tuple(map(os.path.realpath, args.guard_also or ())))
    try:
        return Daemon(log, sink, options, metrics).run()
    except AttachError as exc:
        return fail(str(exc))
    finally:
        sink.close()


def guard_standard_fds() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr, so no file we open later takes its
    number and receives what was meant for the terminal (the log sink reports the closed
    stdout itself)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


def run() -> NoReturn:
    """The `inodewatch` command (and `python -m inodewatch`): main(), then the process ends
    without the interpreter's tear-down, which would collect and free, one by one, every
    object a scan made (~7 ms after a 500-process scan) in a process about to vanish.  Every
    file but stdout and stderr is written unbuffered or closed by now; those two are flushed."""
    status = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when we started
                stream.flush()
        except (OSError, ValueError):
            pass  # the reader is gone (`| head`), or the stream closed: nothing more to say
    os._exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    guard_standard_fds()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == EXIT_USAGE and "--nagios" in argv:  # a plugin's UNKNOWN, on stdout
            return nagios_unknown("usage error (see inodewatch scan --help)")
        raise
    try:
        if args.command == "scan":
            return run_scan(args)
        if args.command == "report":
            return run_report(args)
        from inodewatch.config import ConfigError, load_default_or, merge

        try:
            args = merge(load_default_or(args.config), args)
        except ConfigError as exc:
            return fail(str(exc))
        return run_watch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `inodewatch scan --all | head`: the reader is gone; nothing more to say.
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # a bug: still one line, never a traceback on an operator's screen
        return fail(f"internal error: {type(exc).__name__}: {exc} (please report it)")
