"""Every claim rule and threshold of the suite, in one place, applied to a run's tables only.

The claims table (`claims_table`) decides, for each claim of the seed papers, "reproduces",
"partly" or "does not reproduce" ("not measured" when its CSV is missing) by an explicit rule on
the CSV numbers, written beside the verdict with the numbers behind it (the explainability vector's
rules live in `xvec_claims`, re-exported here). Where a rule counts settings (backbone × task × head,
or device × size × backbone × batch size), `share_verdict` maps the share of settings that pass to a
verdict: all of them → reproduces, at least half → partly, fewer → does not reproduce. Notebooks
03–06 apply the same rules to their own rows (`tve_check`, `ltx_verdict`, `xvec_target_claims`,
`target_checks`); findings (`tve_lib.report.findings`) quote the thresholds below, never literals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from ..config import XVecConfig
from ..schema import CLAIM_COLUMNS, DIRECTION, NO_ARCH, SELECTIONS
from .fidelity import tve_verdict
from .operators import operator_robustness, operator_verdicts
from .tables import MissingData, _throughput, ltx_rows, main_summary, need, transfer_summary
from .xvec_claims import QUALITY_METRICS as QUALITY_METRICS
from .xvec_claims import lambda_gain as lambda_gain
from .xvec_claims import xvec_claims
from .xvec_claims import xvec_target_claims as xvec_target_claims

if TYPE_CHECKING:
    from ..config import Profile

# ---- thresholds of the claim rules (each rule's text repeats them)
COMPETITIVE = 0.9  # "competitive": at least this fraction of the reference's Fidelity⁺ AUC


WEAK_BASELINES = ("random", "gradcam", "rollout")  # TVE must also beat these (notebook 03's check)


SPEARMAN_OK = 0.85  # "small transfer error": median Spearman with the exact quantity (notebook 02's target)


TOPK_OK = 0.6  # mean top-10 % overlap with the exact window quantity


HELDOUT_RATIO_OK = 0.15  # held-out MSE / the trivial predictor's, both branches pooled, per backbone


PRETRAIN_SECONDS_OK = 300.0  # pre-training per backbone on the 2-core machine, target store included


FID_RATIO_MEDIAN_OK, FID_RATIO_WORST_OK = 0.97, 0.93  # TVE / window occlusion Fid⁺ AUC, paired


INFERENCE_RATIO = 1 / 3  # TVE costs a few forward passes: ≥ 1/3 of the backbone's inference throughput


LOADER_SPEEDUP_OK = 1.7  # the paper loader with 2 workers over 0 workers, images/s, on the 2-core machine


SPEEDUP_OK = 10.0  # "favourable": ≥ 10× the throughput of KernelSHAP at its largest budget


LTX_MAJORITY = 2 / 3  # LTX better than pLTX in ≥ 2/3 of settings on a majority of metrics (`ltx_verdict`)


BACKBONE_ACCURACY_OK = 0.85  # a trained backbone on its upstream test split (notebook 00; the cpu backbones)
HEAD_ACCURACY_OK = 0.8  # a downstream head on its task's test split: a head that cannot classify explains nothing


INHERITED_MARGIN = 0.02  # Fid⁺ AUC: occlusion within this of a weak baseline, TVE's loss to it counts as inherited


#: downstream tasks from a domain the upstream set does not cover (the TVE claim's "unseen domain")
UNSEEN_TASKS = ("digits", "cifar10")


VERDICTS = ("reproduces", "partly", "does not reproduce", "not measured")
#: notebook 04's throughput targets, as ratios within one run
# the targets, as ratios within one run
TARGETS = {
    "tve_over_kernelshap": 200.0,  # TVE images/s over KernelSHAP-1000's, >=
    "tve_ratio_to_inference": 0.33,  # TVE images/s over the backbone's inference, >=
    "tve_shared_ratio_to_inference": 0.5,  # the aim for the shared-trunk TVE, >=
    "tve_tasks_cost": 1.2,  # TVE time for n_tasks heads over one head, <=
    "kernelshap_overhead": 0.2,  # KernelSHAP's time over its model calls alone, minus 1, <=
}


# ----------------------------------------------------------------------------- rules
def share_verdict(n_ok: int, n: int) -> str:
    """All settings pass → reproduces; at least half → partly; fewer → does not reproduce."""
    if n == 0:
        return "not measured"
    if n_ok == n:
        return "reproduces"
    return "partly" if n_ok >= n / 2 else "does not reproduce"


def _competitive(value: float, ref: float) -> bool:
    return value >= COMPETITIVE * ref if ref > 0 else value >= ref


def tve_check(t: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Notebook 03's acceptance check (`tve_lib.report.fidelity.tve_verdict`) on fidelity/per_image.csv: per
    backbone × task × head, TVE's Fid⁺ AUC over that of the strongest other method on the same images."""
    (per_image,) = need(t, "per_image")
    v = tve_verdict(main_summary(per_image), "fid_plus_auc", WEAK_BASELINES, COMPETITIVE)
    if v.empty:
        raise MissingData("no TVE fid_plus_auc rows in fidelity/per_image.csv")
    return v


