"""Findings and the README's claims block are rendered from tables, so they follow the numbers."""

import json

import numpy as np
import pandas as pd
import pytest

from tve_lib.report.claims import BACKBONE_ACCURACY_OK, HEAD_ACCURACY_OK, HELDOUT_RATIO_OK, SPEARMAN_OK
from tve_lib.report.findings import (
    accuracy_finding,
    branch_finding,
    failing_rows,
    pretrain_finding,
    scaling_finding,
    transfer_finding,
)
from tve_lib.report.readme import BEGIN, END, update_readme
from tve_lib.report.tables import branch_table, transfer_summary


def _summary(values):
    rows = [dict(rule="whole_head", backbone="vit", task=t, head=h, median_spearman=v, mean_topk_overlap=0.7,
                 n_images=40) for (t, h), v in zip([("a", "linear"), ("a", "mlp"), ("b", "linear")], values)]
    return pd.DataFrame(rows)


def test_transfer_finding_follows_the_numbers():
    good = transfer_finding(_summary([0.9, 0.95, 0.88]))
    bad = transfer_finding(_summary([0.9, 0.95, SPEARMAN_OK - 0.01]))
    assert "3/3" in good and "**missed**" not in good.split("Mean top")[0]
    assert "2/3" in bad and "**missed**" in bad and "vit/b/linear" in bad


def test_accuracy_finding_follows_the_numbers():
    rows = [dict(backbone=b, task="fashion_mnist", head="backbone", split="test", accuracy=a)
            for b, a in (("vit", BACKBONE_ACCURACY_OK + 0.01), ("swin", BACKBONE_ACCURACY_OK + 0.02))]
    rows += [dict(backbone="vit", task=t, head=h, split=sp, accuracy=HEAD_ACCURACY_OK + 0.1)
             for t in ("a", "b") for h in ("linear", "mlp") for sp in ("train", "test")]
    good = accuracy_finding(pd.DataFrame(rows))
    assert "4 of 4" in good and "**missed**" not in good and "swin" in good
    rows[-1] = dict(rows[-1], accuracy=HEAD_ACCURACY_OK - 0.05)  # b/mlp's test accuracy
    rows[0] = dict(rows[0], accuracy=BACKBONE_ACCURACY_OK - 0.01)
    bad = accuracy_finding(pd.DataFrame(rows))
    assert "3 of 4" in bad and bad.count("**missed**") == 2 and f"vit/b/mlp {HEAD_ACCURACY_OK - 0.05:.3f}" in bad


def test_failing_rows_name_each_failing_setting():
    v = pd.DataFrame([dict(backbone="vit", task=t, head="linear", ok=ok, beats=ok, tve_same_images=0.5,
                           worst_method="lime-1000", worst_value=0.7, n_images=24, ratio=0.71) for t, ok in
                      (("a", True), ("b", False))])
    text = failing_rows(v)
    assert text.startswith("TVE passes the check in 1 of 2")
    assert "vit/b/linear: TVE 0.500 against lime-1000 0.700" in text and "vit/a/" not in text
    assert failing_rows(v.assign(ok=True)).endswith("in 2 of 2 backbone × task × head settings.")


def test_branch_finding_and_summary_follow_the_per_image_numbers():
    # three settings; per image: TVE, exact keep (remove's error only), exact remove (keep's error only)
    vals = {("a", "linear"): (0.80, 0.82, 0.97), ("a", "mlp"): (0.70, 0.74, 0.99), ("b", "linear"): (0.90, 0.98, 0.91)}
    err = pd.DataFrame([dict(rule="whole_head", backbone="vit", task=t, head=h, image_id=i, spearman=v[0] + d,
                             topk_overlap=0.7, spearman_exact_keep=v[1] + d, spearman_exact_remove=v[2] + d)
                        for (t, h), v in vals.items() for i, d in enumerate((-0.01, 0.0, 0.01))])
    summary = transfer_summary(err)
    assert summary.set_index(["task", "head"]).median_spearman_exact_remove[("a", "mlp")] == 0.99
    f = branch_finding(summary)
    assert "exact in 2/3 settings" in f  # a/linear and a/mlp gain more from an exact remove branch
    assert "0.74–0.98, ≥ 0.85 in 1/3" in f and "0.91–0.99, ≥ 0.85 in 3/3" in f
    assert "vit/a/mlp: 0.70; exact keep 0.74, exact remove 0.99" in f
    long = branch_table(summary)
    assert len(long) == 9 and long.groupby("map")["median Spearman"].max().round(2).to_dict() == {
        "TVE": 0.9, "exact keep: remove branch's error only": 0.98, "exact remove: keep branch's error only": 0.99}
    assert branch_finding(_summary([0.9, 0.9, 0.9])) == ""  # a table without the branch columns


def test_pretrain_finding_reports_time_and_ratio():
    pre = pd.DataFrame([dict(backbone="vit", epoch=1, split="heldout", seconds=100.0, target_seconds=40.0)])
    ratios = pd.DataFrame([dict(backbone="vit", ratio=HELDOUT_RATIO_OK + 0.01, ratio_keep=0.2, ratio_remove=0.1)])
    f = pretrain_finding(pre, ratios)
    assert "vit 100 s" in f and "40 s" in f and "**missed**" in f


