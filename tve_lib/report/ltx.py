"""Notebook 05's report from its tables: method rankings, the fine-tuning claim and its verdict, figures.

Reads the summary rows `tve_lib.studies.ltx.compare_task` writes (every row carries ``selection``:
``loss`` or ``test_metric`` for LTX, ``none`` otherwise) and ``ltx/trajectory.csv``'s rows.
Rows of the ``test_metric`` selection peek at the evaluation metric with the true label: they are
reported beside the rankings, never in them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..schema import DIRECTION, method_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _labels(d: pd.DataFrame) -> list[str]:
    return [method_label(m, b, s) for m, s, b in zip(d.method, d.selection, d.budget)]


def rank_methods(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean rank per method and metric over backbone × task × head (1 = best, by ``DIRECTION``).

    Rows of the ``test_metric`` selection are never ranked: that selection peeks at the
    evaluation metric with the true label, so it is reported beside the ranking only.
    """
    if "selection" not in summary:
        raise ValueError("summary rows need a 'selection' column (LTX rows record which selection ran)")
    d = summary[(summary.selection != "test_metric") & summary.metric.isin(list(DIRECTION))].copy()
    d["label"] = _labels(d)
    d["oriented"] = d.value * d.metric.map(DIRECTION)
    d["rank"] = d.groupby(["backbone", "task", "head", "metric"])["oriented"].rank(ascending=False)
    return d.groupby(["metric", "label"])["rank"].agg(["mean", "count"]).rename(
        columns={"mean": "mean_rank", "count": "n_settings"}).reset_index()


def comparison_figure(summary: pd.DataFrame, metrics: tuple[str, ...] = ("fid_plus_auc", "fid_minus_auc",
                                                                           "pos_auc", "neg_auc")) -> Figure:
    """Bars of each metric per method (hatched: the test_metric selection), one panel per metric."""
    import seaborn as sns

    d = summary[summary.metric.isin(metrics)].copy()
    d["label"] = _labels(d)
    d["setting"] = d.backbone + " / " + d.task
    g = sns.catplot(data=d, x="value", y="setting", hue="label", col="metric", kind="bar", col_wrap=2,
                    height=3.2, aspect=1.3, sharex=False, seed=0)
    for ax in g.axes.flat:
        for bar_group, lab in zip(ax.containers, d.label.unique()):  # hue order = order of appearance
            if "test_metric" in lab:
                for b in bar_group:
                    b.set_hatch("//")
    g.figure.suptitle("LTX vs pLTX, TVE and KernelSHAP (hatched: selected with the test metric)", y=1.02)
    return g.figure


def trajectory_figure(traj: pd.DataFrame) -> Figure:
    """Fine-tuning: mean training loss and POS-AUC per step, and where each selection stops."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = traj.copy()
    d["setting"] = d.backbone + " / " + d.task
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    sns.lineplot(data=d, x="step", y="loss", hue="setting", ax=axes[0], seed=0)
    axes[0].legend(fontsize=6, ncol=2)
    axes[0].set_title("training loss (mean over images)")
    sns.lineplot(data=d, x="step", y="pos_auc", hue="setting", ax=axes[1], legend=False, seed=0)
    axes[1].set_title("POS-AUC with the label (lower is better)")
    long = d.melt(id_vars=["step", "setting"], value_vars=[c for c in d if c.startswith("selected_")],
                  var_name="selection", value_name="share")
    long["selection"] = long.selection.str.removeprefix("selected_")
    sns.lineplot(data=long, x="step", y="share", hue="selection", ax=axes[2], errorbar=None)
    axes[2].set_title("share of images whose selected step is this one")
    fig.tight_layout()
    return fig
