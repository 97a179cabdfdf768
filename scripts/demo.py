"""The seed's story, live: three copies of the reload demo, one inodewatch watching them all.

  A  --mode leak   rm so.so; cp so2.so so.so   -> deleted + replaced; A runs the old code on
  B  --mode leak   cp so2.so so.so (in place)  -> overwritten, then B dies of SIGSEGV
  C  --mode hold   mv new.so so.so             -> replaced, then reloaded at C's next dlopen

Every wait is on an event in the log, with a deadline; nothing here sleeps blindly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 30.0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_demo(work: Path, name: str, mode: str) -> subprocess.Popen[bytes]:
    d = work / name
    d.mkdir()
    for lib in ("reload", "so1.so", "so2.so"):
        shutil.copy(REPO / "csrc" / lib, d / lib)
    shutil.copy(d / "so1.so", d / "so.so")
    out = open(d / "out.txt", "wb")
    proc = subprocess.Popen(["./reload", "--mode", mode, "--interval-ms", "300"], cwd=d,
                            stdout=out, stderr=subprocess.STDOUT)
    wait(lambda: b"so1: version 1" in (d / "out.txt").read_bytes(), f"{name} to load so.so")
    return proc


def wait(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"demo: timed out waiting for {what}")
        time.sleep(0.02)


def events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def wait_event(log: Path, name: str, pid: int) -> dict:
    found: list[dict] = []

    def seen() -> bool:
        found[:] = [e for e in events(log) if e["event"] == name and e.get("pid") == pid]
        return bool(found)

    wait(seen, f"{name} for pid {pid}")
    return found[0]


def last_line(work: Path, name: str) -> str:
    return (work / name / "out.txt").read_text().splitlines()[-1]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="inodewatch-demo."))
    log = work / "events.json"
    demos = {name: start_demo(work, name, mode) for name, mode in
             (("A", "leak"), ("B", "leak"), ("C", "hold"))}
    pids = [str(p.pid) for p in demos.values()]
    watcher = subprocess.Popen([sys.executable, "-m", "inodewatch", *sum((["--pid", p] for p in pids), []),
                                "--log-file", str(log)])
    try:
        for proc in demos.values():
            wait_event(log, "target.attached", proc.pid)
        a, b, c = demos["A"], demos["B"], demos["C"]

        say(f"A (pid {a.pid}, --mode leak): rm so.so; cp so2.so so.so")
        os.unlink(work / "A/so.so")
        shutil.copyfile(work / "A/so2.so", work / "A/so.so")
        wait_event(log, "mapping.replaced", a.pid)
        print(f"A still prints {last_line(work, 'A')!r}: it runs the old, deleted code")

        say(f"B (pid {b.pid}, --mode leak): cp so2.so so.so, in place over the mapped file")
        shutil.copyfile(work / "B/so2.so", work / "B/so.so")
        exited = wait_event(log, "target.exited", b.pid)
        print(f"B died: signal {exited['signal']}")

        say(f"C (pid {c.pid}, --mode hold): mv new.so so.so; C does dlclose + dlopen each tick")
        shutil.copyfile(work / "C/so2.so", work / "C/new.so")
        os.rename(work / "C/new.so", work / "C/so.so")
        wait_event(log, "mapping.reloaded", c.pid)
        wait(lambda: "version 2" in last_line(work, "C"), "C to print version 2")
        print(f"C now prints {last_line(work, 'C')!r}")

        say("stopping A and C; inodewatch stops when its last target has exited")
        for proc in (a, c):
            proc.terminate()
        watcher.wait(timeout=DEADLINE)
    finally:
        for proc in (*demos.values(), watcher):
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    say(f"what inodewatch logged ({log}):")
    sys.stdout.write(log.read_text())
    say(f"inodewatch report {log}:")
    subprocess.run([sys.executable, "-m", "inodewatch", "report", str(log)], check=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
