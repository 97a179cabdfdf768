"""The seed's story (scripts/demo.py) gives the same events, target by target, as it always
has: the safety net for reshaping the daemon (issue 16), which must change no line of what an
operator reads for the same operations.

Only the order within each target is compared: the three demos run side by side, so how their
lines interleave is the machine's timing, not the daemon's behaviour.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from contract import check

REPO = Path(__file__).resolve().parent.parent

# What each demo's operation must produce, in order (scripts/demo.py's docstring tells the
# story).  B's signal is SIGSEGV or SIGBUS: which one depends on where the overwrite lands.
STORY = {
    "A": ["target.attached", "mapping.deleted", "mapping.replaced", "target.exited"],
    "B": ["target.attached", "mapping.overwritten", "mapping.overwrite_closed", "target.exited"],
    "C": ["target.attached", "mapping.deleted", "mapping.replaced", "mapping.reloaded",
          "target.exited"],
}


def test_the_demo_story_logs_the_same_events_per_target(demo_build: Path) -> None:
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py")],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = Path(re.search(r"what inodewatch logged \((.+)\):", run.stdout).group(1))
    letters = {int(pid): letter for letter, pid in re.findall(r"== ([ABC]) \(pid (\d+)", run.stdout)}
    assert sorted(letters.values()) == ["A", "B", "C"]

    events = [json.loads(line) for line in log.read_text().splitlines()]
    for event in events:
        check(event, "daemon")
    told: dict[str, list[str]] = {letter: [] for letter in STORY}
    for event in events:
        if (letter := letters.get(event.get("pid"))) is not None:
            told[letter].append(event["event"])
    assert told == STORY
    assert [e["event"] for e in events if "pid" not in e] == ["daemon.started", "daemon.stopped"]

    exited = {letters[e["pid"]]: e for e in events if e["event"] == "target.exited"}
    assert exited["B"]["signal"] in ("SIGSEGV", "SIGBUS")
    assert exited["A"]["signal"] == exited["C"]["signal"] == "SIGTERM"
    assert exited["A"]["stale"] and not exited["C"]["stale"]
    assert "3 lives: 1 crashed after an overwrite, 2 killed" in run.stdout  # its report
