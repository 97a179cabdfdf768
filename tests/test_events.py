"""The event contract (inodewatch/events.py) against the documents and the code.

The README's tables and docs/events.md must be what the module generates; every event name
the code spells out must be in the module, and every event of the module must be one the code
can log.  (What the daemon and scan really log is checked against the module too, line by
line, by every integration test that reads an event log: tests/contract.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import HEAVY, imports_after
from contract import problems

from inodewatch import eventdoc
from inodewatch.events import BY_NAME, EVENTS, FINDING_KINDS, LIVE, NAMES, SUBJECTS
from inodewatch.model import FileId, Finding

REPO = Path(__file__).resolve().parent.parent
# a literal event name in the code: "mapping.overwritten", "watch.degraded", ...
LITERAL = re.compile(r"""["']((?:daemon|target|mapping|fd|watch|guard)\.[a-z_]+)["']""")


def literal_names() -> dict[str, list[str]]:
    """Event name -> where the code spells it (path:line)."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "inodewatch").glob("*.py")):
        if path.name in ("events.py", "eventdoc.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for name in LITERAL.findall(line):
                found.setdefault(name, []).append(f"{path.name}:{n}")
    return found


def built_names() -> set[str]:
    """The names built from a finding's subject and kind (model.Finding.event, and
    diff.content_event's "<subject>.content"): every finding the comparison can make."""
    held = FileId(1, 2)
    names = {Finding(subject, kind, b"/x.so", held, FileId(1, 3)).event
             for subject in SUBJECTS for kind in FINDING_KINDS
             if (subject, kind) in LIVE}
    return names | {f"{subject}.content" for subject in SUBJECTS}


def test_the_readme_tables_are_the_contract():
    text = (REPO / eventdoc.README).read_text()
    assert eventdoc.readme(text) == text, "run: python -m inodewatch.eventdoc --write"


def test_docs_events_md_is_the_contract():
    assert (REPO / eventdoc.DOCUMENT).read_text() == eventdoc.document(), \
        "run: python -m inodewatch.eventdoc --write"


def test_every_event_the_code_names_is_in_the_contract():
    unknown = {name: where for name, where in literal_names().items() if name not in BY_NAME}
    assert not unknown, f"add these to inodewatch/events.py: {unknown}"


def test_every_event_of_the_contract_is_one_the_code_logs():
    logged = set(literal_names()) | built_names()
    assert set(NAMES) - logged == set()


def test_names_are_unique_and_fields_too():
    assert len(NAMES) == len(EVENTS)
    for spec in EVENTS:
        names = [f.name for f in spec.fields]
        assert len(names) == len(set(names)), spec.name
        assert spec.levels and set(spec.levels) <= {"critical", "error", "warning", "info"}, spec.name
        assert set(spec.sources) <= {"daemon", "scan"} and spec.sources, spec.name


def test_only_findings_come_from_scan():
    scanned = {s.name for s in EVENTS if "scan" in s.sources}
    assert scanned == {f"{subject}.{kind}" for subject, kind in LIVE
                       if kind in ("deleted", "replaced", "missing", "duplicated")}


LINE = {"timestamp": "2026-12-02T14:59:30.682679Z", "host": "vm", "boot_id": "b"}


@pytest.mark.parametrize("event, wrong", [
    ({"event": "mapping.vanished", "level": "warning", "pid": 1}, "not in inodewatch/events.py"),
    ({"event": "watch.gap", "level": "warning", "gap_s": 3.0}, "has no detail"),
    ({"event": "watch.gap", "level": "info", "gap_s": 3.0, "detail": "x"}, "at level 'info'"),
    ({"event": "watch.gap", "level": "warning", "gap_s": 3.0, "detail": "x", "why": "?"},
     "has why"),
    ({"event": "target.lost", "level": "warning", "pid": 1, "detail": "x",
      "stale": [{"event": "mapping.gone"}]}, "'mapping.gone', not in the contract"),
])
def test_a_line_that_breaks_the_contract_is_told(event, wrong):
    assert any(wrong in p for p in problems({**LINE, **event}, "daemon"))


def test_a_line_that_keeps_it_is_not():
    finding = Finding("mapping", "replaced", b"/opt/\xff.so", FileId(0xfe00, 2), FileId(0xfe00, 3),
                      perms=("r-xp",))
    line = {**LINE, "event": finding.event, "level": finding.level, "pid": 7, "uid": 0,
            "mnt_ns": 4026531841, "unit": "nginx.service", **finding.fields(),
            "path": "/opt/\\xff.so", "path_bytes": "2f6f70742fff2e736f"}
    assert problems(line, "daemon") == []
    scanned = {k: v for k, v in line.items() if k not in ("host", "boot_id", "uid", "mnt_ns")}
    assert problems(scanned, "scan") == ["mapping.replaced has no comm"]
    assert problems({**line, "event": "mapping.renamed", "new_path": "/x"}, "scan") == \
        ["mapping.renamed is not logged by scan, says inodewatch/events.py"]


def test_importing_the_contract_is_light():
    """Any module on scan's path may import it (the start-up rule, inodewatch/__init__.py)."""
    assert imports_after("import inodewatch.events") & HEAVY == set()
