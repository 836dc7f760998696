"""Every figure of the report, from ``results/<profile>/**.csv`` alone (`FIGURES`).

Notebook 07 (and ``run_all.sh --figures-only``) renders them through `tve_lib.report.book`; no
model is loaded, so it runs in seconds. Each figure has a stable file stem under
``results/<profile>/figures/`` (PNG and PDF). A figure whose CSV is missing or empty raises
`MissingData` and is skipped with a note, so the report is built from whatever subset of notebooks
00–06 has run. The per-notebook figure builders live beside this module (`fidelity_plots`,
`throughput`, `ltx`, `plots`); this module selects their rows from the shared CSVs and adds the
overview figures. The claim rules and thresholds are `tve_lib.report.claims`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..schema import TABLES
from .claims import COMPETITIVE, SPEARMAN_OK, tve_check
from .plots import accuracy_bars, loss_curves, seaborn_boxes
from .tables import MissingData, _throughput, ltx_rows, main_summary, need


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


def fig_throughput(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Figure 5: explanations per second per method and architecture."""
    from .throughput import throughput_bars

    tp = _throughput(t)
    if not (tp.n_tasks == 1).any():
        raise MissingData("throughput/throughput.csv has no single-task rows")
    return throughput_bars(tp)


def fig_task_scaling(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Cost of explaining n tasks relative to one (TVE runs once; per-task explainers repeat)."""
    from .throughput import task_scaling

    tp = _throughput(t)
    if not (tp.n_tasks > 1).any():
        raise MissingData("throughput/throughput.csv has no task-scaling rows (n_tasks > 1)")
    return task_scaling(tp)


def fig_transfer_error(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """Spearman of TVE's map with the exact quantity it amortises, per task and backbone."""
    (err,) = need(t, "transfer")
    return transfer_boxes(err)


def transfer_boxes(err: pd.DataFrame) -> plt.Figure:
    """Per-image Spearman (``tve/transfer_error.csv``) per task and backbone, a panel per head (and rule), with
    the target as a dashed line."""
    with seaborn_boxes():
        g = sns.catplot(data=err, x="task", y="spearman", hue="backbone", col="head",
                        row="rule" if "rule" in err else None, kind="box", height=3, aspect=1.4, fliersize=1)
    g.refline(y=SPEARMAN_OK, ls="--", c="gray")
    g.figure.suptitle(f"TVE transfer error (dashed: median target {SPEARMAN_OK:g})", y=1.02)
    return g.figure


def fig_accuracy(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """The heads' test accuracy per backbone and task (``accuracy.csv``)."""
    (acc,) = need(t, "accuracy")
    return accuracy_bars(acc)


def fig_pretrain(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """TVE's pre-training loss curves per backbone (``tve/pretrain.csv``)."""
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
    if not set(d.metric) & set(XVEC_SWEEP_METRICS):
        raise MissingData("xvec/lambda_sweep.csv has no target-test rows")
    fig = lambda_sweep_figure(d)
    fig.suptitle("Explainability vector θ_target + λτ against λ (target test sets)", y=1.02)
    return fig


XVEC_SWEEP_METRICS = ("accuracy", "fid_plus_auc", "fid_minus_auc", "shapley_spearman", "mass_in_region")


def lambda_sweep_figure(sweep: pd.DataFrame, chosen: Iterable[float] = ()) -> plt.Figure:
    """``xvec/lambda_sweep.csv`` rows: each metric of `XVEC_SWEEP_METRICS` that they hold (``mass_in_region``:
    tasks with known regions only) against λ, per task and backbone; a dashed line at each ``chosen`` λ."""
    metrics = [m for m in XVEC_SWEEP_METRICS if m in set(sweep.metric)]
    g = sns.relplot(data=sweep[sweep.metric.isin(metrics)], x="lambda", y="value", hue="task", style="backbone",
                    col="metric", col_order=metrics, col_wrap=min(3, len(metrics)), kind="line", marker="o",
                    errorbar=None, height=2.8, aspect=1.2, facet_kws={"sharey": False})
    g.set_titles("{col_name}")
    for lam in sorted(set(chosen)):
        g.refline(x=lam, ls="--", c="gray")
    return g.figure


def fig_xvec_compare(t: dict[str, pd.DataFrame], root: Path) -> plt.Figure:
    """At the chosen λ: the vector-equipped model vs λ = 0, KernelSHAP (``xvec.compare_budget``), the upper bound
    and TVE."""
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
               "Every method's map on the first test images of each task (red: players above the image's median "
               "player; each map scaled by the 99th percentile of its |values|).",
               fig_galleries),
    FigureSpec("fig7_ltx", "Figure 7 · LTX vs pLTX, TVE and KernelSHAP",
               "Hatched: LTX with the official step selection by the test metric (reported, never ranked).", fig_ltx),
    FigureSpec("fig7b_ltx_finetuning", "Figure 7b · LTX per-instance fine-tuning",
               "Mean training loss and POS-AUC (with the label) per fine-tuning step from pLTX (step 0), and the share "
               "of images each step selection stops at.", fig_ltx_trajectory),
    FigureSpec("fig8a_xvec_lambda", "Figure 8a · Explainability vector against λ",
               "Target-test accuracy and explanation quality of θ_target + λτ.", fig_xvec),
    FigureSpec("fig8b_xvec_comparison", "Figure 8b · Explainability vector at λ*",
               "λ* chosen on source validation data; KernelSHAP (the profile's `xvec.compare_budget` model calls) "
               "explains the same vector-equipped model.",
               fig_xvec_compare),
    FigureSpec("figA_transfer_error", "Figure A · TVE transfer error",
               "Per-image Spearman correlation of TVE's map with the exact quantity it amortises.", fig_transfer_error),
    FigureSpec("figB_accuracy", "Figure B · Accuracy of the explained models", "Test accuracy per backbone and head.",
               fig_accuracy),
    FigureSpec("figC_pretrain", "Figure C · TVE pre-training", "Keep- and remove-branch losses per epoch.",
               fig_pretrain),
)


def figure_spec(name: str) -> FigureSpec:
    """The paper figure called ``name``; a clear error listing the names otherwise."""
    for f in FIGURES:
        if f.name == name:
            return f
    raise KeyError(f"unknown figure {name!r}; expected one of: {', '.join(f.name for f in FIGURES)}")