def claim_tve_fidelity(t: dict[str, pd.DataFrame]) -> tuple[str, str]:
    """Competitive fidelity: notebook 03's check (`tve_check`) passes, per setting."""
    v = tve_check(t)
    worst = v.loc[v.ratio.idxmin()]
    ev = (f"TVE ≥ {COMPETITIVE:g}× the Fid⁺ AUC of the strongest other method (on the same images) and above "
          f"{', '.join(WEAK_BASELINES)} in {int(v.ok.sum())}/{len(v)} backbone × task × head settings; ratio: "
          f"median {v.ratio.median():.2f}, lowest {worst.ratio:.2f} ({worst.backbone}/{worst.task}/{worst['head']} "
          f"vs {worst.worst_method}); beats the weak baselines in {int(v.beats.sum())}/{len(v)}; best of all "
          f"methods in {int((v.ratio >= 1).sum())}/{len(v)}")
    return share_verdict(int(v.ok.sum()), len(v)), ev


def claim_tve_latency(t: dict[str, pd.DataFrame]) -> tuple[str, str]:
    """Favourable latency: TVE ≥ INFERENCE_RATIO × inference and ≥ SPEEDUP_OK × KernelSHAP at the largest budget
    timed at the same device, size, backbone and batch size."""
    tp = _throughput(t)
    one = tp[tp.n_tasks == 1]
    keys = ["device", "size", "backbone", "batch_size"]
    tve = one[one.method == "tve"]
    if tve.empty:
        raise MissingData("no TVE rows in throughput/throughput.csv")
    inf = one[one.method == "inference"].groupby(keys).images_per_s.first().rename("inf")
    ks = one[one.method == "kernelshap"]
    ks = ks[ks.budget == ks.groupby(keys).budget.transform("max")]  # the largest budget timed beside TVE
    ks = ks.groupby(keys).agg(ks=("images_per_s", "first"), ks_budget=("budget", "first"))
    d = tve.join(inf, on=keys).join(ks, on=keys)
    r_inf, speed = (d.images_per_s / d.inf).dropna(), (d.images_per_s / d.ks).dropna()
    n_ok = int((r_inf >= INFERENCE_RATIO).sum() + (speed >= SPEEDUP_OK).sum())
    parts = []
    if len(r_inf):
        parts.append(f"TVE / inference throughput ≥ {INFERENCE_RATIO:.2f} in {int((r_inf >= INFERENCE_RATIO).sum())}/"
                     f"{len(r_inf)} rows (median {r_inf.median():.2f}, min {r_inf.min():.2f})")
    if len(speed):
        budgets = ", ".join(str(int(b)) for b in sorted(d.ks_budget.dropna().unique()))
        parts.append(f"TVE ≥ {SPEEDUP_OK:g}× KernelSHAP at the largest budget timed beside it (budget {budgets}) in "
                     f"{int((speed >= SPEEDUP_OK).sum())}/{len(speed)} rows (median {speed.median():.0f}×, "
                     f"min {speed.min():.0f}×)")
    n_max = int(tp[tp.method == "tve"].n_tasks.max())
    if n_max > 1:
        tk = keys + ["tve_arch"]
        j = tp[(tp.method == "tve") & (tp.n_tasks == n_max)].merge(tve[tk + ["ms_per_image"]], on=tk,
                                                                   suffixes=("", "_one"))
        if len(j):
            parts.append(f"{n_max} tasks cost TVE {(j.ms_per_image / j.ms_per_image_one).median():.2f}× one task "
                         "(median)")
    if "estimated" in d and d.estimated.astype(bool).any():
        parts.append("some rows are estimates (throughput.csv `estimated`)")
    return share_verdict(n_ok, len(r_inf) + len(speed)), "; ".join(parts) or "no comparable rows"


