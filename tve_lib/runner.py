"""Execute the notebooks with papermill into ``results/<profile>/notebooks/`` (used by run_all.sh).

A notebook is skipped on rerun when its stamp says it completed for the same commit and
parameters and the files it declared are still there (``--force`` reruns). The first failing
notebook stops the run (unless ``--keep-going``) with a message naming the notebook and cell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import COMPILE_ENV, PRECISION_ENV, PRECISIONS
from .io import git_commit, provenance, write_json

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
FIGURES_NOTEBOOK = "07_figures"


def notebook_list(only: list[str] | None = None) -> list[Path]:
    """Notebooks in order; ``only`` filters by number prefix (``"03"``) or name."""
    nbs = sorted(NOTEBOOKS.glob("[0-9][0-9]*.ipynb"))
    if only:
        nbs = [nb for nb in nbs if any(nb.stem.startswith(o) for o in only)]
        if not nbs:
            raise SystemExit(f"no notebook matches --only {' '.join(only)} in {NOTEBOOKS}")
    return nbs


def _failed_cell(nb_path: Path) -> str:
    """Describe the first cell with an error output of an executed notebook."""
    try:
        nb = json.loads(nb_path.read_text())
    except (OSError, ValueError):
        return "unknown cell"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, c in enumerate(code):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                first = "".join(c["source"]).strip().splitlines()[:1]
                return f"code cell {i + 1} ({first[0][:60] if first else ''!r}): {o['ename']}: {o['evalue']}"
    return "unknown cell"


def run(profile: str = "cpu", only: list[str] | None = None, keep_going: bool = False,
        force: bool = False, results_dir: str | Path | None = None, seed: int = 0,
        device: str = "auto", data_dir: str = "", weights_dir: str = "", timeout: int = 7200,
        extra_params: dict | None = None) -> int:
    """Run the notebooks; returns a process exit code (0 when every notebook succeeded)."""
    import papermill as pm

    from .timing import machine_speed

    results = Path(results_dir) if results_dir else REPO / "results"
    out_dir = results / profile / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"PROFILE": profile, "SEED": seed, "DEVICE": device, "DATA_DIR": data_dir,
              "WEIGHTS_DIR": weights_dir, "RESULTS_DIR": str(results), "INTERACTIVE": False,
              **(extra_params or {})}
    commit = git_commit(REPO)
    run_json = results / profile / "run.json"
    record = json.loads(run_json.read_text()) if run_json.exists() else {}
    walls = record.get("notebook_wall_s", {})
    dev = device if device != "auto" else _auto_device()
    # the machine's own speed before the run and after each notebook: a reader can tell a slower run from a
    # slower machine (milliseconds of two fixed reference workloads, `timing.machine_speed`)
    speed = dict(record.get("machine_speed", {}), start=machine_speed(dev))
    status = 0
    t_all = time.time()

    def record_run() -> None:
        # after every notebook, so that a later notebook (07's report) and an interrupted run see this run
        write_json(provenance(params, seed, dev, round(time.time() - t_all, 1), profile=profile, notebook_wall_s=walls,
                              total_notebook_wall_s=round(sum(walls.values()), 1), machine_speed=speed), run_json)

    for nb in notebook_list(only):
        out = out_dir / nb.name
        stamp = out_dir / f"{nb.stem}.stamp.json"
        if not force and _is_complete(stamp, out, commit, params):
            print(f"[skip] {nb.name}: complete for this commit and parameters (--force reruns)")
            continue
        print(f"[run ] {nb.name} (profile {profile})", flush=True)
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, kernel_name="python3",
                                cwd=str(REPO), log_output=True, progress_bar=False,
                                execution_timeout=timeout)
        except Exception as e:  # noqa: BLE001 - papermill raises several types
            where = _failed_cell(out) if out.exists() else str(e)
            print(f"\nFAILED: notebook {nb.name}, {where}\n  executed copy: {out}", file=sys.stderr)
            if stamp.exists():
                stamp.unlink()
            status = 1
            if not keep_going:
                break
            continue
        walls[nb.stem] = round(time.time() - t0, 1)
        speed[nb.stem] = machine_speed(dev)
        write_json({"commit": commit, "parameters": params, "wall_s": walls[nb.stem]}, stamp)
        print(f"[done] {nb.name} in {walls[nb.stem]:.0f} s", flush=True)
        record_run()
    record_run()
    return status


def _is_complete(stamp: Path, out: Path, commit: str, params: dict) -> bool:
    """Whether a notebook's executed copy is from this clean commit with these parameters (its stamp says so)."""
    if not stamp.exists() or not out.exists() or "dirty" in commit:
        return False
    s = json.loads(stamp.read_text())
    return s.get("commit") == commit and s.get("parameters") == params


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper", "paper-dry-tiny"])
    ap.add_argument("--dry-run", action="store_true",
                    help="paper profile only: true model sizes, random weights, generated data, a handful of "
                         "images -> results/paper-dry/")
    ap.add_argument("--only", nargs="+", help="notebook number prefixes, e.g. 00 03")
    ap.add_argument("--keep-going", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--figures-only", action="store_true")
    ap.add_argument("--results-dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--weights-dir", default="")
    ap.add_argument("--timeout", type=int, default=7200, help="per-cell timeout in seconds")
    ap.add_argument("--precision", choices=PRECISIONS,
                    help="the backbone's and explainer's precision (default: the profile's; auto = bf16 on CUDA, "
                         "native = also on a CPU with bf16 instructions)")
    ap.add_argument("--compile", metavar="BACKEND", help="torch.compile the backbone's passes (e.g. inductor)")
    a = ap.parse_args(argv)
    for var, value in ((PRECISION_ENV, a.precision), (COMPILE_ENV, a.compile)):
        if value is not None:  # every notebook's Suite reads them (`tve_lib.studies.suite.env_overrides`)
            os.environ[var] = value
    only = [FIGURES_NOTEBOOK] if a.figures_only else a.only
    from .studies.suite import resolve_device  # the device and notebooks checked before the results folder is made

    try:
        resolve_device(a.device)
        notebook_list(only)
    except (RuntimeError, SystemExit) as e:
        ap.error(str(e))
    if a.dry_run or a.profile == "paper-dry-tiny":
        if a.profile not in ("paper", "paper-dry-tiny"):
            ap.error("--dry-run is a dry run of the paper profile: use --profile paper --dry-run")
        a.profile = "paper-dry" if a.profile == "paper" else a.profile
        a.data_dir = a.data_dir or str(Path(a.results_dir or REPO / "results") / a.profile / "data")
        from .synthetic import write_dry_data

        print(f"[dry ] generated data under {write_dry_data(a.data_dir, a.seed)}", flush=True)
    # recorded with the parameters (run.json, the notebooks' stamps: another precision reruns them)
    extra = {k: v for k, v in (("PRECISION", a.precision), ("COMPILE", a.compile)) if v is not None}
    return run(a.profile, only, a.keep_going, a.force or a.figures_only, a.results_dir, a.seed,
               a.device, a.data_dir, a.weights_dir, a.timeout, extra_params=extra or None)


if __name__ == "__main__":
    sys.exit(main())
