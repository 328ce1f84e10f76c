"""bench/RESULTS.md: where the benchmark scripts record their numbers, one `## heading` section each."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def update_section(heading: str, text: str) -> None:
    """Replace the `## heading` section of RESULTS.md with `text` (appended when there is none); the other
    sections stay as they are."""
    existing = RESULTS.read_text() if RESULTS.exists() else ""
    section = f"## {heading}\n\n" + text.rstrip() + "\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(existing):
        new = pattern.sub(lambda _: section + "\n", existing, count=1)
    else:
        new = existing.rstrip() + ("\n\n" if existing.strip() else "") + section
    RESULTS.write_text(new.rstrip() + "\n")