def test_scaling_finding_names_the_first_budget_meeting_the_target():
    sc = pd.DataFrame([dict(backbone="vit", sampler="dense", arch="tapped", n_images=n, epochs=e, pretrain_seconds=s,
                            transfer_spearman=m, transfer_spearman_min=w, fid_plus_ratio_to_occlusion=0.9,
                            n_test_images=40)
                       for n, e, s, m, w in ((100, 1, 10, 0.5, 0.3), (200, 2, 40, 0.9, SPEARMAN_OK),
                                             (400, 4, 160, 0.95, 0.9))])
    f = scaling_finding(sc, 200, 2)
    assert "first at 40 s" in f and "16× compute" in f and "on the curve" in f
    # a continued budget is stated against the explainer it continues, not as a point of the curve
    more = dict(sc.iloc[1], n_images=400, epochs=1, pretrain_seconds=70, transfer_spearman=0.93,
                transfer_spearman_min=0.88, continued_from_images=200, continued_from_epochs=2)
    f = scaling_finding(pd.concat([sc.assign(continued_from_images=0, continued_from_epochs=0),
                                   pd.DataFrame([more])]), 200, 2)
    assert "3 budgets from 10 s to 160 s" in f and "16× compute" in f
    assert ("the 200 × 2 explainer trained further on 400 images × 1 epochs (70 s of pre-training in all): median "
            f"transfer Spearman 0.930 against 0.900 at 40 s; worst setting 0.880 against {SPEARMAN_OK:.3f}") in f


def test_readme_block_is_regenerated(tmp_path):
    root = tmp_path / "cpu"
    root.mkdir()
    pd.DataFrame([dict(id="x", method="TVE", claim="small error", verdict="partly", evidence="3/18 pass",
                       rule="r")]).to_csv(root / "claims.csv", index=False)
    (root / "run.json").write_text(json.dumps({"git_commit": "abc", "wall_time_s": 12.5, "notebook_wall_s": {"00": 1},
                                               "device": {"device": "cpu", "threads": 2}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\nrest\n")
    update_readme(root, readme)
    text = readme.read_text()
    assert "old table" not in text and "TVE: small error" in text and "3/18 pass" in text
    assert "12.5 s" in text and text.startswith("intro") and text.endswith("rest\n")
    assert "Machine speed" not in text  # a run.json from before `machine_speed`
    with pytest.raises(FileNotFoundError, match="claims.csv not found"):
        update_readme(tmp_path / "no_run", readme)
    assert readme.read_text() == text  # untouched by the failed call
    run = json.loads((root / "run.json").read_text())
    run["machine_speed"] = {k: {"matmul_ms": 7.0, "block_step_ms": ms} for k, ms in
                            (("start", 21.5), ("00", 30.25), ("07", 24.0))}
    (root / "run.json").write_text(json.dumps(run))
    update_readme(root, readme)
    assert "21.5 ms at the start, 24.0 ms after the last notebook, 30.25 ms at the slowest of 3" in readme.read_text()


def test_acceptance_finding_follows_the_tables():
    """Notebook 03's finding counts passes, splits the gap and names who TVE inherits a loss from."""
    from tve_lib.report.findings import acceptance_finding

    # one setting: TVE 0.30, occlusion 0.31, random 0.32 (TVE loses to random; occlusion is within 0.02 of it)
    vals = {"tve": 0.30, "occlusion": 0.31, "random": 0.32, "kernelshap": 0.50}
    pi = pd.DataFrame([dict(backbone="vit", task="a", head="linear", method=m, budget=0, metric="fid_plus_auc",
                            image=i, value=v, seed=0) for m, v in vals.items() for i in range(3)])
    verdict = pd.DataFrame([dict(backbone="vit", task="a", head="linear", ratio=0.75, n_images=3, beats=False,
                                 ok=False)])
    ceiling = pd.DataFrame([dict(tve_over_target=0.30 / 0.31, target_over_best=0.31 / 0.50)])
    f = acceptance_finding(verdict, ceiling, pi, {"vit": (1, 8)})
    assert "in 0 of 1" in f and "median **0.97**" in f and "median **0.62**" in f and "below its target" in f
    assert "loses to a weak baseline in 1 settings; in 1 of them" in f and "9 of 64 players" in f


def test_the_readme_the_claims_block_goes_to_is_the_repositorys():
    from tve_lib.report.readme import README

    assert README.exists() and BEGIN in README.read_text() and END in README.read_text()


def test_median_interval_is_a_seeded_bootstrap_of_the_median():
    from tve_lib.report.tables import median_interval

    assert median_interval([0.7] * 30) == (0.7, 0.7)
    rng = np.random.default_rng(3)
    v = rng.normal(0.8, 0.1, 40)
    lo, hi = median_interval(v, seed=5)
    assert lo < np.median(v) < hi and median_interval(v, seed=5) == (lo, hi)
    wide = median_interval(v[:10], seed=5)
    assert wide[1] - wide[0] > hi - lo  # fewer test images, a wider interval
    assert all(np.isnan(median_interval([float("nan")] * 3)))


def test_transfer_finding_counts_the_misses_beyond_their_interval():
    centres = {("a", "linear"): 0.95, ("a", "mlp"): SPEARMAN_OK - 0.004, ("b", "linear"): SPEARMAN_OK - 0.15}
    err = pd.DataFrame([dict(rule="whole_head", backbone="vit", task=t, head=h, image_id=i, spearman=v,
                             topk_overlap=0.7)
                        for (t, h), c in centres.items() for i, v in enumerate(c + np.linspace(-0.1, 0.1, 41))])
    s = transfer_summary(err)
    assert np.allclose(s.set_index(["task", "head"]).median_spearman.sort_index(), pd.Series(centres).sort_index())
    assert (s.median_spearman_low <= s.median_spearman).all() and (s.median_spearman <= s.median_spearman_high).all()
    f = transfer_finding(s)
    assert "of the 2 settings below" in f and "1 stay below it across their interval (vit/b/linear [" in f
    assert "and 1 reach it within theirs" in f
