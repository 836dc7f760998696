"""Every notebook runs end to end with papermill in the smoke profile; assertions on its files."""

import ast
import json

import pandas as pd
import papermill
import pytest

from tve_lib import nbbuild, runner
from tve_lib.config import get_profile

pytestmark = pytest.mark.notebooks

# notebook -> {file: columns that other tools read (the contract)}
CONTRACT = {
    "00_backbones_and_data": {"accuracy.csv": ["backbone", "task", "head", "split", "accuracy", "n_images", "seed"]},
    "01_pretrain_tve": {"tve/pretrain.csv": ["backbone", "epoch", "split", "loss_keep", "loss_remove", "seconds"]},
    "02_transfer": {"tve/transfer_error.csv": ["backbone", "task", "head", "image_id", "spearman",
                                               "topk_overlap", "seed"]},
    "03_fidelity": {
        "fidelity/curves.csv": ["backbone", "task", "head", "method", "budget", "metric", "sparsity", "value",
                                "n_images", "seed"],
        "fidelity/summary.csv": ["backbone", "task", "head", "method", "budget", "metric", "value", "ci_low",
                                 "ci_high", "n_images", "seed"]},
    "03b_ablations": {"fidelity/ablations.csv": ["backbone", "task", "head", "method", "budget", "metric", "value",
                                                 "ci_low", "ci_high", "n_images", "seed", "variant"],
                      "tve/scaling.csv": ["backbone", "sampler", "arch", "n_images", "epochs", "windows_per_image",
                                          "steps", "targets_seen", "pretrain_seconds", "heldout_ratio",
                                          "transfer_spearman", "topk_overlap", "fid_plus_ratio_to_occlusion",
                                          "seed"]},
    "03c_operators": {"fidelity/operators.csv": ["backbone", "task", "head", "method", "budget", "operator", "metric",
                                                 "value", "n_images", "seed"],
                      "fidelity/operator_agreement.csv": ["backbone", "task", "head", "metric", "operator_a",
                                                          "operator_b", "kendall_tau", "n_methods"]},
    "04_throughput": {"throughput/throughput.csv": ["device", "threads", "backbone", "size", "method", "budget",
                                                    "batch_size", "n_tasks", "images_per_s", "ms_per_image",
                                                    "ratio_to_inference", "repeats"]},
    "05_ltx": {"ltx/comparison.csv": ["backbone", "task", "head", "method", "budget", "metric", "value",
                                      "ci_low", "ci_high", "n_images", "seed", "selection"]},
    "07_figures": {"claims.csv": []},
    "09_your_dataset": {"yourdata/summary.csv": ["method", "metric", "value"]},
    "06_explainability_vector": {"xvec/lambda_sweep.csv": ["task", "backbone", "lambda", "metric", "value",
                                                           "seed"]},
}


def test_notebook_sources_are_built_and_stripped():
    assert nbbuild.build(check=True) == [], "run: python -m tve_lib.nbbuild"
    for nb in runner.notebook_list():
        cells = json.loads(nb.read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1, nb.name
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), nb.name
        src = "\n".join("".join(c["source"]) for c in code)
        assert "\ndef " not in "\n" + src and "\nclass " not in "\n" + src, nb.name


