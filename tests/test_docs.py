"""Every "docs/DESIGN.md §N" the repository cites names a section (or numbered item) that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def design_sections() -> set[str]:
    sections, current = set(), None
    for line in (ROOT / "docs" / "DESIGN.md").read_text().splitlines():
        heading = re.match(r"## (\d+)\. ", line)
        if heading:
            current = heading.group(1)
            sections.add(current)
            continue
        item = re.match(r"(\d+)\. \*\*", line)
        if item and current:
            sections.add(f"{current}.{item.group(1)}")
    return sections


def test_every_design_citation_names_an_existing_section():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sections = design_sections()
    assert {"2", "4", "5", "6", "7", "8", "9", "10.2", "10.3"} <= sections
    missing = []
    for name in files:
        if not name.endswith((".py", ".md", ".yaml", ".ipynb")):
            continue
        for match in re.finditer(r"DESIGN\.md §(\d+(?:\.\d+)?)", (ROOT / name).read_text(errors="replace")):
            if match.group(1) not in sections:
                missing.append(f"{name}: §{match.group(1)}")
    assert not missing, missing