def claim_tve_no_training(t: dict[str, pd.DataFrame]) -> tuple[str, str]:
    """No downstream training: TVE zero-shot ≥ COMPETITIVE × the task-trained amortised explainer's Fid⁺ AUC."""
    (summary,) = need(t, "summary")
    s = main_summary(summary)
    s = s[s.metric == "fid_plus_auc"].pivot_table(index=["backbone", "task", "head"], columns="method",
                                                  values="value")
    if "tve" not in s or "fastshap" not in s:
        raise MissingData("fidelity/summary.csv lacks tve or fastshap fid_plus_auc rows")
    s = s[["tve", "fastshap"]].dropna()
    ok = sum(_competitive(a, b) for a, b in zip(s.tve, s.fastshap))
    ratio = (s.tve / s.fastshap).where(s.fastshap > 0)
    higher = int((s.tve > s.fastshap).sum())
    ev = (f"TVE (never trained on the task) ≥ {COMPETITIVE:g}× the Fid⁺ AUC of the explainer trained on each task in "
          f"{ok}/{len(s)} settings (median ratio {ratio.median():.2f}; TVE higher in {higher})")
    if "pretrain" in t:
        pre = t["pretrain"]
        ev += (f"; TVE was pre-trained once per backbone, on the upstream set only ({pre.backbone.nunique()} "
               f"backbones, {int(pre.epoch.max())} epochs)")
    return share_verdict(ok, len(s)), ev


def claim_tve_transfer(t: dict[str, pd.DataFrame], unseen: Sequence[str] = UNSEEN_TASKS) -> tuple[str, str]:
    """Small transfer error: median Spearman ≥ SPEARMAN_OK per setting, the unseen domain included."""
    (err,) = need(t, "transfer")
    e = err[err.rule == "whole_head"] if "rule" in err else err.assign(rule="whole_head")
    if e.empty:
        raise MissingData("tve/transfer_error.csv has no whole-head rows")
    # notebook 02's summary: the medians and their bootstrap intervals have one home
    s = transfer_summary(e).set_index(["backbone", "task", "head"])
    med = s.median_spearman
    ok = int((med >= SPEARMAN_OK).sum())
    tasks = med.index.get_level_values("task")
    parts = [f"median Spearman ≥ {SPEARMAN_OK:g} in {ok}/{len(med)} backbone × task × head settings"]
    groups = (("seen-domain tasks", ~tasks.isin(unseen)),
              (f"unseen domain ({', '.join(sorted(set(tasks[tasks.isin(unseen)])))})", tasks.isin(unseen)))
    for name, sel in groups:
        if sel.any():
            parts.append(f"{name}: medians {med[sel].min():.2f} to {med[sel].max():.2f}, "
                         f"{int((med[sel] >= SPEARMAN_OK).sum())}/{int(sel.sum())} pass")
    if ok < len(med):
        # the verdict stays on the medians; the interval says which misses a new draw of test images could undo
        below = int((s.median_spearman_high[med < SPEARMAN_OK] < SPEARMAN_OK).sum())
        parts.append(f"{below} of the {len(med) - ok} misses stay below {SPEARMAN_OK:g} across the 95 % bootstrap "
                     "interval of their median over the test images")
    return share_verdict(ok, len(med)), "; ".join(parts)


