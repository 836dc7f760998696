"""Build ``notebooks/*.ipynb`` from their percent-format sources in ``notebooks/src/*.py``.

The sources are the reviewable, diffable form; the notebooks are what users open and what
run_all.sh executes (outputs always stripped). ``python -m tve_lib.nbbuild`` rebuilds them;
``--check`` exits non-zero when a notebook is out of date (a test runs it).
Cell markers: ``# %%`` (code), ``# %% [markdown]``, ``# %% tags=["parameters"]``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

SRC = Path(__file__).resolve().parent.parent / "notebooks" / "src"
MARK = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def parse(text: str) -> nbformat.NotebookNode:
    """A notebook from percent-format source text."""
    cells, cur, kind, tags = [], [], None, []

    def flush():
        if kind is None:
            return
        src = "\n".join(cur).strip("\n")
        if kind == "markdown":
            src = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in src.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            c = nbformat.v4.new_code_cell(src)
            if tags:
                c.metadata["tags"] = tags
            cells.append(c)

    for line in text.splitlines():
        m = MARK.match(line)
        if m:
            flush()
            kind = "markdown" if m.group("md") else "code"
            tags = json.loads(m.group("tags")) if m.group("tags") else []
            cur = []
        else:
            cur.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, c in enumerate(nb.cells):  # stable ids keep rebuilt notebooks byte-identical
        c["id"] = f"cell-{i:02d}"
    return nb


def build(check: bool = False) -> list[str]:
    """Write (or with ``check``, compare) every notebook; returns the names that differ."""
    stale = []
    for src in sorted(SRC.glob("*.py")):
        out = SRC.parent / f"{src.stem}.ipynb"
        text = nbformat.writes(parse(src.read_text()))
        if not out.exists() or out.read_text() != text:
            stale.append(out.name)
            if not check:
                out.write_text(text)
    return stale


if __name__ == "__main__":
    chk = "--check" in sys.argv
    s = build(check=chk)
    print(("out of date: " if chk else "rebuilt: ") + (", ".join(s) or "none"))
    sys.exit(1 if chk and s else 0)
