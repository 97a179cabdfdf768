"""The event contract (inodewatch.events) as Markdown: README's tables and docs/events.md.

`python -m inodewatch.eventdoc --write` rewrites docs/events.md and the README's generated
tables (between their `<!-- events:NAME -->` and `<!-- /events:NAME -->` markers) from the
module; `--check` (and tests/test_events.py) fails when they differ from it.  Nothing here
runs in the tool itself.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from inodewatch.events import ENVELOPE, EVENTS, SCANNED, TARGET, EventSpec, Field

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = Path("docs/events.md")
README = Path("README.md")


def _names(fields: Iterable[Field]) -> str:
    return ", ".join(f"`{f.name}`" for f in fields)


def level_text(spec: EventSpec) -> str:
    return spec.levels[0] + (f" ({spec.level_rule})" if spec.level_rule else "")


def fields_text(spec: EventSpec) -> str:
    """"`a`, `b`; optional `c`": the event's own fields, the required ones first."""
    required = [f for f in spec.fields if f.required]
    optional = [f for f in spec.fields if not f.required]
    parts = [_names(required)] if required else []
    if optional:
        parts.append(f"optional {_names(optional)}")
    return "; ".join(parts)


def daemon_table() -> str:
    """README, the daemon's section: every event, one row each."""
    rows = ["| event | level | when | fields |", "| --- | --- | --- | --- |"]
    rows += [f"| `{s.name}` | {level_text(s)} | {s.when} | {fields_text(s)} |" for s in EVENTS]
    return "\n".join(rows)


def scan_table() -> str:
    """README, the scan's section: the events a scan reports."""
    rows = ["| event | level | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{s.name}` | {level_text(s)} | {s.when} |" for s in EVENTS if "scan" in s.sources]
    return "\n".join(rows)


def _field_table(fields: Sequence[Field]) -> list[str]:
    return ["| field | always there | meaning |", "| --- | --- | --- |",
            *(f"| `{f.name}` | {'yes' if f.required else 'no'} | {f.meaning} |" for f in fields)]


def document() -> str:
    """docs/events.md: the whole contract."""
    out = [
        "# Events",
        "",
        "<!-- Generated from inodewatch/events.py by `python -m inodewatch.eventdoc --write`;",
        "     tests/test_events.py fails when this file and the module differ. -->",
        "",
        "Every line the daemon logs, and every line of `inodewatch scan --json`, is one JSON",
        "object: one of the events below. \"always there\" means the key is on every line of",
        "the event (its value may still be `null` where the meaning says so). A name that is",
        "not UTF-8 is written as text with `\\xNN` escapes, and a `<field>_bytes` field beside",
        "it holds the bytes in hex.",
        "",
        "## On every line",
        "",
        *_field_table(ENVELOPE),
        "",
        "## On the daemon's events about a target",
        "",
        "Read when the target was attached (none if it was gone by then).",
        "",
        *_field_table(TARGET),
        "",
        "## On every line of `scan --json`",
        "",
        *_field_table(SCANNED),
    ]
    for s in EVENTS:
        out += ["", f"## `{s.name}`", "",
                f"{s.when[0].upper()}{s.when[1:]}. Level: {level_text(s)}. "
                f"Logged by: {' and '.join(s.sources)}.", ""]
        out += _field_table(s.fields)
    return "\n".join(out) + "\n"


def splice(text: str, name: str, body: str) -> str:
    """`text` with what lies between the markers of `name` replaced by `body`."""
    begin, end = f"<!-- events:{name} -->\n", f"\n<!-- /events:{name} -->"
    head, found, rest = text.partition(begin)
    if not found or end not in rest:
        raise ValueError(f"no {begin.strip()} ... {end.strip()} in the README")
    return head + begin + body + end + rest.partition(end)[2]


def readme(text: str) -> str:
    return splice(splice(text, "daemon", daemon_table()), "scan", scan_table())


def main(argv: Sequence[str]) -> int:
    if list(argv) not in (["--write"], ["--check"]):
        print("usage: python -m inodewatch.eventdoc --write | --check", file=sys.stderr)
        return 2
    wanted = {REPO / README: readme((REPO / README).read_text()), REPO / DOCUMENT: document()}
    stale = [path for path, text in wanted.items()
             if not path.exists() or path.read_text() != text]
    if argv[0] == "--write":
        for path in stale:
            path.parent.mkdir(exist_ok=True)
            path.write_text(wanted[path])
        return 0
    for path in stale:
        print(f"{path.relative_to(REPO)} differs from inodewatch/events.py: "
              "run python -m inodewatch.eventdoc --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