def test_papermill_reads_every_parameter_of_every_notebook():
    # papermill skips a parameter line it cannot parse (an "=" in its comment, say) with only a log warning:
    # `papermill --help-notebook` then hides it from the user
    for nb in runner.notebook_list():
        cells = json.loads(nb.read_text())["cells"]
        cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
        assigned = {t.id for node in ast.parse("".join(cell["source"])).body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
        assert assigned and assigned == set(papermill.inspect_notebook(str(nb))), nb.name


def test_every_notebook_ran_and_wrote_its_files(smoke_results):
    names = [nb.stem for nb in runner.notebook_list()]
    assert names[:3] == ["00_backbones_and_data", "01_pretrain_tve", "02_transfer"]
    run = json.loads((smoke_results / "run.json").read_text())
    assert set(names) <= set(run["notebook_wall_s"]), "run.json lacks a notebook's wall time"
    # the machine's speed before the run and after every notebook (`timing.machine_speed`)
    assert {"start", *names} <= set(run["machine_speed"])
    assert all(v["matmul_ms"] > 0 and v["block_step_ms"] > 0 for v in run["machine_speed"].values())
    assert run["git_commit"] and run["packages"]["torch"] and run["device"]["device"] == "cpu"
    for name in names:
        assert (smoke_results / "notebooks" / f"{name}.ipynb").exists()
        for rel, cols in CONTRACT.get(name, {}).items():
            df = pd.read_csv(smoke_results / rel)
            assert len(df) > 0, rel
            missing = set(cols) - set(df.columns)
            assert not missing, f"{rel} lacks columns {missing}"
            assert not df[[c for c in cols if c in ("value", "accuracy", "spearman")]].isna().all().any(), rel


def test_foundation_outputs(smoke_results):
    acc = pd.read_csv(smoke_results / "accuracy.csv")
    assert set(acc.backbone) == {"vit", "deit", "swin"}
    assert set(acc.task) >= {"fashion_binary", "digits", "fashion_mosaic"}
    assert set(acc["head"]) >= {"linear", "mlp"}
    assert acc.accuracy.between(0, 1).all()
    assert (smoke_results / "figures" / "00_samples.png").exists()


def test_tve_outputs(smoke_results):
    pre = pd.read_csv(smoke_results / "tve" / "pretrain.csv")
    assert set(pre.split) == {"train", "heldout"} and (pre.loss_keep > 0).all()
    err = pd.read_csv(smoke_results / "tve" / "transfer_error.csv")
    assert err.spearman.between(-1, 1).all() and err.topk_overlap.between(0, 1).all()
    assert set(err.rule) == {"whole_head", "last_layer"}
    # which branch the error comes from: the same maps with one branch exact, a summary column each
    assert err[["spearman_exact_keep", "spearman_exact_remove"]].stack().between(-1, 1).all()
    summary = pd.read_csv(smoke_results / "tve" / "transfer_error_summary.csv")
    assert {"median_spearman_exact_keep", "median_spearman_exact_remove"} <= set(summary.columns)
    # each median with its bootstrap interval over the test images
    assert ((summary.median_spearman_low <= summary.median_spearman)
            & (summary.median_spearman <= summary.median_spearman_high)).all()
    assert (smoke_results / "tve" / "run.json").exists()
    # the walkthroughs of 01 and 02 (issue: step through the method), saved statically when not interactive
    for fig in ("01_walkthrough_window", "01_walkthrough_live", "02_transfer_by_hand", "02_transfer_branches"):
        assert (smoke_results / "figures" / f"{fig}.png").exists(), fig


def test_fidelity_diagnostics(smoke_results):
    ceiling = pd.read_csv(smoke_results / "fidelity" / "tve_ceiling.csv")
    assert len(ceiling) and ceiling[["tve_over_target", "target_over_best", "tve_over_target_all"]].notna().all().all()
    assert (ceiling.n_images_target >= ceiling.n_images).all()
    np_ = ceiling.tve_over_target * ceiling.target_over_best
    assert (np_ - ceiling.tve_over_best).abs().max() < 1e-9
    abl = pd.read_csv(smoke_results / "fidelity" / "ablations.csv")
    ts = abl[abl.metric == "transfer_spearman"]
    assert len(ts) and ts.value.between(-1, 1).all()
    assert {"explainer", "radius"} <= set(ts.ablation)


def test_scaling_study(smoke_results):
    sc = pd.read_csv(smoke_results / "tve" / "scaling.csv")
    assert set(sc.sampler) == {"dense", "online"} and (sc.groupby("sampler").size() >= 5).all()
    for _, g in sc.groupby("sampler"):
        assert g.pretrain_seconds.max() / g.pretrain_seconds.min() >= 4  # budgets span compute (16x in cpu)
    assert sc.transfer_spearman.between(-1, 1).all() and (sc.pretrain_seconds > 0).all()
    dense = sc[sc.sampler == "dense"]
    assert (dense.windows_per_image == 64).all() and (sc[sc.sampler == "online"].windows_per_image < 64).all()
    assert sc.groupby("backbone").backbone_weights.nunique().eq(1).all()  # every budget on one trained backbone
    # a continued budget: the profile's explainer trained further, its steps and seconds counted in the row
    cont, bs = dense[dense.continued_from_images > 0], get_profile("smoke").tve.batch_size
    assert len(cont)
    for _, r in cont.iterrows():
        base = dense[(dense.continued_from_images == 0) & (dense.n_images == r.continued_from_images)
                     & (dense.epochs == r.continued_from_epochs)].iloc[0]
        assert r.steps == base.steps + r.epochs * -(-r.n_images // bs)
        assert r.pretrain_seconds > base.pretrain_seconds - base.target_seconds + r.target_seconds
    assert (smoke_results / "figures" / "03b_scaling.png").exists()


def test_operator_study(smoke_results):
    ops = pd.read_csv(smoke_results / "fidelity" / "operators.csv")
    assert set(ops.operator) == {"mean", "blur", "other"}
    assert set(ops.metric) == {"fid_plus_auc", "fid_minus_auc", "deletion_auc", "insertion_auc"}
    assert {"tve", "occlusion", "random", "kernelshap"} <= set(ops.method)
    ag = pd.read_csv(smoke_results / "fidelity" / "operator_agreement.csv")
    assert ag.groupby(["backbone", "task", "head"]).ngroups == 18  # every setting of the profile
    assert len(ag) == 18 * 4 * 3 and ag.kendall_tau.dropna().between(-1, 1).all() and (ag.n_methods >= 8).all()
    # under the default operator the study re-scores notebook 03's own maps: its values are 03's
    per = pd.read_csv(smoke_results / "fidelity" / "operators_per_image.csv")
    ref = pd.read_csv(smoke_results / "fidelity" / "per_image.csv")
    keys = ["backbone", "task", "head", "method", "budget", "metric", "image_id"]
    j = per[per.operator == "mean"].merge(ref[ref.metric.isin(["fid_plus_auc", "fid_minus_auc"])], on=keys)
    assert len(j) == len(per[(per.operator == "mean") & per.metric.isin(["fid_plus_auc", "fid_minus_auc"])])
    assert (j.value_x - j.value_y).abs().max() < 1e-5
    # the other operators change the scores
    wide = per.pivot_table(index=keys, columns="operator", values="value")
    assert (wide["blur"] - wide["mean"]).abs().max() > 1e-3 and (wide["other"] - wide["mean"]).abs().max() > 1e-3
    for head in ("linear", "mlp"):
        assert (smoke_results / "figures" / f"03c_operators_{head}.png").exists()
    claims = pd.read_csv(smoke_results / "claims.csv").set_index("id")
    for cid in ("tve_fidelity", "tve_no_training"):
        text = claims.loc[cid, "operators"]
        assert text.startswith("holds under all operators") or "changes under" in text, text


def test_fidelity_reruns_after_later_notebooks_appended(smoke_results):
    # 05 and 06 append LTX / xvec rows to fidelity/summary.csv; rerunning 03 must still work
    summary = pd.read_csv(smoke_results / "fidelity" / "summary.csv")
    assert {"ltx", "pltx", "xvec"} <= set(summary.method)
    code = runner.run("smoke", only=["03"], force=True, results_dir=smoke_results.parent, device="cpu")
    assert code == 0


def test_rerun_skips_completed_notebooks(smoke_results, capsys):
    code = runner.run("smoke", only=["00"], results_dir=smoke_results.parent, device="cpu")
    assert code == 0
    out = capsys.readouterr().out
    if "-dirty" in json.loads((smoke_results / "run.json").read_text())["git_commit"]:
        assert "[run ] 00" in out and "[skip]" not in out  # uncommitted code may differ: rerun, never trust
    else:
        assert "[skip] 00" in out and "[run ]" not in out


def test_a_stamp_counts_only_for_its_clean_commit_its_parameters_and_its_notebook(tmp_path):
    out, stamp = tmp_path / "00.ipynb", tmp_path / "00.stamp.json"
    params = {"PROFILE": "smoke", "SEED": 0}
    out.write_text("{}")
    stamp.write_text(json.dumps({"commit": "abc", "parameters": params}))
    assert runner._is_complete(stamp, out, "abc", params)
    for commit, p in (("abc-dirty", params), ("abd", params), ("abc", {**params, "SEED": 1})):
        assert not runner._is_complete(stamp, out, commit, p)
    stamp.write_text(json.dumps({"commit": "abc-dirty", "parameters": params}))
    assert not runner._is_complete(stamp, out, "abc-dirty", params)  # a dirty tree never skips
    stamp.write_text(json.dumps({"commit": "abc", "parameters": params}))
    out.unlink()
    assert not runner._is_complete(stamp, out, "abc", params)  # its executed copy is gone: rerun


# wall-clock columns (and what is derived from them) and the machine's memory readings (peak resident set,
# throughput/loader.csv) differ between two runs of the same code
TIMING = ("second", "_ms", "ms_", "images_per_s", "ratio_to_inference", "overhead", "iqr", "speedup", "wall",
          "per_s", "repeats", "warmup", "estimated", "basis", "threads", "time", "train_s", "explain_s",
          "_mib", "model_batches")  # batches: counted by whichever run priced the row (measured or stand-in)
# tables whose text quotes timings: only these columns are compared
TEXT_WITH_TIMINGS = {"claims.csv": ["id", "method", "claim", "rule"],
                     "throughput/targets.csv": ["target", "backbone", "size", "batch_size", "tve_arch", "op",
                                                "threshold"]}


def _rows(root, rels=None) -> dict[str, pd.DataFrame]:
    """Every CSV under ``root`` (checkpoints aside) without timing columns, rows sorted."""
    out = {}
    for p in sorted(root.rglob("*.csv")):
        rel = p.relative_to(root).as_posix()
        if "checkpoints" in p.parts or (rels is not None and rel not in rels):
            continue
        df = pd.read_csv(p)
        cols = TEXT_WITH_TIMINGS.get(rel, [c for c in df.columns if not any(t in c for t in TIMING)])
        df = df[cols].astype(str)
        out[rel] = df.sort_values(cols).reset_index(drop=True)
    return out


def _same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> list[str]:
    bad = [f"{k}: missing" for k in a if k not in b]
    bad += [f"{k}: {len(a[k])} -> {len(b[k])} rows" if len(a[k]) != len(b[k]) else k
            for k in a if k in b and not a[k].equals(b[k])]
    return bad


def test_rerunning_one_notebook_keeps_every_other_notebooks_rows(smoke_results):
    """Each notebook rerun alone (after the whole run) leaves every table's rows as they were: its own
    rows come back the same (same seed, cached models) and no other notebook's row is lost or changed."""
    before = _rows(smoke_results)
    for nb in runner.notebook_list():
        assert runner.run("smoke", only=[nb.stem], force=True, results_dir=smoke_results.parent, device="cpu") == 0
        changed = _same(before, _rows(smoke_results))
        assert not changed, f"rerunning {nb.stem} alone changed: {changed}"


def _run_until(cmd: list[str], cond, timeout: float = 900) -> bool:
    """Run ``cmd`` in its own process group; SIGKILL the group (kernels included) once ``cond()`` holds.
    Returns whether it was killed (False: it finished first)."""
    import os
    import signal
    import subprocess
    import time

    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None:
        if cond() or time.time() - t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            assert time.time() - t0 <= timeout, f"{cmd} neither finished nor reached the kill point"
            return True
        time.sleep(0.05)
    return False


def test_a_run_killed_at_any_moment_resumes_to_the_same_results(smoke_results, tmp_path):
    """SIGKILL during a backbone's training, TVE pre-training and notebook 03, then one more run: the tables
    equal an uninterrupted run's, and no table left behind by a kill is ever half-written."""
    import subprocess
    import sys

    out = tmp_path / "killed"
    root = out / "smoke"
    cmd = [sys.executable, "-m", "tve_lib.runner", "--profile", "smoke", "--results-dir", str(out), "--device",
           "cpu", "--only", "00", "01", "03_fidelity"]
    points = {
        # the first backbone is trained and cached, the next one is training
        "a backbone's training": lambda: len([p for p in root.glob("checkpoints/backbone_*.pt")
                                              if not p.name.endswith(".partial.pt")]) == 1,
        "TVE pre-training": lambda: any(root.glob("checkpoints/tve_*.partial.pt")),
        "notebook 03": lambda: any(root.glob("checkpoints/shapley_*.pt")),
    }
    for what, cond in points.items():
        assert _run_until(cmd, cond), f"the run finished before {what}"
        for p in root.rglob("*.csv"):
            pd.read_csv(p)  # complete tables only (a table is written to a temporary file, then renamed)
    assert subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    rels = {"accuracy.csv", "tve/pretrain.csv", "fidelity/curves.csv", "fidelity/per_image.csv"}
    got, ref = _rows(root, rels), _rows(smoke_results, rels)
    for rel in ("fidelity/curves.csv", "fidelity/per_image.csv"):  # notebook 03's rows of the full run
        keep = pd.Series(True, index=ref[rel].index)
        for c in ("selection", "lambda"):  # rows of notebooks 05 and 06, absent from the killed run
            if c in ref[rel]:
                keep &= ref[rel][c] == "nan"
        ref[rel] = ref[rel][keep]
        cols = [c for c in ref[rel].columns if c in got[rel].columns]
        ref[rel], got[rel] = (d[cols].sort_values(cols).reset_index(drop=True) for d in (ref[rel], got[rel]))
    assert not _same(ref, got), _same(ref, got)
