"""The report: every figure of the suite from ``results/<profile>/**.csv`` alone, the claims table, REPORT.md.

Notebook 07 (and ``run_all.sh --figures-only``) calls this module; no model is loaded, so it runs in
seconds. Each figure has a stable file stem under ``results/<profile>/figures/`` (PNG and PDF; see
``FIGURES``). A figure whose CSV is missing or empty is skipped with a printed note, so the report
is built from whatever subset of notebooks 00–06 has run. The per-notebook figure builders live
with their notebooks' code (`fidelity_plots`, `bench`, `ltx`, `plots`); this module selects their
rows from the shared CSVs and adds the overview figures.

The claims table (`claims_table`) decides, for each claim of the seed papers, "reproduces",
"partly" or "does not reproduce" ("not measured" when its CSV is missing) by an explicit rule on
the CSV numbers, written beside the verdict with the numbers behind it. Thresholds are the module
constants below. Where a rule counts settings (backbone × task × head, or device × size × backbone
× batch size), `share_verdict` maps the share of settings that pass to a verdict: all of them →
reproduces, at least half → partly, fewer → does not reproduce.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .io import atomic_path, write_csv
from .plots import accuracy_bars, loss_curves, savefig

if TYPE_CHECKING:
    from .config import Profile

#: table key -> CSV path under results/<profile>/ (written by notebooks 00–06)
TABLES = {
    "accuracy": "accuracy.csv",
    "pretrain": "tve/pretrain.csv",
    "scaling": "tve/scaling.csv",
    "transfer": "tve/transfer_error.csv",
    "curves": "fidelity/curves.csv",
    "summary": "fidelity/summary.csv",
    "per_image": "fidelity/per_image.csv",
    "ablations": "fidelity/ablations.csv",
    "amortized": "fidelity/amortized.csv",
    "throughput": "throughput/throughput.csv",
    "sweep": "xvec/lambda_sweep.csv",
    "ltx_trajectory": "ltx/trajectory.csv",
    "xvec_comparison": "xvec/comparison.csv",
}
HEADS = ("linear", "mlp")
#: methods of notebooks 05/06 that append to fidelity/summary.csv beside notebook 03's
PEER_METHODS = ("pltx", "ltx", "xvec", "xvec_upper")

# ---- thresholds of the claim rules (each rule's text repeats them)
COMPETITIVE = 0.9  # "competitive": at least this fraction of the reference's Fidelity⁺ AUC
WEAK_BASELINES = ("random", "gradcam", "rollout")  # TVE must also beat these (notebook 03's check)
SPEARMAN_OK = 0.85  # "small transfer error": median Spearman with the exact quantity (notebook 02's target)
# ---- the convergence targets of TVE pre-training on the cpu profile (notebooks 01, 02, 03b)
TOPK_OK = 0.6  # mean top-10 % overlap with the exact window quantity
HELDOUT_RATIO_OK = 0.15  # held-out MSE / the trivial predictor's, both branches pooled, per backbone
PRETRAIN_SECONDS_OK = 300.0  # pre-training per backbone on the 2-core machine, target store included
FID_RATIO_MEDIAN_OK, FID_RATIO_WORST_OK = 0.97, 0.93  # TVE / window occlusion Fid⁺ AUC, paired
INFERENCE_RATIO = 1 / 3  # TVE costs a few forward passes: ≥ 1/3 of the backbone's inference throughput
SPEEDUP_OK = 10.0  # "favourable": ≥ 10× the throughput of KernelSHAP at its largest budget
LTX_MAJORITY = 2 / 3  # LTX better than pLTX in ≥ 2/3 of settings on a majority of metrics (as tve_lib.ltx)
#: downstream tasks from a domain the upstream set does not cover (the TVE claim's "unseen domain")
UNSEEN_TASKS = ("digits", "cifar10")
VERDICTS = ("reproduces", "partly", "does not reproduce", "not measured")


class MissingData(LookupError):
    """A figure or claim cannot be built: a CSV it needs is missing or lacks the rows."""


# ----------------------------------------------------------------------------- tables
def load_tables(root: str | Path, verbose: bool = True) -> dict[str, pd.DataFrame]:
    """Every CSV of ``TABLES`` that exists and has rows under ``root`` (= results/<profile>)."""
    root = Path(root)
    out, missing = {}, []
    for key, rel in TABLES.items():
        p = root / rel
        df = pd.read_csv(p) if p.exists() and p.stat().st_size > 0 else None
        if df is None or df.empty:
            missing.append(rel)
        else:
            out[key] = df
    if verbose and missing:
        print(f"note: not found under {root} (what needs them is skipped): {', '.join(missing)}")
    return out


def need(tables: dict[str, pd.DataFrame], *keys: str) -> list[pd.DataFrame]:
    """The named tables, or `MissingData` naming the CSVs that are absent."""
    absent = [TABLES.get(k, k) for k in keys if k not in tables]
    if absent:
        raise MissingData(f"{', '.join(absent)} missing")
    return [tables[k] for k in keys]


def _unset(df: pd.DataFrame, col: str) -> pd.Series:
    """True where ``col`` is empty (everywhere when the column is absent)."""
    if col not in df:
        return pd.Series(True, index=df.index)
    return df[col].isna() | (df[col].astype(str) == "")


def main_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Notebook 03's rows of a summary (curves, per-image) table: the methods on the linear / MLP heads, without
    the rows notebooks 05 (``selection`` set) and 06 (``lambda`` set, self-explaining heads) append."""
    d = summary[summary["head"].isin(HEADS) & ~summary.method.isin(PEER_METHODS)
                & _unset(summary, "selection") & _unset(summary, "lambda")]
    keys = [c for c in ("backbone", "task", "head", "method", "budget", "metric", "sparsity", "image", "seed")
            if c in d]
    return d.drop_duplicates(keys, keep="last")


