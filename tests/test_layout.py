"""The README's layout section is the newcomer's map: every module of the package is on it
with its sentence, and nothing on it is gone."""

from __future__ import annotations

import re

from conftest import REPO


def layout_modules() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Layout"):]
    block = section[section.index("inodewatch/\n"):section.index("\ndocs/")]
    return set(re.findall(r"^  (\w+\.py) ", block, flags=re.M))


def test_every_module_is_on_the_map_and_nothing_else():
    on_disk = {p.name for p in (REPO / "inodewatch").glob("*.py")} - {"__main__.py"}
    assert layout_modules() == on_disk
