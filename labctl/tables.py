"""Tables, the one way: aligned columns for a terminal, Markdown for reports and docs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Row = Sequence[object]


def aligned(header: Row, rows: Iterable[Row]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    lines = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    out = []
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        out.append("  ".join([*cells, line[-1]]).rstrip())
    return "\n".join(out)


def markdown(header: Row, rows: Iterable[Row]) -> str:
    """A GitHub-flavoured Markdown table; a ``|`` inside a cell is escaped."""

    def cells(row: Row) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    return "\n".join([cells(header), "|" + "---|" * len(header), *map(cells, rows)])