# ----------------------------------------------------------------------------- LTX (notebook 05)
def finetune_claim(summary: pd.DataFrame) -> pd.DataFrame:
    """Per metric and selection: does LTX improve on pLTX? ``n_settings, n_better, mean_gain``.

    ``gain`` = LTX − pLTX oriented so that positive is better (``DIRECTION``).
    """
    keys = ["backbone", "task", "head", "metric"]
    d = summary[summary.metric.isin(list(DIRECTION))]
    p = d[d.method == "pltx"].set_index(keys)["value"].rename("pltx")
    rows = []
    for sel in SELECTIONS:
        lt = d[(d.method == "ltx") & (d.selection == sel)].set_index(keys)["value"].rename("ltx")
        j = pd.concat([p, lt], axis=1, join="inner").reset_index()
        if not len(j):
            continue
        j["gain"] = (j.ltx - j.pltx) * j.metric.map(DIRECTION)
        for metric, g in j.groupby("metric"):
            rows.append(dict(selection=sel, metric=metric, n_settings=len(g), n_better=int((g.gain > 0).sum()),
                             n_worse=int((g.gain < 0).sum()), mean_gain=g.gain.mean(), mean_pltx=g.pltx.mean(),
                             mean_ltx=g.ltx.mean()))
    return pd.DataFrame(rows)


def ltx_verdict(claim: pd.DataFrame, selection: str = "loss") -> str:
    """The LTX claim rule on `finetune_claim` rows of one ``selection``: "reproduces" when LTX is better
    than pLTX in at least ``LTX_MAJORITY`` of the settings on a majority of the metrics, "does not
    reproduce" when it is better in at most ``1 - LTX_MAJORITY`` on a majority, "partly" otherwise."""
    c = claim[claim.selection == selection]
    if not len(c):
        return "not measured"
    share, n = c.n_better / c.n_settings, len(c)
    if (share >= LTX_MAJORITY).sum() > n / 2:
        return "reproduces"
    return "does not reproduce" if (share <= 1 - LTX_MAJORITY).sum() > n / 2 else "partly"


def claim_verdict(claim: pd.DataFrame, selection: str = "loss") -> str:
    """One sentence with the numbers and `ltx_verdict`: does per-instance fine-tuning improve on pLTX?"""
    c = claim[claim.selection == selection]
    if not len(c):
        return f"no LTX ({selection}) rows to judge the claim"
    parts = [f"{r.metric}: better in {r.n_better}/{r.n_settings} (mean gain {r.mean_gain:+.3g})"
             for r in c.itertuples()]
    return (f"With selection={selection}, the claim that per-instance fine-tuning improves on the pre-trained "
            f"explainer: {ltx_verdict(claim, selection)} (" + "; ".join(parts) + ").")


def claim_ltx(t: dict[str, pd.DataFrame]) -> tuple[str, str]:
    """Per-instance fine-tuning improves on pLTX: `ltx_verdict` of `finetune_claim` with selection=loss."""
    (summary,) = need(t, "summary")
    d = ltx_rows(summary)
    if not (d.method == "ltx").any():
        raise MissingData("no LTX rows (with a 'selection') in fidelity/summary.csv")
    c = finetune_claim(d)
    loss = c[c.selection == "loss"] if len(c) else c
    if loss.empty:
        raise MissingData("no LTX rows with selection=loss beside pLTX rows")
    verdict = ltx_verdict(loss, "loss")
    ev = "; ".join(f"{r.metric}: better in {r.n_better}/{r.n_settings} (mean gain {r.mean_gain:+.3g})"
                   for r in loss.itertuples())
    tm = c[c.selection == "test_metric"]
    if len(tm):
        ev += (f" [official test-metric selection, reported apart: better in {int(tm.n_better.sum())}/"
               f"{int(tm.n_settings.sum())} metric × setting pairs]")
    return verdict, ev


