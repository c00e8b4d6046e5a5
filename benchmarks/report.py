"""Write one benchmark's section of docs/BENCHMARKS.md, leaving the other sections untouched."""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = ("# AB-Cache benchmarks\n\nEach section is written by the script named in its title; re-run it to "
          "refresh the numbers. Ratios are measured side by side in one process (medians of repeats).\n")


def write_section(name: str, title: str, body: str, doc: Path = DOC) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n## {title}\n\n{body.rstrip()}\n{end}"
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def table_cells(text: str, columns: int, header: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text`` with ``columns`` cells each (stripped), skipping header
    lines (first cell ``header``) and separators: reads back a table a benchmark printed or wrote."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == columns and cells[0] not in (header, "---"):
            rows.append(cells)
    return rows
