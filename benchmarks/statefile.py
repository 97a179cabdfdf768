"""What --state-file costs the daemon: the once-a-second check when nothing changed, a write
after a change, the file's size and its load at start, for a fleet of synthetic targets; and
the peak memory of refusing the worst 8 MiB file an attacker with write access could plant.

    python3 benchmarks/statefile.py [--targets 500] [--files 40] [--rounds 21]

Synthetic histories (no /proc, no demo): the daemon's own encode/decode and atomic write on
a real file in a temporary directory; medians over --rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from harness import REPO

sys.path.insert(0, str(REPO))  # the checkout's package, installed or not

from inodewatch.diff import TargetHistory  # noqa: E402
from inodewatch.model import FileId, MappedFile, find_divergence  # noqa: E402
from inodewatch.procfs import ProcessId  # noqa: E402
from inodewatch.state import MAX_BYTES, StateFile  # noqa: E402


def fleet(targets: int, files: int) -> list[tuple[ProcessId, TargetHistory, dict[FileId, MappedFile]]]:
    out = []
    for pid in range(1000, 1000 + targets):
        mapped = [MappedFile(b"/usr/lib/x86_64-linux-gnu/lib%04d.so.6" % i, FileId(0xFE00, 10_000 + i),
                             ("r--p", "r-xp", "r--p", "rw-p"), False, 1_926_232, 1_777_320_873_000_000_000)
                  for i in range(files)]
        h = TargetHistory()
        h.learn(mapped)
        h.update(mapped, find_divergence(mapped, [], {m.path: m.file for m in mapped}.get, h.first_paths))
        out.append((ProcessId(pid, 131_755 + pid), h, {m.file: m for m in mapped}))
    return out


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


HOSTILE_PROBE = """
import resource, sys
sys.path.insert(0, sys.argv[2])
from inodewatch.state import StateFile
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loaded = StateFile(sys.argv[1], "x").load()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, loaded.problem is not None)
"""


def hostile_rss(directory: Path) -> dict[str, tuple[float, bool]]:
    """Peak RSS growth (MB) of loading each worst-case shape of a file just under the cap."""
    # Many small distinct objects cost the most per byte (one-character strings and small
    # ints are shared by CPython; "ab" and {} are not).
    shapes = {
        "list of empty objects": b'{"targets": [' + b"{}," * ((MAX_BYTES - 64) // 3) + b"{}]}",
        "list of 2-byte strings": b'{"targets": [' + b'"ab",' * ((MAX_BYTES - 64) // 5) + b'"a"]}',
        "list of large ints": b'{"targets": [' + b"1234567," * ((MAX_BYTES - 64) // 8) + b"0]}",
        "one long string": b'{"boot_id": "' + b"a" * (MAX_BYTES - 64) + b'"}',
        "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    }
    out = {}
    for name, raw in shapes.items():
        path = directory / "hostile.json"
        path.write_bytes(raw)
        probe = subprocess.run([sys.executable, "-c", HOSTILE_PROBE, str(path), str(REPO)],
                               capture_output=True, text=True, check=True)
        before, after, refused = probe.stdout.split()
        out[name] = ((int(after) - int(before)) / 1024, refused == "True")
    return out


class Measured(NamedTuple):
    unchanged_ms: float
    changed_ms: float
    cold_ms: float
    size: int
    load_ms: float
    hostile: dict[str, tuple[float, bool]]


def measure(targets: int, files: int, rounds: int) -> Measured:
    """The daemon's own saves and load on a real file, then the hostile files' cost."""
    entries = fleet(targets, files)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = directory / "state.json"
        state = StateFile(str(path), "boot")
        state.save(entries)
        unchanged = median_ms(lambda: state.save(entries), rounds)

        def one_change() -> None:
            entries[0][1].revision += 1  # one target changed: only it is encoded again
            state.save(entries)
        changed = median_ms(one_change, rounds)

        def all_new() -> None:
            fresh = StateFile(str(path), "boot")
            fresh.save(entries)
        cold = median_ms(all_new, max(3, rounds // 4))
        size = os.path.getsize(path)
        load = median_ms(lambda: StateFile(str(path), "boot").load(), max(3, rounds // 4))
        assert len(StateFile(str(path), "boot").load().targets) == targets
        return Measured(unchanged, changed, cold, size, load, hostile_rss(directory))


def report(args: argparse.Namespace, m: Measured) -> str:
    lines = [f"{args.targets} targets x {args.files} files, medians of {args.rounds}:",
             f"  check, nothing changed (once a second): {m.unchanged_ms:.2f} ms",
             f"  one target changed: encode it + write the file (fsync): {m.changed_ms:.2f} ms",
             f"  every target encoded + written (the first save): {m.cold_ms:.1f} ms",
             f"  file size: {m.size / 1e6:.2f} MB; load at start: {m.load_ms:.1f} ms"]
    for name, (mb, refused) in m.hostile.items():
        lines.append(f"  hostile file just under {MAX_BYTES >> 20} MiB ({name}): peak RSS "
                     f"+{mb:.0f} MB, {'refused' if refused else 'ACCEPTED'}")
    lines.append(f"  (this process: "
                 f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    print(report(args, measure(args.targets, args.files, args.rounds)))


if __name__ == "__main__":
    main()
