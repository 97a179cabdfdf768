"""What a benchmark's results say of the code it ran, and their place in RESULTS.md."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from . import REPO


class CodeVersion(NamedTuple):
    head: str  # the commit, short
    dirty: bool  # inodewatch/ differs from it
    digest: str  # of inodewatch/*.py as run: tells a change during a run

    def __str__(self) -> str:
        return (f"{self.head}{' + uncommitted changes in inodewatch/' if self.dirty else ''} "
                f"(inodewatch/*.py sha256 {self.digest})")


def code_version(tree: Path = REPO) -> CodeVersion:
    """HEAD of `tree`, whether its inodewatch/ has uncommitted changes, and a digest of
    inodewatch/*.py."""
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--",
                            "inodewatch"], capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256()
    for f in sorted((tree / "inodewatch").glob("*.py")):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return CodeVersion(commit_of(tree, "?"), bool(dirty), digest.hexdigest()[:12])


def commit_of(tree: Path, otherwise: str | None = None) -> str:
    """The short commit of a checkout (a peer's tree); `otherwise` (default: the tree's
    name) when it is not a git checkout."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    return head or (tree.name if otherwise is None else otherwise)


def utc_stamp() -> str:
    """Now, as the results' headers write it."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def write_section(results: Path, text: str, section: str) -> None:
    """Replace a benchmark's section of RESULTS.md (from its heading to the next "## " or
    the end), or append it."""
    old = results.read_text() if results.exists() else ""
    if f"{section}\n" in old:  # "## Huge maps" is also the start of the daemon's heading
        head, rest = old.split(f"{section}\n", 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        new = head + text + tail.lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    results.write_text(new)


def write_head(results: Path, text: str, kept_from: str) -> None:
    """Write `text` as the start of RESULTS.md, up to the heading `kept_from`: that section
    (written by hand) and all below it (other benchmarks' sections) are kept."""
    old = results.read_text() if results.exists() else ""
    results.write_text(text + ("\n" + old[old.index(kept_from):] if kept_from in old else ""))
