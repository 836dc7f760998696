"""Regenerate the README's claims table from a run: ``python -m tve_lib.report.readme results/cpu``.

The block between ``<!-- claims:begin -->`` and ``<!-- claims:end -->`` in README.md is replaced by
the run's ``claims.csv`` (written by notebook 07) with the run's commit and wall time, so the
README never quotes numbers by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ..io import atomic_path
from .book import markdown_table

BEGIN, END = "<!-- claims:begin -->", "<!-- claims:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"  # the repository root (tve_lib/report/..)


def speed_sentence(run: dict) -> str:
    """The machine's reference speed at the run's start and after its last notebook (`run.json`: ``machine_speed``,
    `tve_lib.timing.machine_speed`), slowest reading included; empty for a run that predates it."""
    speed = run.get("machine_speed", {})
    if "start" not in speed or len(speed) < 2:
        return ""
    last = list(speed.values())[-1]
    slow = max(v["block_step_ms"] for v in speed.values())
    return (f" Machine speed (`run.json`: `machine_speed`), one transformer block's training step: "
            f"{speed['start']['block_step_ms']} ms at the start, {last['block_step_ms']} ms after the last notebook, "
            f"{slow} ms at the slowest of {len(speed)} readings.")


def claims_block(root: Path) -> str:
    """The Markdown block for the run in ``root`` (= results/<profile>)."""
    if not (root / "claims.csv").exists():
        raise FileNotFoundError(f"{root / 'claims.csv'} not found: expected a run's results/<profile> folder, "
                                "with notebook 07 executed (./run_all.sh writes it)")
    claims = pd.read_csv(root / "claims.csv")
    claims["claim"] = claims["method"] + ": " + claims["claim"]
    run = json.loads((root / "run.json").read_text()) if (root / "run.json").exists() else {}
    walls = run.get("notebook_wall_s", {})
    head = (f"Profile `{root.name}`, commit `{run.get('git_commit', 'unknown')}`, "
            f"{run.get('device', {}).get('threads', '?')} threads on `{run.get('device', {}).get('device', '?')}`; "
            f"`./run_all.sh` wall time {run.get('wall_time_s', '?')} s over {len(walls)} notebooks "
            f"(`run.json`: `wall_time_s`).{speed_sentence(run)} Verdicts and numbers from `{root.name}/claims.csv`:")
    cols = ["claim", f"verdict ({root.name})", "the numbers"]
    if "operators" in claims and claims.operators.fillna("").astype(str).str.len().any():
        claims["operators"] = claims.operators.fillna("")
        cols.append("removal operators (03c)")
    table = markdown_table(claims.rename(columns={"verdict": f"verdict ({root.name})", "evidence": "the numbers",
                                                  "operators": "removal operators (03c)"}), cols)
    return "\n".join([BEGIN, head, "", table, END])


def update_readme(root: Path, readme: Path = README) -> None:
    """Replace the claims block of ``readme`` with that of the run in ``root``."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} block to replace")
    a, b = text.index(BEGIN), text.index(END) + len(END)
    with atomic_path(readme) as tmp:
        tmp.write_text(text[:a] + claims_block(Path(root)) + text[b:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results/cpu", help="a run's results/<profile> folder")
    a = ap.parse_args(argv)
    try:
        update_readme(Path(a.root))
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()
