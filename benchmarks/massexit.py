"""Mass exit: how long the daemon takes to tell 2,000 exits, and whether a root target's
rm+cp made right after the kill is seen in time (issue 13, item 4).

Per round, for one peer (this checkout, or a git worktree of another commit):
  - the demo (`csrc/reload --mode leak`) runs as root, watched by `--pid`;
  - `--count` copies of sleep(1) named `iwmass` run as an unprivileged user (`--user`,
    default nobody), in one process group, all matching `--name iwmass`;
  - the daemon starts (`python3 -m inodewatch --pid DEMO --name iwmass --log-file FILE`, run
    from the peer's tree so that tree's package is imported) and attaches to all of them;
  - t0 = time.time(); one killpg(SIGKILL) ends the herd; at once `rm so.so; cp so2.so so.so`
    on the demo's plugin;
  - from the events' own timestamps: the lag of `mapping.deleted` / `mapping.replaced` after
    t0, the drain (the last `target.exited` after t0), and how many exits came with their
    status (`status_source`).
A round waits at most `--timeout` seconds for the drain; a peer that has not finished by then
is reported as "> timeout" with the count told.  Rounds alternate A B A B; medians.

With `--churn SECONDS`, a round is instead a flood of short-lived matching processes: the
user spawns `iwmass 0.05` (a 50 ms life) at `--rate` a second (default 1,170: 70,000 a
minute) for SECONDS, while root does `rm so.so; cp so2.so so.so` on the demo's plugin every
`--every` seconds, each time on another demo (SECONDS / every of them, all by `--pid`); an
operation counts as seen when `mapping.deleted` names that demo and the inode it removed
within 2 s, and its lag is that event's timestamp minus the time of the rm.

    sudo python3 benchmarks/massexit.py --base /tmp/iw-base [--rounds 3] [--count 2000]
    sudo python3 benchmarks/massexit.py --base /tmp/iw-base --churn 40

`--base DIR` is the peer B tree (made with `git worktree add --detach DIR 411ebf0`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import REPO
from harness.daemon import Daemon, Event, event_time
from harness.demo import SO1, build_demo, demo_args, rm_cp
from harness.procs import BenchError, Children, as_user, exits, scratch, wait_until
from harness.results import commit_of
from harness.stats import fmt_ms, in_turn

NAME = "iwmass"
SPAWNER = """
import os, signal, sys, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps them
rate, until = float(sys.argv[1]), time.monotonic() + float(sys.argv[2])
start, n = time.monotonic(), 0
while (now := time.monotonic()) < until:
    if n < (now - start) * rate:
        os.posix_spawn("./iwmass", ["iwmass", "0.05"], os.environ)
        n += 1
    else:
        time.sleep(0.0005)
print(n)
"""


# --- set-up -------------------------------------------------------------------------------


def start_demo(children: Children, plugin: Path) -> subprocess.Popen[Any]:
    """A leak-mode demo: it never maps the new file, so only its first rm removes an inode
    it maps."""
    plugin.parent.mkdir(exist_ok=True)
    shutil.copyfile(SO1, plugin)
    return children.spawn(demo_args(plugin, "leak", 50), signal.SIGKILL,
                          stdout=subprocess.DEVNULL)


def herd_dir(work: Path) -> Path:
    """A directory the user may run from, with sleep(1) named iwmass."""
    where = work / f"herd.{time.monotonic_ns()}"
    where.mkdir()
    where.chmod(0o755)
    shutil.copy("/bin/sleep", where / NAME)
    return where


def start_daemon(children: Children, tree: Path, pids: list[int], name: str,
                 log: Path) -> Daemon:
    """The peer's daemon (run from its tree), killed at the end."""
    return Daemon(children, [*(a for p in pids for a in ("--pid", str(p))), "--name", name],
                  log, tree, stop_signal=signal.SIGKILL)


# --- measure ------------------------------------------------------------------------------


