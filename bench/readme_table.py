"""Copy the summary table of a `make bench` run into README.md.

`bench/run.py` writes the table between two markers in bench/results/latest.md; this
replaces what README.md holds between the same markers with it, after checking its
shape (header, five rows of four cells, a figure in every measured cell).

    .venv/bin/python bench/readme_table.py [--results bench/results/latest.md] [--readme README.md]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"
HEADER = "| measure | target | measured | met |"
ROWS = 5


def block(text: str) -> str:
    """The lines between the markers (without them)."""
    try:
        head, rest = text.split(START, 1)
        inner, _tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"no {START} ... {END} block") from None
    return inner.strip("\n")


def rows(table: str) -> list[list[str]]:
    """The table's data rows as cells; ValueError when it is not the summary table."""
    lines = table.splitlines()
    if len(lines) != ROWS + 2 or lines[0] != HEADER or lines[1] != "|---|---|---|---|":
        raise ValueError(f"not a {ROWS}-row summary table: {table!r}")
    out = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not all(cells):
            raise ValueError(f"a row needs four cells: {line!r}")
        if not re.search(r"\d", cells[2]):
            raise ValueError(f"no figure in the measured cell: {line!r}")
        if cells[3] not in ("yes", "**no**"):
            raise ValueError(f"met is yes or **no**: {line!r}")
        out.append(cells)
    return out


def replace(readme: str, table: str) -> str:
    """`readme` with its block replaced by `table` (checked first)."""
    rows(table)
    head, rest = readme.split(START, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/latest.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    table = block(args.results.read_text())
    args.readme.write_text(replace(args.readme.read_text(), table))
    print(f"{args.readme}: table from {args.results}")


if __name__ == "__main__":
    main()