def ltx_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Notebook 05's rows: every row with a ``selection`` (pLTX, LTX and the references it re-scores)."""
    if "selection" not in summary:
        return summary.iloc[:0]
    return summary[~_unset(summary, "selection")]


# ----------------------------------------------------------------------------- figures
def tve_check(t: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Notebook 03's acceptance check (`tve_lib.fidelity.tve_verdict`) on fidelity/per_image.csv: per
    backbone × task × head, TVE's Fid⁺ AUC over that of the strongest other method on the same images."""
    from .fidelity import tve_verdict

    (per_image,) = need(t, "per_image")
    v = tve_verdict(main_summary(per_image), "fid_plus_auc", WEAK_BASELINES, COMPETITIVE)
    if v.empty:
        raise MissingData("no TVE fid_plus_auc rows in fidelity/per_image.csv")
    return v


def fig_overview(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Figure 1: TVE's Fid⁺ AUC per backbone × task (linear heads) and its ratio to the strongest method."""
    v = tve_check(t)
    v = v[v["head"] == "linear"]
    if v.empty:
        raise MissingData("no TVE fid_plus_auc rows for linear heads in fidelity/per_image.csv")
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.8 + 0.9 * v.backbone.nunique()))
    val = v.pivot_table(index="backbone", columns="task", values="tve")
    sns.heatmap(val, annot=True, fmt=".3f", cmap="viridis", ax=axes[0])
    axes[0].set_title("TVE Fidelity⁺ AUC (↑)", fontsize=10)
    ratio = v.pivot_table(index="backbone", columns="task", values="ratio")
    label = v.assign(txt=[f"{r:.2f}\nvs {m}" for r, m in zip(v.ratio, v.worst_method)]).pivot(
        index="backbone", columns="task", values="txt").reindex(index=ratio.index, columns=ratio.columns)
    sns.heatmap(ratio, annot=label.to_numpy(), fmt="", cmap="RdYlGn", vmin=0.5, vmax=1.0, ax=axes[1],
                annot_kws={"fontsize": 8})
    axes[1].set_title(f"TVE / strongest other method, same images (competitive ≥ {COMPETITIVE:g})", fontsize=10)
    for ax in axes:
        ax.tick_params(axis="y", rotation=0)
        ax.tick_params(axis="x", rotation=0)
    fig.suptitle("TVE zero-shot fidelity per architecture × dataset (linear heads)", y=1.02)
    fig.tight_layout()
    return fig