# ----------------------------------------------------------------------------- throughput (notebook 04)
def target_checks(df: pd.DataFrame, overhead: pd.DataFrame | None = None,
                  kernelshap_budget: int = 1000) -> pd.DataFrame:
    """The issue's targets per backbone, size and batch size: ``target, backbone, size, batch_size,
    tve_arch, value, threshold, op, met, estimated`` (``estimated`` when an input row was)."""
    one = df[df.n_tasks == 1]
    keys = ["device", "backbone", "size", "batch_size"]
    tve = one[one.method == "tve"]
    ks = one[(one.method == "kernelshap") & (one.budget == kernelshap_budget)]
    out = []

    def add(target: str, r: pd.Series, value: float, est: bool, op: str, thr: float) -> None:
        met = value >= thr if op == ">=" else value <= thr
        out.append(dict(target=target, backbone=r.backbone, size=r["size"], batch_size=int(r.batch_size),
                        tve_arch=r.get("tve_arch", NO_ARCH), value=value, threshold=thr, op=op,
                        met=bool(met), estimated=bool(est)))

    m = tve.merge(ks[keys + ["images_per_s", "estimated"]], on=keys, suffixes=("", "_ks"))
    for _, r in m.iterrows():
        add(f"tve_over_kernelshap{kernelshap_budget}", r, r.images_per_s / r.images_per_s_ks,
            r.estimated or r.estimated_ks, ">=", TARGETS["tve_over_kernelshap"])
    for _, r in tve.iterrows():
        add("tve_ratio_to_inference", r, r.ratio_to_inference, r.estimated, ">=", TARGETS["tve_ratio_to_inference"])
        if r.tve_arch == "shared":
            add("tve_shared_ratio_to_inference (aim)", r, r.ratio_to_inference, r.estimated, ">=",
                TARGETS["tve_shared_ratio_to_inference"])
    tasks = df[df.method == "tve"]
    n_max = tasks.n_tasks.max() if len(tasks) else 1
    if n_max > 1:
        tk = keys + ["tve_arch"]
        many = tasks[tasks.n_tasks == n_max].merge(tasks[tasks.n_tasks == 1][tk + ["ms_per_image", "estimated"]],
                                                   on=tk, suffixes=("", "_one"))
        for _, r in many.iterrows():
            add(f"tve_{n_max}_tasks_over_1", r, r.ms_per_image / r.ms_per_image_one, r.estimated or r.estimated_one,
                "<=", TARGETS["tve_tasks_cost"])
    if overhead is not None and len(overhead):
        ko = overhead[(overhead.method == "kernelshap") & (overhead.budget == kernelshap_budget)]
        for _, r in ko.iterrows():
            add(f"kernelshap{kernelshap_budget}_overhead", r, r.overhead, r.estimated, "<=",
                TARGETS["kernelshap_overhead"])
    cols = ["target", "backbone", "size", "batch_size", "tve_arch", "value", "threshold", "op", "met", "estimated"]
    return pd.DataFrame(out, columns=cols)


# ----------------------------------------------------------------------------- the claims table (notebook 07)
_SHARE = "all → reproduces, ≥ half → partly, fewer → does not"


