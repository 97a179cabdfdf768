"""Check one logged event against the contract (inodewatch/events.py).

conftest's EventLog and scan_events pass every line they read through `problems`, so each
integration test that reads the daemon's log or `scan --json` also checks that what was
logged is named by the contract, at one of its levels, with its fields and no others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inodewatch.events import BY_NAME, ENVELOPE, SCANNED, TARGET

BYTES_SUFFIX = "_bytes"  # the lossless hex copy of a name that is not UTF-8 (eventlog)


def problems(event: Mapping[str, Any], source: str) -> list[str]:
    """What is wrong with `event`, a line logged by `source` ("daemon" or "scan"); [] if
    nothing."""
    name = event.get("event")
    spec = BY_NAME.get(name)  # type: ignore[arg-type]
    if spec is None:
        return [f"{name!r} is not in inodewatch/events.py"]
    if source not in spec.sources:
        return [f"{name} is not logged by {source}, says inodewatch/events.py"]
    fields = [*ENVELOPE, *spec.fields]
    if source == "scan":
        fields += SCANNED
    elif spec.about_target:
        fields += TARGET
    found = []
    if event.get("level") not in spec.levels:
        found.append(f"{name} at level {event.get('level')!r}, not one of {spec.levels}")
    allowed = {f.name for f in fields}
    found += [f"{name} has no {f.name}" for f in fields if f.required and f.name not in event]
    found += [f"{name} has {key}, which inodewatch/events.py does not list" for key in event
              if key not in allowed
              and not (key.endswith(BYTES_SUFFIX) and key[:-len(BYTES_SUFFIX)] in allowed)]
    for divergence in event.get("stale") or ():
        if divergence.get("event") not in BY_NAME:
            found.append(f"{name}'s stale has {divergence.get('event')!r}, not in the contract")
    return found


def check(event: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """`event`, after asserting it keeps the contract."""
    wrong = problems(event, source)
    assert not wrong, f"{'; '.join(wrong)}: {dict(event)}"
    return event