def _auc_figure(metric: str) -> Callable[[dict[str, pd.DataFrame], Path], plt.Figure]:
    def build(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
        from .fidelity_plots import auc_bars

        (summary,) = need(t, "summary")
        s = main_summary(summary)
        if not ((s.metric == metric) & (s["head"] == "linear")).any():
            raise MissingData(f"no {metric} rows (linear heads) in fidelity/summary.csv")
        return auc_bars(s, metric, "linear")

    return build


def fig_fidelity_curves(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Fid⁺ against sparsity per method, task and backbone (linear heads)."""
    from .fidelity_plots import curve_panels

    (curves,) = need(t, "curves")
    c = main_summary(curves)
    if not ((c.metric == "fid_plus") & (c["head"] == "linear")).any():
        raise MissingData("no fid_plus curves (linear heads) in fidelity/curves.csv")
    return curve_panels(c, "fid_plus", "linear")


def fig_task_training(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Figure 3: the task-trained amortised explainer against epochs, TVE zero-shot as a line."""
    from .fidelity_plots import amortized_panels

    hist, summary = need(t, "amortized", "summary")
    if not (hist["head"] == "linear").any():
        raise MissingData(f"{TABLES['amortized']} has no rows for linear heads")
    return amortized_panels(hist, main_summary(summary), "linear")


def fig_ablations(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Figure 4: TVE variants (notebook 03b) on Fid⁺ AUC."""
    (abl,) = need(t, "ablations")
    if not (abl.metric == "fid_plus_auc").any():
        raise MissingData("fidelity/ablations.csv has no fid_plus_auc rows")
    if "ablation" in abl:
        from .fidelity_plots import ablation_bars

        return ablation_bars(abl, "fid_plus_auc")
    d = abl[abl.metric == "fid_plus_auc"]
    g = sns.catplot(data=d, x="value", y="variant", hue="task", kind="bar", errorbar=None, height=3.5, aspect=1.4)
    g.set_axis_labels("fid_plus_auc", "")
    return g.figure


def _throughput(t: dict[str, pd.DataFrame]) -> pd.DataFrame:
    from .bench import throughput_frame

    (tp,) = need(t, "throughput")
    return throughput_frame(tp)


def fig_throughput(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Figure 5: explanations per second per method and architecture."""
    from .bench import throughput_bars

    tp = _throughput(t)
    if not (tp.n_tasks == 1).any():
        raise MissingData("throughput/throughput.csv has no single-task rows")
    return throughput_bars(tp)


def fig_task_scaling(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Cost of explaining n tasks relative to one (TVE runs once; per-task explainers repeat)."""
    from .bench import task_scaling

    tp = _throughput(t)
    if not (tp.n_tasks > 1).any():
        raise MissingData("throughput/throughput.csv has no task-scaling rows (n_tasks > 1)")
    return task_scaling(tp)


def fig_transfer_error(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Spearman of TVE's map with the exact quantity it amortises, per task and backbone."""
    (err,) = need(t, "transfer")
    g = sns.catplot(data=err, x="task", y="spearman", hue="backbone", col="head",
                    row="rule" if "rule" in err else None, kind="box", height=3, aspect=1.4, fliersize=1)
    g.refline(y=SPEARMAN_OK, ls="--", c="gray")
    g.figure.suptitle(f"TVE transfer error (dashed: median target {SPEARMAN_OK:g})", y=1.02)
    return g.figure


def fig_accuracy(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    (acc,) = need(t, "accuracy")
    return accuracy_bars(acc)


def fig_pretrain(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    (pre,) = need(t, "pretrain")
    return loss_curves(pre)


def fig_ltx(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """LTX vs pLTX, TVE and KernelSHAP (notebook 05's rows; hatched: the test-metric selection)."""
    from .ltx import comparison_figure

    (summary,) = need(t, "summary")
    d = ltx_rows(summary)
    if not (d.method == "ltx").any():
        raise MissingData("no LTX rows (with a 'selection') in fidelity/summary.csv")
    return comparison_figure(d)


def fig_ltx_trajectory(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """LTX fine-tuning: loss and POS-AUC per step, and the steps each selection keeps."""
    from .ltx import trajectory_figure

    (traj,) = need(t, "ltx_trajectory")
    return trajectory_figure(traj)


def fig_xvec(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Explainability vector: target-test accuracy and explanation quality against λ."""
    (sweep,) = need(t, "sweep")
    d = sweep[sweep.split == "test"] if "split" in sweep else sweep
    metrics = [m for m in ("accuracy", "fid_plus_auc", "fid_minus_auc", "shapley_spearman", "mass_in_region")
               if m in set(d.metric)]
    d = d[d.metric.isin(metrics)]
    if d.empty:
        raise MissingData("xvec/lambda_sweep.csv has no target-test rows")
    g = sns.relplot(data=d, x="lambda", y="value", hue="task", style="backbone", col="metric", col_order=metrics,
                    col_wrap=min(3, len(metrics)), kind="line", marker="o", errorbar=None, height=2.8, aspect=1.2,
                    facet_kws={"sharey": False})
    g.set_titles("{col_name}")
    g.figure.suptitle("Explainability vector θ_target + λτ against λ (target test sets)", y=1.02)
    return g.figure


def fig_xvec_compare(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """At the chosen λ: the vector-equipped model vs λ = 0, KernelSHAP-150, the upper bound and TVE."""
    (comp,) = need(t, "xvec_comparison")
    metrics = [m for m in ("accuracy", "fid_plus_auc", "fid_minus_auc", "shapley_spearman") if m in set(comp.metric)]
    d = comp[comp.metric.isin(metrics)]
    if d.empty or "label" not in d:
        raise MissingData("xvec/comparison.csv has no labelled metric rows")
    g = sns.catplot(data=d, x="value", y="label", hue="task", col="metric", col_order=metrics, row="backbone",
                    kind="bar", errorbar=None, height=2.6, aspect=1.5, sharex=False)
    g.set_titles("{row_name} · {col_name}")
    g.set_axis_labels("", "")
    g.figure.suptitle("Explainability vector at λ* against its references", y=1.02)
    return g.figure


def gallery_files(root: Path) -> list[Path]:
    """Every explanation gallery the notebooks saved under ``root/figures`` (not the report's own)."""
    return sorted(p for p in (root / "figures").glob("*gallery*.png") if not p.stem.startswith("fig"))


def fig_galleries(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Notebook 03's galleries (every method) of one backbone, one per task, tiled from their PNGs
    (notebook 02's TVE galleries when 03 has not run); no model is run here."""
    pngs = [p for p in gallery_files(root) if p.stem.startswith("03_gallery_")]
    if pngs:
        first = sorted(p.stem.removeprefix("03_gallery_").split("_")[0] for p in pngs)[0]
        pngs = [p for p in pngs if p.stem.startswith(f"03_gallery_{first}_")]
    else:
        pngs = [p for p in gallery_files(root) if p.stem.startswith("02_gallery_")]
    if not pngs:
        raise MissingData("no 03_gallery_*.png or 02_gallery_*.png under figures/")
    imgs = [plt.imread(p) for p in pngs]
    ratios = [i.shape[0] / i.shape[1] for i in imgs]
    fig, axes = plt.subplots(len(imgs), 1, figsize=(10, 10 * sum(ratios) + 0.4 * len(imgs)),
                             gridspec_kw={"height_ratios": ratios}, squeeze=False)
    for ax, img, p in zip(axes[:, 0], imgs, pngs):
        ax.imshow(img)
        ax.set_axis_off()
        ax.set_title(p.stem, fontsize=9)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class FigureSpec:
    """One report figure: its stable file stem, title, caption and builder ``(tables, root) -> Figure``."""

    name: str
    title: str
    caption: str
    build: Callable[[dict[str, pd.DataFrame], Path], plt.Figure]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig1_tve_overview", "Figure 1 · TVE's fidelity per architecture × dataset",
               "Fidelity⁺ AUC of TVE's zero-shot maps (linear heads) and its ratio to the strongest other method of "
               "notebook 03 on the same images (sampling methods at large budgets run on a subset).", fig_overview),
    FigureSpec("fig2a_fid_plus_auc", "Figure 2a · Fidelity⁺ AUC per method and dataset",
               "Higher is better; bars are means over images with 95 % bootstrap intervals, TVE in red; sampling "
               "methods carry their budget of model calls per image.", _auc_figure("fid_plus_auc")),
    FigureSpec("fig2b_fid_minus_auc", "Figure 2b · Fidelity⁻ AUC per method and dataset", "Lower is better.",
               _auc_figure("fid_minus_auc")),
    FigureSpec("fig2c_fidelity_curves", "Figure 2c · Fidelity⁺ against sparsity",
               "The curves Figure 2a integrates (linear heads).", fig_fidelity_curves),
    FigureSpec("fig3_task_training_vs_zero_shot", "Figure 3 · Task-specific training vs zero-shot transfer",
               "Training loss and Fidelity⁺ AUC of the FastSHAP-style explainer trained on each task against epochs; "
               "dashed: TVE, never trained on the task. The per-epoch AUC uses that explainer's own evaluation "
               "images.", fig_task_training),
    FigureSpec("fig4_ablations", "Figure 4 · Ablations", "TVE variants of notebook 03b on Fidelity⁺ AUC.",
               fig_ablations),
    FigureSpec("fig5_throughput", "Figure 5 · Throughput per architecture",
               "Explanations per second per method (one task); `inference` is the backbone's own forward pass.",
               fig_throughput),
    FigureSpec("fig5b_task_scaling", "Figure 5b · Task scaling",
               "Cost of explaining the same images for n downstream tasks over one task.", fig_task_scaling),
    FigureSpec("fig6_galleries", "Figure 6 · Explanation galleries",
               "Every method's map on the first test images of each task (red: evidence for the predicted class).",
               fig_galleries),
    FigureSpec("fig7_ltx", "Figure 7 · LTX vs pLTX, TVE and KernelSHAP",
               "Hatched: LTX with the official step selection by the test metric (reported, never ranked).", fig_ltx),
    FigureSpec("fig7b_ltx_finetuning", "Figure 7b · LTX per-instance fine-tuning",
               "Mean training loss and POS-AUC (with the label) per fine-tuning step from pLTX (step 0), and the share "
               "of images each step selection stops at.", fig_ltx_trajectory),
    FigureSpec("fig8a_xvec_lambda", "Figure 8a · Explainability vector against λ",
               "Target-test accuracy and explanation quality of θ_target + λτ.", fig_xvec),
    FigureSpec("fig8b_xvec_comparison", "Figure 8b · Explainability vector at λ*",
               "λ* chosen on source validation data; KernelSHAP-150 explains the same vector-equipped model.",
               fig_xvec_compare),
    FigureSpec("figA_transfer_error", "Figure A · TVE transfer error",
               "Per-image Spearman correlation of TVE's map with the exact quantity it amortises.", fig_transfer_error),
    FigureSpec("figB_accuracy", "Figure B · Accuracy of the explained models", "Test accuracy per backbone and head.",
               fig_accuracy),
    FigureSpec("figC_pretrain", "Figure C · TVE pre-training", "Keep- and remove-branch losses per epoch.",
               fig_pretrain),
)


def figure_spec(name: str) -> FigureSpec:
    for f in FIGURES:
        if f.name == name:
            return f
    raise KeyError(f"unknown figure {name!r}; expected one of: {', '.join(f.name for f in FIGURES)}")


# ----------------------------------------------------------------------------- claims
def share_verdict(n_ok: int, n: int) -> str:
    """All settings pass → reproduces; at least half → partly; fewer → does not reproduce."""
    if n == 0:
        return "not measured"
    if n_ok == n:
        return "reproduces"
    return "partly" if n_ok >= n / 2 else "does not reproduce"


def _competitive(value: float, ref: float) -> bool:
    return value >= COMPETITIVE * ref if ref > 0 else value >= ref


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
    e = err[err.rule == "whole_head"] if "rule" in err else err
    med = e.groupby(["backbone", "task", "head"]).spearman.median()
    if med.empty:
        raise MissingData("tve/transfer_error.csv has no whole-head rows")
    ok = int((med >= SPEARMAN_OK).sum())
    tasks = med.index.get_level_values("task")
    parts = [f"median Spearman ≥ {SPEARMAN_OK:g} in {ok}/{len(med)} backbone × task × head settings"]
    groups = (("seen-domain tasks", ~tasks.isin(unseen)),
              (f"unseen domain ({', '.join(sorted(set(tasks[tasks.isin(unseen)])))})", tasks.isin(unseen)))
    for name, sel in groups:
        if sel.any():
            parts.append(f"{name}: medians {med[sel].min():.2f} to {med[sel].max():.2f}, "
                         f"{int((med[sel] >= SPEARMAN_OK).sum())}/{int(sel.sum())} pass")
    return share_verdict(ok, len(med)), "; ".join(parts)


def claim_ltx(t: dict[str, pd.DataFrame]) -> tuple[str, str]:
    """Per-instance fine-tuning improves on pLTX: `tve_lib.ltx.finetune_claim` with selection=loss."""
    from .ltx import finetune_claim

    (summary,) = need(t, "summary")
    d = ltx_rows(summary)
    if not (d.method == "ltx").any():
        raise MissingData("no LTX rows (with a 'selection') in fidelity/summary.csv")
    c = finetune_claim(d)
    loss = c[c.selection == "loss"] if len(c) else c
    if loss.empty:
        raise MissingData("no LTX rows with selection=loss beside pLTX rows")
    share, n = loss.n_better / loss.n_settings, len(loss)
    verdict = ("reproduces" if (share >= LTX_MAJORITY).sum() > n / 2 else
               "does not reproduce" if (share <= 1 - LTX_MAJORITY).sum() > n / 2 else "partly")
    ev = "; ".join(f"{r.metric}: better in {r.n_better}/{r.n_settings} (mean gain {r.mean_gain:+.3g})"
                   for r in loss.itertuples())
    tm = c[c.selection == "test_metric"]
    if len(tm):
        ev += (f" [official test-metric selection, reported apart: better in {int(tm.n_better.sum())}/"
               f"{int(tm.n_settings.sum())} metric × setting pairs]")
    return verdict, ev


def xvec_claims(t: dict[str, pd.DataFrame], profile: Profile | None = None) -> pd.DataFrame:
    """`tve_lib.xvec.claims` recomputed from xvec/comparison.csv and xvec/lambda_sweep.csv, per backbone
    (λ* read from the comparison's KernelSHAP rows): ``claim, task, evidence, reproduced, backbone``."""
    from .config import XVecConfig
    from .xvec import SELF_HEAD, claims

    comp, sweep = need(t, "xvec_comparison", "sweep")
    cfg = profile.xvec if profile is not None else XVecConfig()
    sw = sweep[sweep.split == "test"] if "split" in sweep else sweep
    frames = []
    for b, c in comp.groupby("backbone"):
        lam = c[(c.method == "kernelshap") & (c["head"] == SELF_HEAD)]["lambda"].dropna()
        if len(lam):
            frames.append(claims(c, sw[sw.backbone == b], float(lam.iloc[0]), cfg).assign(backbone=b))
    if not frames:
        raise MissingData("xvec/comparison.csv has no KernelSHAP rows at λ*")
    return pd.concat(frames, ignore_index=True)


CLAIM_COLUMNS = ["id", "method", "claim", "verdict", "evidence", "rule"]
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
    xspecs = [
        ("xvec_quality", "1 ", "quality comparable to KernelSHAP-150 from one inference",
         "per backbone × target: at λ*, xvec at least as good as KernelSHAP-150 on the same model, or their 95 % "
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
                         rule=f"{rule} (tve_lib.xvec.claims); {_SHARE}"))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


# ----------------------------------------------------------------------------- the report
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
                      "shown (thresholds: `tve_lib/figures.py`; table: `claims.csv`).", "",
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
