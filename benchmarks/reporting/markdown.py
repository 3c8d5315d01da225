"""Markdown pieces every report writes (standard library only)."""

from __future__ import annotations

from typing import Iterable, Sequence

MISSING = "–"  # a cell with nothing to show


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A GitHub markdown table as lines; a "|" in a cell is escaped, a newline becomes a space."""

    def cell(x: object) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return lines
