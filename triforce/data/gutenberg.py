"""Project Gutenberg books (the PG-19 source) from the offline asset cache, header and licence stripped."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

# PG-19 keeps the text between Gutenberg's START and END markers; older etexts use other phrasings.
_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                    re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$",
                  re.IGNORECASE | re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Book:
    name: str
    text: str


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg header (up to the START marker) and licence (from the END marker)."""
    text = text.replace("\r\n", "\n")
    end = _END.search(text)
    start = None
    # the last START-like marker before the END marker ends the header (small print precedes it)
    for start in _START.finditer(text, 0, end.start() if end else len(text)):
        pass
    if start is not None:
        text = text[start.end():]
    end = _END.search(text)
    if end is not None:
        text = text[: end.start()]
    return text.strip() + "\n"


def load_books(folder: Path | None = None, names: list[str] | None = None) -> list[Book]:
    """All Gutenberg books in the asset cache (sorted by name), or only `names` (file stems)."""
    if folder is None:
        from triforce.assets import gutenberg_dir

        folder = gutenberg_dir()
    files = sorted(Path(folder).glob("*_gut.txt"))
    if names is not None:
        by_name = {f.stem: f for f in files}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown Gutenberg books {unknown}; available: {sorted(by_name)}")
        files = [by_name[n] for n in names]
    return [Book(f.stem, strip_gutenberg(f.read_text(encoding="utf-8", errors="replace"))) for f in files]