def run_round(tree: Path, work: Path, count: int, user: str, timeout: float,
              match: bool = True) -> dict[str, Any]:
    """`count` sleepers of `user` killed at once, and the root demo's rm+cp right after."""
    with Children() as children:
        demo = start_demo(children, work / "so.so")
        herd = children.spawn([*as_user(user), "sh", "-c", f"i=0; while [ $i -lt {count} ]; "
                               f"do ./{NAME} 3600 & i=$((i+1)); done; wait"], signal.SIGKILL,
                              group=True, cwd=herd_dir(work))

        def herd_up() -> bool:
            out = subprocess.run(["pgrep", "-c", "-x", "-g", str(herd.pid), NAME],
                                 capture_output=True, text=True).stdout
            return int(out or 0) == count
        if not wait_until(herd_up, 120):
            raise BenchError("the herd did not start")
        time.sleep(0.2)  # the demo has mapped its plugin
        daemon = start_daemon(children, tree, [demo.pid], NAME if match else "iwnobody",
                              work / f"events.{time.monotonic_ns()}.json")
        expected = count if match else 0
        if not wait_until(lambda: daemon.log.count("target.attached") >= expected + 1, 300):
            names = Counter(e["event"] for e in daemon.log.read())
            raise BenchError(f"the daemon did not attach to every process: {dict(names)}")
        t0 = time.time()
        os.killpg(herd.pid, signal.SIGKILL)
        rm_cp(work / "so.so")
        drained = wait_until(lambda: daemon.log.count("target.exited") == expected
                             and daemon.log.count("mapping.replaced") > 0,
                             timeout) and expected > 0
        return exit_figures(daemon.log.read(), demo.pid, t0, drained)


