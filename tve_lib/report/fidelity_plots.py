"""Figures of notebooks 03 and 03b, built from the tidy fidelity CSVs only."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..schema import DIRECTION, continued_rows, method_label

CURVE_YLABEL = {"fid_plus": "Fidelity⁺ (↑)", "fid_minus": "Fidelity⁻ (↓)", "pos": "top-1 agreement, POS (↓)",
                "neg": "top-1 agreement, NEG (↑)", "deletion": "p(ŷ), deletion (↓)",
                "insertion": "p(ŷ), insertion (↑)"}


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    d = df.copy()
    d["label"] = [method_label(m, b) for m, b in zip(d.method, d.budget.fillna(0))]
    return d


def method_order(df: pd.DataFrame, metric: str = "fid_plus_auc") -> list[str]:
    """Method labels sorted by their mean ``metric`` (best first)."""
    d = _labelled(df[df.metric == metric])
    means = d.groupby("label").value.mean() * DIRECTION.get(metric, 1)
    return list(means.sort_values(ascending=False).index)


def method_palette(labels: list[str]) -> dict[str, tuple]:
    """TVE in crimson, every other method a distinct colour free of red."""
    others = [lab for lab in labels if lab != "tve"]
    cols = [c for i, c in enumerate(sns.color_palette("tab20", 20)) if i not in (6, 7)]
    pal = {lab: cols[i % len(cols)] for i, lab in enumerate(others)}
    pal["tve"] = (0.86, 0.08, 0.24)
    return pal


def auc_bars(summary: pd.DataFrame, metric: str = "fid_plus_auc", head: str = "linear") -> plt.Figure:
    """The paper's Figure 2 layout: one panel per task (columns) and backbone (rows), a bar per
    method with its 95 % bootstrap interval; TVE highlighted."""
    d = _labelled(summary[(summary.metric == metric) & (summary["head"] == head)])
    order = method_order(d, metric)
    tasks, bbs = list(dict.fromkeys(d.task)), list(dict.fromkeys(d.backbone))
    fig, axes = plt.subplots(len(bbs), len(tasks), figsize=(3.4 * len(tasks), 0.3 * len(order) * len(bbs) + 1),
                             squeeze=False, sharex="col")
    pal = method_palette(order)
    for i, b in enumerate(bbs):
        for j, t in enumerate(tasks):
            ax = axes[i, j]
            g = d[(d.backbone == b) & (d.task == t)].set_index("label").reindex(order).dropna(subset=["value"])
            colors = [pal[lab] for lab in g.index]
            err = [(g.value - g.ci_low).clip(lower=0).fillna(0), (g.ci_high - g.value).clip(lower=0).fillna(0)]
            ax.barh(g.index, g.value, xerr=err, color=colors, capsize=2)
            ax.invert_yaxis()
            ax.set_title(f"{t} · {b}", fontsize=9)
            if j:
                ax.set_yticklabels([])
    arrow = "↑" if DIRECTION.get(metric, 1) > 0 else "↓"
    fig.supxlabel(f"{metric} ({arrow}; {head} head)")
    fig.tight_layout()
    return fig


def curve_panels(curves: pd.DataFrame, metric: str = "fid_plus", head: str = "linear") -> plt.Figure:
    """Mean curves of every method: columns = task, rows = backbone."""
    d = _labelled(curves[(curves.metric == metric) & (curves["head"] == head)])
    order = sorted(d.label.unique(), key=lambda s: (s != "tve", s))
    d["is_tve"] = d.label.eq("tve").map({True: "TVE", False: "baseline"})
    g = sns.relplot(data=d, x="sparsity", y="value", hue="label", hue_order=order, palette=method_palette(order),
                    size="is_tve", sizes={"TVE": 3.0, "baseline": 1.2}, col="task", row="backbone",
                    kind="line", marker="o", markersize=3, height=2.6, aspect=1.2, seed=0,
                    facet_kws={"sharey": False})
    xlab = "sparsity s" if metric.startswith("fid") else "fraction of players removed / inserted"
    g.set_axis_labels(xlab, CURVE_YLABEL.get(metric, metric))
    return g.figure


def amortized_panels(history: pd.DataFrame, summary: pd.DataFrame, head: str = "linear") -> plt.Figure:
    """The paper's Figure 3: the task-specific amortised explainer's training loss and Fidelity⁺
    AUC against epochs, with TVE's zero-shot Fidelity⁺ AUC as a horizontal line."""
    h = history[history["head"] == head]
    combos = list(h.groupby(["backbone", "task"]).groups)
    fig, axes = plt.subplots(2, len(combos), figsize=(2.6 * len(combos), 4.6), squeeze=False, sharex=True)
    tve = summary[(summary.method == "tve") & (summary.metric == "fid_plus_auc") & (summary["head"] == head)]
    for j, (b, t) in enumerate(combos):
        g = h[(h.backbone == b) & (h.task == t)]
        axes[0, j].plot(g.epoch, g.loss, "o-", color="tab:blue")
        axes[0, j].set_yscale("log")
        axes[0, j].set_title(f"{t}\n{b}", fontsize=8)
        axes[1, j].plot(g.epoch, g.fid_plus_auc, "o-", color="tab:green", label="amortised (fastshap)")
        v = tve[(tve.backbone == b) & (tve.task == t)].value
        if len(v):
            axes[1, j].axhline(v.iloc[0], color="crimson", ls="--", label="TVE zero-shot")
        axes[1, j].set_xlabel("epoch")
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("Fidelity⁺ AUC")
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def metric_table(summary: pd.DataFrame, metrics: list[str], head: str | None = None) -> pd.DataFrame:
    """Wide table: rows backbone × task × method label, one column per metric (means)."""
    d = _labelled(summary[summary.metric.isin(metrics)])
    if head is not None:
        d = d[d["head"] == head]
    idx = ["backbone", "task"] + ([] if head is not None else ["head"]) + ["label"]
    return d.pivot_table(index=idx, columns="metric", values="value").reindex(columns=metrics).round(3)