def claims_table(tables: dict[str, pd.DataFrame], profile: Profile | None = None,
                 unseen: Sequence[str] = UNSEEN_TASKS) -> pd.DataFrame:
    """One row per seed claim with its verdict (one of ``VERDICTS``), the numbers and the rule."""
    specs = [
        ("tve_fidelity", "TVE", "competitive fidelity against the baselines", claim_tve_fidelity,
         f"per backbone × task × head (fidelity/per_image.csv): TVE's mean Fid⁺ AUC ≥ {COMPETITIVE:g}× every other "
         f"method's on the same images, and above {', '.join(WEAK_BASELINES)} (notebook 03's check); share of "
         f"settings passing: {_SHARE}"),
        ("tve_latency", "TVE", "favourable latency / throughput", claim_tve_latency,
         f"per device × size × backbone × batch size, one task (throughput/throughput.csv): TVE ≥ "
         f"{INFERENCE_RATIO:.2f}× the backbone's inference throughput, and ≥ {SPEEDUP_OK:g}× KernelSHAP at the "
         f"largest budget timed beside it; share of checks passing: {_SHARE}"),
        ("tve_no_training", "TVE", "no training on downstream data needed", claim_tve_no_training,
         f"per setting: TVE's zero-shot Fid⁺ AUC ≥ {COMPETITIVE:g}× that of the amortised explainer trained on the "
         f"task (fastshap); {_SHARE}"),
        ("tve_transfer", "TVE", "small transfer error, an unseen domain included",
         lambda tt: claim_tve_transfer(tt, unseen),
         f"per backbone × task × head (tve/transfer_error.csv, whole-head rule): median Spearman of TVE's map with "
         f"the exact window quantity ≥ {SPEARMAN_OK:g}; {_SHARE}"),
        ("ltx_finetune", "LTX", "per-instance fine-tuning improves on the pre-trained explainer (pLTX)", claim_ltx,
         f"selection=loss (fidelity/summary.csv): LTX better than pLTX in ≥ {LTX_MAJORITY:.2g} of the settings on a "
         f"majority of metrics → reproduces; in ≤ {1 - LTX_MAJORITY:.2g} on a majority → does not; else partly"),
    ]
    rows = []
    for cid, method, claim, fn, rule in specs:
        try:
            verdict, ev = fn(tables)
        except MissingData as e:
            verdict, ev = "not measured", str(e)
        rows.append(dict(id=cid, method=method, claim=claim, verdict=verdict, evidence=ev, rule=rule))
    budget = (profile.xvec if profile is not None else XVecConfig()).compare_budget
    xspecs = [  # the claim is the paper's (its KernelSHAP-150); the rule uses the profile's budget
        ("xvec_quality", "1 ", "quality comparable to KernelSHAP-150 from one inference",
         f"per backbone × target: at λ*, xvec at least as good as KernelSHAP-{budget} on the same model, or their 95 % "
         "intervals overlap, on a majority of Fid⁺/Fid⁻/insertion/deletion AUC and Shapley agreement"),
        ("xvec_accuracy", "2 ", "no real accuracy loss",
         "per backbone × target: accuracy(λ*) − accuracy(λ=0) ≥ −max_acc_drop (profile xvec config)"),
        ("xvec_domain", "3 ", "transfer fails between less-related domains",
         "per backbone × less-related target: the Shapley-agreement gain of λ* over λ=0 is at most the smallest "
         "gain on the related targets"),
    ]
    try:
        xc, xerr = xvec_claims(tables, profile), ""
    except MissingData as e:
        xc, xerr = None, str(e)
    for cid, prefix, claim, rule in xspecs:
        sub = xc[xc.claim.str.startswith(prefix)] if xc is not None else None
        if sub is None or sub.empty:
            verdict, ev = "not measured", xerr or "no target of this kind in xvec/comparison.csv"
        else:
            verdict = share_verdict(int(sub.reproduced.astype(bool).sum()), len(sub))
            ev = "; ".join(f"{r.backbone}/{r.task}: {r.evidence}" for r in sub.itertuples())
        rows.append(dict(id=cid, method="explainability vector", claim=claim, verdict=verdict, evidence=ev,
                         rule=f"{rule} (tve_lib.report.claims.xvec_target_claims); {_SHARE}"))
    out = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    ops = claim_operators(tables)
    out["operators"] = [ops.get(cid, "") for cid in out.id]
    return out


#: the fidelity claims the removal-operator study (notebook 03c) re-decides under each operator
OPERATOR_RULES = {"tve_fidelity": claim_tve_fidelity, "tve_no_training": claim_tve_no_training}
#: fidelity claims on methods of notebooks 05/06, which the study does not score again
NOT_OPERATOR_STUDIED = ("ltx_finetune", "xvec_quality")


def claim_operators(tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Per fidelity claim: whether its verdict holds under every removal operator (notebook 03c's
    ``fidelity/operators_per_image.csv``), or the operators under which it changes."""
    if "operators_per_image" not in tables:
        return {}
    out = operator_robustness(operator_verdicts(tables["operators_per_image"], OPERATOR_RULES))
    return out | {cid: "not studied (notebook 03c scores notebook 03's methods)" for cid in NOT_OPERATOR_STUDIED}
