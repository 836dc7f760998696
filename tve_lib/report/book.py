"""REPORT.md: the run's provenance, the claims table and every figure rendered from the CSVs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..io import atomic_path, write_csv
from .figures import FIGURES, figure_spec, gallery_files
from .plots import savefig
from .tables import MissingData, load_tables


def markdown_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table (``|`` escaped, newlines flattened)."""
    cols = list(columns or df.columns)

    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


class FigureBook:
    """The report of ``root`` (= results/<profile>): renders figures from the CSVs, writes REPORT.md.

    ``render(name)`` builds one figure of ``FIGURES``, saves ``figures/<name>.png`` and ``.pdf`` and
    returns it (closed, so a notebook shows it once), or None with a printed note when its data is
    missing. ``write_report(claims)`` embeds every figure rendered so far.
    """

    def __init__(self, root: str | Path, tables: dict[str, pd.DataFrame] | None = None, verbose: bool = True):
        self.root = Path(root)
        self.fig_dir = self.root / "figures"
        self.tables = load_tables(self.root, verbose) if tables is None else tables
        self.rendered: dict[str, Path] = {}
        self.skipped: dict[str, str] = {}

    def render(self, name: str) -> plt.Figure | None:
        spec = figure_spec(name)
        try:
            fig = spec.build(self.tables, self.root)
        except MissingData as e:
            self.skipped[name] = str(e)
            print(f"skipped {name}: {e}")
            return None
        self.rendered[name] = savefig(fig, self.fig_dir / name)
        self.skipped.pop(name, None)
        plt.close(fig)
        return fig

    def render_all(self) -> list[str]:
        """Render every figure of ``FIGURES``; returns the names rendered."""
        return [f.name for f in FIGURES if self.render(f.name) is not None]

    def write_report(self, claims: pd.DataFrame | None = None) -> Path:
        """``REPORT.md``: provenance, the claims table (also ``claims.csv``), every rendered figure and
        links to the galleries the notebooks saved."""
        run = {}
        if (self.root / "run.json").exists():
            try:
                run = json.loads((self.root / "run.json").read_text())
            except ValueError:
                run = {}
        lines = [f"# tve-suite report · profile `{self.root.name}`", "",
                 "Built by notebook `07_figures` from the CSVs in this folder only; `./run_all.sh --figures-only` "
                 "rebuilds it.", ""]
        if run:
            dev = run.get("device", {})
            lines += [f"- commit `{run.get('git_commit', 'unknown')}`, device `{dev.get('device', '?')}` "
                      f"({dev.get('threads', '?')} threads), torch {run.get('packages', {}).get('torch', '?')}",
                      f"- notebooks' wall time: {run.get('total_notebook_wall_s', '?')} s", ""]
        if claims is not None and len(claims):
            write_csv(claims, self.root / "claims.csv")
            lines += ["## Seed claims", "", "Each verdict follows the rule in its row, applied to the CSV numbers "
                      "shown (thresholds: `tve_lib/report/claims.py`; table: `claims.csv`).", "",
                      markdown_table(claims, ["method", "claim", "verdict", "evidence", "rule"]), ""]
        lines += ["## Figures", ""]
        for f in FIGURES:
            if f.name in self.rendered:
                rel = self.rendered[f.name].relative_to(self.root).as_posix()
                lines += [f"### {f.title}", "", f.caption, "", f"![{f.name}]({rel})", "",
                          f"[PDF]({rel[:-4]}.pdf)", ""]
        galleries = gallery_files(self.root)
        if galleries:
            lines += ["## Every gallery the notebooks saved", ""]
            lines += [f"- [{p.stem}]({p.relative_to(self.root).as_posix()})" for p in galleries] + [""]
        if self.skipped:
            lines += ["## Not generated (their CSVs are missing)", ""]
            lines += [f"- `{k}`: {v}" for k, v in self.skipped.items()] + [""]
        path = self.root / "REPORT.md"
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines))
        return path
