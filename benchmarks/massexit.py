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
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "iwmass"


def stamp(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines() if line]


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def run_round(tree: Path, work: Path, count: int, user: str, timeout: float,
              match: bool = True) -> dict:
    plugin = work / "so.so"
    shutil.copyfile(REPO / "csrc/so1.so", plugin)
    demo = subprocess.Popen([str(REPO / "csrc/reload"), "--mode", "leak", "--interval-ms", "50",
                             "--lib", str(plugin)], stdout=subprocess.DEVNULL)
    herd_dir = Path(tempfile.mkdtemp(prefix="iwmass."))
    herd_dir.chmod(0o755)
    shutil.copy("/bin/sleep", herd_dir / NAME)
    script = f"i=0; while [ $i -lt {count} ]; do ./{NAME} 3600 & i=$((i+1)); done; wait"
    herd = subprocess.Popen(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                             "--", "sh", "-c", script], cwd=herd_dir, start_new_session=True)
    log = work / f"events.{time.monotonic_ns()}.json"
    daemon = None
    try:
        def herd_up() -> bool:
            out = subprocess.run(["pgrep", "-c", "-x", "-g", str(herd.pid), NAME],
                                 capture_output=True, text=True).stdout
            return int(out or 0) == count
        if not wait_until(herd_up, 120):
            sys.exit("massexit: the herd did not start")
        time.sleep(0.2)  # the demo has mapped its plugin
        daemon = subprocess.Popen([sys.executable, "-m", "inodewatch", "--pid", str(demo.pid),
                                   "--name", NAME if match else "iwnobody",
                                   "--log-file", str(log)], cwd=tree)
        expected = count if match else 0
        attached = lambda: sum(e["event"] == "target.attached" for e in read_log(log)) >= expected + 1
        if not wait_until(attached, 300):
            names = Counter(e["event"] for e in read_log(log))
            sys.exit(f"massexit: the daemon did not attach to every process: {dict(names)}")
        t0 = time.time()
        os.killpg(herd.pid, signal.SIGKILL)
        os.unlink(plugin)
        shutil.copyfile(REPO / "csrc/so2.so", plugin)

        def exits() -> list[dict]:
            return [e for e in read_log(log) if e["event"] == "target.exited"]
        drained = wait_until(lambda: len(exits()) == expected
                             and any(e["event"] == "mapping.replaced" for e in read_log(log)),
                             timeout) and expected > 0
        events = read_log(log)
        first = {}
        for e in events:
            if e.get("pid") == demo.pid and e["event"] not in first:
                first[e["event"]] = stamp(e) - t0
        told = exits()
        return {
            "deleted": first.get("mapping.deleted"),
            "replaced": first.get("mapping.replaced"),
            "drain": max(stamp(e) for e in told) - t0 if drained else None,
            "told": len(told),
            "sources": dict(Counter(e["status_source"] for e in told)),
            "signals": dict(Counter(str(e["signal"]) for e in told)),
            "degraded": [e.get("resource") for e in events if e["event"] == "watch.degraded"],
        }
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        if herd.poll() is None:
            os.killpg(herd.pid, signal.SIGKILL)
        herd.wait()
        demo.kill()
        demo.wait()
        shutil.rmtree(herd_dir)


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