def run_churn(tree: Path, work: Path, seconds: float, rate: float, every: float,
              user: str) -> dict[str, Any]:
    """Short-lived matching processes at `rate` a second, and a root rm+cp every `every` s
    on another demo."""
    with Children() as children:
        plugins = [work / f"d{i}" / "so.so" for i in range(max(1, int(seconds // every)))]
        demos = [start_demo(children, plugin) for plugin in plugins]
        time.sleep(0.2)  # the demos have mapped their plugins
        daemon = start_daemon(children, tree, [d.pid for d in demos], NAME,
                              work / f"events.{time.monotonic_ns()}.json")
        if not wait_until(lambda: daemon.log.count("target.attached") >= len(demos), 30):
            raise BenchError("the daemon did not attach to the demos")
        spawner = children.spawn([*as_user(user), sys.executable, "-c", SPAWNER, str(rate),
                                  str(seconds)], signal.SIGKILL, group=True,
                                 cwd=herd_dir(work), stdout=subprocess.PIPE, text=True)
        ops = []  # (demo pid, time of the rm, the inode it removed)
        time.sleep(every / 2)
        for plugin, demo in zip(plugins, demos):
            done = rm_cp(plugin)
            ops.append((demo.pid, done.t_unlink, done.old_ino))
            time.sleep(every)
        spawned = int(spawner.communicate()[0] or 0)
        time.sleep(2)
        return churn_figures(daemon.log.read(), ops, len(demos), spawned)


# --- analyse ------------------------------------------------------------------------------


def exit_figures(events: list[Event], demo: int, t0: float, drained: bool) -> dict[str, Any]:
    """The demo's first events after t0, the drain, and how the exits were told."""
    first: dict[str, float] = {}
    for e in events:
        if e.get("pid") == demo and e["event"] not in first:
            first[e["event"]] = event_time(e) - t0
    told = [e for e in events if e["event"] == "target.exited"]
    return {
        "deleted": first.get("mapping.deleted"),
        "replaced": first.get("mapping.replaced"),
        "drain": max(event_time(e) for e in told) - t0 if drained else None,
        "told": len(told),
        "sources": dict(Counter(e["status_source"] for e in told)),
        "signals": dict(Counter(str(e["signal"]) for e in told)),
        "degraded": [e.get("resource") for e in events if e["event"] == "watch.degraded"],
    }


def churn_figures(events: list[Event], ops: list[tuple[int, float, int]], demos: int,
                  spawned: int) -> dict[str, Any]:
    """Each rm+cp seen when mapping.deleted names its demo and inode within 2 s."""
    deleted = {(e["pid"], e["mapped_ino"]): event_time(e) for e in events
               if e["event"] == "mapping.deleted"}
    lags = [deleted[pid, ino] - t for pid, t, ino in ops
            if (pid, ino) in deleted and deleted[pid, ino] - t <= 2]
    return {"ops": len(ops), "seen": len(lags), "lag_max": max(lags, default=None),
            "lag_median": statistics.median(lags) if lags else None, "spawned": spawned,
            "attached": sum(e["event"] == "target.attached" for e in events) - demos,
            "sources": dict(Counter(e["status_source"] for e in events
                                    if e["event"] == "target.exited")),
            "degraded": [e.get("resource") for e in events if e["event"] == "watch.degraded"]}


def median_told(values: list[float | None]) -> float | None:
    """The median of rounds; None (not within the timeout) sorts last."""
    ordered = sorted(values, key=lambda v: (v is None, v or 0))
    return ordered[len(ordered) // 2]


def summed(rounds: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for r in rounds:
        total.update(r[key])
    return dict(total)


# --- report -------------------------------------------------------------------------------


def fmt(value: float | None, timeout: float) -> str:
    return f"> {timeout:.0f} s" if value is None else f"{fmt_ms(value, 0)} ms"


def churn_table(results: dict[str, list[dict[str, Any]]], peers: dict[str, Path]) -> list[str]:
    lines = ["| peer | root rm+cp seen within 2 s | lag median | lag max | processes spawned "
             "(median) | attached (median) | status_source |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for peer, rs in results.items():
        lags = [r["lag_median"] for r in rs if r["lag_median"] is not None]
        worst = [r["lag_max"] for r in rs if r["lag_max"] is not None]
        lines.append(f"| {peer} `{commit_of(peers[peer])}` | {sum(r['seen'] for r in rs)} of "
                     f"{sum(r['ops'] for r in rs)} | {fmt(median_told(lags) if lags else None, 2)} "
                     f"| {fmt(max(worst) if worst else None, 2)} "
                     f"| {statistics.median(r['spawned'] for r in rs):.0f} "
                     f"| {statistics.median(r['attached'] for r in rs):.0f} "
                     f"| {summed(rs, 'sources')} |")
    return lines


def exit_table(results: dict[str, list[dict[str, Any]]], peers: dict[str, Path],
               args: argparse.Namespace) -> list[str]:
    lines = ["| peer | rm -> mapping.deleted | cp -> mapping.replaced | drain (kill -> last "
             "target.exited) | exits told | status_source | signal |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for peer, rs in results.items():
        drain = "(not watched)" if peer == "C" else \
            fmt(median_told([r["drain"] for r in rs]), args.timeout)
        lines.append(f"| {peer} `{commit_of(peers[peer])}` "
                     f"| {fmt(median_told([r['deleted'] for r in rs]), args.timeout)} "
                     f"| {fmt(median_told([r['replaced'] for r in rs]), args.timeout)} "
                     f"| {drain} | {statistics.median(r['told'] for r in rs):.0f} of {args.count} "
                     f"| {summed(rs, 'sources')} | {summed(rs, 'signals')} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="peer B: a tree of another commit")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--user", default="nobody")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--order", default="AB", help="the peers of the first round, in order; "
                        "C is this checkout with the herd unmatched (the kernel's own cost)")
    parser.add_argument("--churn", type=float, help="seconds of short-lived processes instead")
    parser.add_argument("--rate", type=float, default=70_000 / 60)
    parser.add_argument("--every", type=float, default=5.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("massexit: run as root (the demo is root's, the herd another user's)")
    build_demo()
    peers = {"A": REPO, "B": args.base.resolve(), "C": REPO}
    results: dict[str, list[dict[str, Any]]] = {peer: [] for peer in args.order}
    with exits("massexit"), scratch("massexit.", "massexit", mode=0o755) as work:
        for i in range(args.rounds):
            for peer in in_turn(args.order, i):
                r = (run_churn(peers[peer], work, args.churn, args.rate, args.every, args.user)
                     if args.churn else run_round(peers[peer], work, args.count, args.user,
                                                  args.timeout, match=peer != "C"))
                results[peer].append(r)
                print(f"round {i + 1} {peer}: {json.dumps(r)}", flush=True)
    print()
    print("\n".join(churn_table(results, peers) if args.churn else
                    exit_table(results, peers, args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
