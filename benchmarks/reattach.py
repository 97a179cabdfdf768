"""In a container: how long after `systemctl restart demo` the watcher attaches the new
process (issue 12 item 2), this checkout against another commit's tree.

Per round and peer (A: this checkout, B: --base, alternated A B A B): a bookworm booted with
systemd-nspawn (tests/nspawn.py: the image is cached, ~8 s a boot), the peer's wheel, units
and demo in it; `demo.service` (the hold-mode demo) and `inodewatch@demo.service` started;
then --restarts times `systemctl restart demo`, each measured as the `target.attached`
entry's journal monotonic stamp minus the new main process's ExecMainStartTimestampMonotonic
(both CLOCK_MONOTONIC of the one kernel).  A restart not attached within --timeout seconds
counts as > timeout.  Medians and maxima per peer.

    sudo python3 benchmarks/reattach.py --base /tmp/iw-base [--rounds 2] [--restarts 3]

`--base DIR` is a git worktree of the other commit (git worktree add --detach DIR REV).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

from harness import REPO
from harness.procs import poll

sys.path.insert(0, str(REPO / "tests"))

import nspawn  # noqa: E402
from test_nspawn import DEMO_UNIT  # noqa: E402


def attached_after(machine: nspawn.Machine, pid: int, invocation: str) -> int | None:
    for entry in machine.journal(f"_SYSTEMD_INVOCATION_ID={invocation}"):
        message = entry.get("MESSAGE")
        if isinstance(message, str) and message.startswith("{"):
            event = json.loads(message)
            if event.get("event") == "target.attached" and event.get("pid") == pid:
                return int(entry["__MONOTONIC_TIMESTAMP"])
    return None


def one_round(repo: Path, restarts: int, timeout: float) -> list[float]:
    delays = []
    with nspawn.booted(f"iwbench-{os.getpid()}", repo=repo) as machine:
        machine.write("/etc/systemd/system/demo.service", DEMO_UNIT)
        machine.systemctl("daemon-reload")
        machine.systemctl("start", "demo.service")
        machine.systemctl("start", "inodewatch@demo.service")
        invocation = machine.show("inodewatch@demo.service", "InvocationID")["InvocationID"]
        for _ in range(restarts):
            machine.systemctl("restart", "demo.service")
            state = machine.show("demo.service", "MainPID", "ExecMainStartTimestampMonotonic")
            pid, started = int(state["MainPID"]), int(state["ExecMainStartTimestampMonotonic"])
            stamp = poll(lambda: attached_after(machine, pid, invocation), timeout, 0.1)
            delays.append((stamp - started) / 1e6 if stamp is not None else math.inf)
            print(f"  {repo}: attached {delays[-1]:.2f} s after the restart", flush=True)
    return delays


def report(results: dict[str, list[float]]) -> list[str]:
    lines = []
    for name, delays in results.items():
        shown = ", ".join("> timeout" if math.isinf(d) else f"{d:.2f}" for d in delays)
        lines.append(f"{name}: median {statistics.median(delays):.2f} s, max {max(delays):.2f} s "
                     f"({shown})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the other commit's tree (peer B)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=90.0)
    args = parser.parse_args()
    if (reason := nspawn.unavailable()) is not None:
        print(f"reattach.py: {reason}", file=sys.stderr)
        return 2
    peers = {"A (this checkout)": REPO, f"B ({args.base})": args.base.resolve()}
    results: dict[str, list[float]] = {name: [] for name in peers}
    for _ in range(args.rounds):
        for name, repo in peers.items():
            results[name] += one_round(repo, args.restarts, args.timeout)
    print("\n".join(report(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