def run_churn(tree: Path, work: Path, seconds: float, rate: float, every: float,
              user: str) -> dict:
    # One leak-mode demo per operation: a leak-mode host never maps the new file (dlopen finds
    # the name loaded already), so only its first rm removes an inode it maps.
    demos = []
    for i in range(max(1, int(seconds // every))):
        (work / f"d{i}").mkdir(exist_ok=True)
        plugin = work / f"d{i}" / "so.so"
        shutil.copyfile(REPO / "csrc/so1.so", plugin)
        demos.append((plugin, subprocess.Popen(
            [str(REPO / "csrc/reload"), "--mode", "leak", "--interval-ms", "50", "--lib",
             str(plugin)], stdout=subprocess.DEVNULL)))
    herd_dir = Path(tempfile.mkdtemp(prefix="iwmass."))
    herd_dir.chmod(0o755)
    shutil.copy("/bin/sleep", herd_dir / NAME)
    log = work / f"events.{time.monotonic_ns()}.json"
    pids = [a for _, d in demos for a in ("--pid", str(d.pid))]
    time.sleep(0.2)  # the demos have mapped their plugins
    daemon = subprocess.Popen([sys.executable, "-m", "inodewatch", *pids, "--name", NAME,
                               "--log-file", str(log)], cwd=tree)
    spawner = None
    try:
        attached = lambda: sum(e["event"] == "target.attached" for e in read_log(log)) >= len(demos)
        if not wait_until(attached, 30):
            sys.exit("massexit: the daemon did not attach to the demos")
        spawner = subprocess.Popen(["setpriv", f"--reuid={user}", f"--regid={user}",
                                    "--clear-groups", "--", sys.executable, "-c", SPAWNER,
                                    str(rate), str(seconds)], cwd=herd_dir,
                                   stdout=subprocess.PIPE, text=True, start_new_session=True)
        ops = []  # (demo pid, time of the rm, the inode it removed)
        time.sleep(every / 2)
        for plugin, demo in demos:
            ino = os.stat(plugin).st_ino
            ops.append((demo.pid, time.time(), ino))
            os.unlink(plugin)
            shutil.copyfile(REPO / "csrc/so2.so", plugin)
            time.sleep(every)
        spawned = int(spawner.communicate()[0] or 0)
        time.sleep(2)
        events = read_log(log)
        deleted = {(e["pid"], e["mapped_ino"]): stamp(e) for e in events
                   if e["event"] == "mapping.deleted"}
        lags = [deleted[pid, ino] - t for pid, t, ino in ops
                if (pid, ino) in deleted and deleted[pid, ino] - t <= 2]
        return {"ops": len(ops), "seen": len(lags), "lag_max": max(lags, default=None),
                "lag_median": statistics.median(lags) if lags else None, "spawned": spawned,
                "attached": sum(e["event"] == "target.attached" for e in events) - len(demos),
                "sources": dict(Counter(e["status_source"] for e in events
                                        if e["event"] == "target.exited")),
                "degraded": [e.get("resource") for e in events if e["event"] == "watch.degraded"]}
    finally:
        if spawner is not None and spawner.poll() is None:
            os.killpg(spawner.pid, signal.SIGKILL)
            spawner.wait()
        daemon.kill()
        daemon.wait()
        for _, demo in demos:
            demo.kill()
            demo.wait()
        shutil.rmtree(herd_dir)


def fmt(value: float | None, timeout: float) -> str:
    return f"> {timeout:.0f} s" if value is None else f"{value * 1000:.0f} ms"


def median(values: list[float | None]) -> float | None:
    """None (not within the timeout) sorts last."""
    ordered = sorted(values, key=lambda v: (v is None, v or 0))
    return ordered[len(ordered) // 2]


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
    subprocess.run(["make", "-s", "-C", str(REPO / "csrc")], check=True)
    user = str(int(subprocess.run(["id", "-u", args.user], capture_output=True, text=True,
                                  check=True).stdout))
    peers = {"A": REPO, "B": args.base.resolve(), "C": REPO}
    results: dict[str, list[dict]] = {peer: [] for peer in args.order}
    work = Path(tempfile.mkdtemp(prefix="massexit."))
    try:
        for i in range(args.rounds):
            for peer in (args.order if i % 2 == 0 else args.order[::-1]):
                r = (run_churn(peers[peer], work, args.churn, args.rate, args.every, user)
                     if args.churn else run_round(peers[peer], work, args.count, user,
                                                  args.timeout, match=peer != "C"))
                results[peer].append(r)
                print(f"round {i + 1} {peer}: {json.dumps(r)}", flush=True)
    finally:
        shutil.rmtree(work)
    print()
    if args.churn:
        print("| peer | root rm+cp seen within 2 s | lag median | lag max | processes spawned "
              "(median) | attached (median) | status_source |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for peer, rs in results.items():
            sources = Counter()
            for r in rs:
                sources.update(r["sources"])
            lags = [r["lag_median"] for r in rs if r["lag_median"] is not None]
            worst = [r["lag_max"] for r in rs if r["lag_max"] is not None]
            print(f"| {peer} `{commit(peers[peer])}` | {sum(r['seen'] for r in rs)} of "
                  f"{sum(r['ops'] for r in rs)} | {fmt(median(lags) if lags else None, 2)} "
                  f"| {fmt(max(worst) if worst else None, 2)} "
                  f"| {statistics.median(r['spawned'] for r in rs):.0f} "
                  f"| {statistics.median(r['attached'] for r in rs):.0f} | {dict(sources)} |")
        return 0
    print("| peer | rm -> mapping.deleted | cp -> mapping.replaced | drain (kill -> last "
          "target.exited) | exits told | status_source | signal |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for peer, rs in results.items():
        sources = Counter()
        signals = Counter()
        for r in rs:
            sources.update(r["sources"])
            signals.update(r["signals"])
        print(f"| {peer} `{commit(peers[peer])}` | {fmt(median([r['deleted'] for r in rs]), args.timeout)} "
              f"| {fmt(median([r['replaced'] for r in rs]), args.timeout)} "
              f"| {'(not watched)' if peer == 'C' else fmt(median([r['drain'] for r in rs]), args.timeout)} "
              f"| {statistics.median(r['told'] for r in rs):.0f} of {args.count} "
              f"| {dict(sources)} | {dict(signals)} |")
    return 0


def commit(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"


if __name__ == "__main__":
    raise SystemExit(main())
