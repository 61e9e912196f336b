"""Markdown tables: how the command line, the benchmarks and the replication report print results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], *, align_numbers: bool = False) -> str:
    """A GitHub-flavoured Markdown table.

    Args:
        header: Column names.
        rows: One sequence of cells per row, each written with ``str``.
        align_numbers: Pad every column to its widest cell and right-align the
            columns whose cells all read as numbers (``1,234``, ``12.5%``,
            ``3x``, ``~7``), for tables read as plain text; otherwise cells
            are written as they are.

    Returns:
        The table, one line per row after the header and the rule, without a
        trailing newline.

    Example:
        >>> print(markdown_table(["metric", "value"], [["i2t_R@1", "12.50"]]))
        | metric | value |
        |---|---|
        | i2t_R@1 | 12.50 |
        >>> print(markdown_table(["B", "rows/s"], [[512, "1,024"], [40960, "9,800"]], align_numbers=True))
        |     B | rows/s |
        |------:|-------:|
        |   512 |  1,024 |
        | 40960 |  9,800 |

    """
    cells = [[str(c) for c in row] for row in rows]
    if not align_numbers:
        lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    numeric = [bool(cells) and all(_looks_numeric(r[i]) for r in cells) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(list(header)), rule, *(line(r) for r in cells)])


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("x", "").replace("%", "").replace("~", "").strip()
    try:
        float(stripped)
    except ValueError:
        return False
    return True