def ablation_bars(ablations: pd.DataFrame, metric: str = "fid_plus_auc") -> plt.Figure:
    """One panel per ablated factor: the metric of each variant, per task (mean over heads)."""
    d = ablations[ablations.metric == metric]
    g = sns.catplot(data=d, x="value", y="variant", hue="task", col="ablation", col_wrap=3, kind="bar",
                    errorbar=None, height=2.6, aspect=1.3, sharey=False)
    g.set_axis_labels(metric, "")
    return g.figure


def scaling_curve(scaling: pd.DataFrame, target: float | None = None) -> plt.Figure:
    """Median transfer Spearman (and the worst setting's) against pre-training seconds, log x."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    # a continued budget (trained further from the profile's explainer) is its own series, not a point of the curve
    budget = scaling.sampler + " · " + scaling.arch + continued_rows(scaling).map({True: " · continued", False: ""})
    d = scaling.assign(budget=budget).sort_values("pretrain_seconds")
    # rows measured past the run's budgets (scaling_extended.csv) carry a "source" and are drawn apart
    style = "source" if "source" in d and d.source.nunique() > 1 else "backbone"
    for ax, col, title in ((axes[0], "transfer_spearman", "median over task × head settings"),
                           (axes[1], "transfer_spearman_min", "worst setting")):
        if col not in d:
            ax.axis("off")
            continue
        sns.lineplot(data=d, x="pretrain_seconds", y=col, hue="budget", style=style, marker="o", ax=ax, seed=0)
        if target is not None:
            ax.axhline(target, ls="--", c="gray")
        ax.set(xscale="log", xlabel="pre-training seconds (targets included, log)", ylabel="transfer Spearman",
               title=title)
    # one legend, the figure's, beside the panels: inside them it covered the curves' low-compute ends
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig
