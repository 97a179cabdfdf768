"""A process holding an inodewatch Guard, driven through its stdin and stdout (tests/test_guard.py,
benchmarks/guard.py): the guard must live in another process than the writers a test runs, so
that `kill -9` of it can be shown to release them.

It prints `ready ERRNO HELPER` once the guard is open (ERRNO: what a refused writer gets;
HELPER: the pid of the guard's helper process), or `unavailable: REASON` and exits 2.  Then one JSON command per line on stdin, one JSON answer
per line on stdout:

    {"cmd": "guard", "path": P}        -> {"guarded": bool, "dev": D, "ino": I}
    {"cmd": "unguard", "path": P}      -> {"unguarded": true}  (by the dev/ino it was guarded as)
    {"cmd": "drain"}                   -> {"records": [...], "dropped": N}
    {"cmd": "stats"}                   -> {field: count, ...}
    {"cmd": "wait", "count": N}        -> like drain, once N records are there (or 20 s passed)
    {"cmd": "fdinfo"}                  -> {"fdinfo": the helper's fanotify fd's fdinfo (its marks)}

Paths are str as os.fsdecode makes them (surrogateescape); bytes in records likewise.
"""

from __future__ import annotations

import json
import os
import select
import sys

from inodewatch.guard import Guard, GuardUnavailable


def _text(value: object) -> object:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _record(record) -> dict:
    out = {name: _text(value) for name, value in record._asdict().items()}
    out["file"] = list(record.file)
    return out


def fanotify_fdinfo(pid: int) -> str:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[fanotify]":
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                return f.read()
    return ""


def main() -> int:
    try:
        guard = Guard()
    except GuardUnavailable as exc:
        print(f"unavailable: {exc}", flush=True)
        return 2
    print(f"ready {guard.deny_errno} {guard.helper_pid}", flush=True)
    files: dict[str, tuple[int, int]] = {}
    pending: list = []
    for line in sys.stdin:
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "guard":
            st = os.stat(command["path"])
            files[command["path"]] = (st.st_dev, st.st_ino)
            answer = {"guarded": guard.guard(os.fsencode(command["path"]), st.st_dev, st.st_ino),
                      "dev": st.st_dev, "ino": st.st_ino}
        elif cmd == "unguard":
            guard.unguard(*files.pop(command["path"]))
            answer = {"unguarded": True}
        elif cmd in ("drain", "wait"):
            dropped = 0
            drained = guard.drain()
            pending += drained.records
            dropped += drained.dropped
            while cmd == "wait" and len(pending) < command["count"]:
                if not select.select([guard.fileno()], [], [], 20.0)[0]:
                    break
                drained = guard.drain()
                pending += drained.records
                dropped += drained.dropped
            answer = {"records": [_record(r) for r in pending], "dropped": dropped}
            pending = []
        elif cmd == "stats":
            answer = guard.stats()._asdict()
        elif cmd == "fdinfo":
            answer = {"fdinfo": fanotify_fdinfo(guard.helper_pid)}
        else:
            answer = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(answer), flush=True)
    guard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
