"""The removal-operator study's report (notebook 03c), from ``fidelity/operators*.csv`` only.

`operator_agreement`: per backbone × task × head × metric, Kendall τ between the rankings of the
methods under each pair of operators. `operator_verdicts`: a fidelity claim's rule applied to the
rows of each operator (the rules are `tve_lib.report.claims`'; they are passed in, so this module
holds no threshold). `operator_robustness`: "holds under all operators" or the operators under which
a verdict changes. `operator_figure`, `operator_finding`: the figure and the prose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import combinations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from scipy.stats import kendalltau

from ..schema import AGREEMENT_COLUMNS, DIRECTION, method_label
from .plots import seaborn_boxes
from .tables import MissingData

SETTING = ["backbone", "task", "head"]


def _labelled(ops: pd.DataFrame) -> pd.DataFrame:
    d = ops.copy()
    d["label"] = [method_label(m, b) for m, b in zip(d.method, d.budget.fillna(0))]
    return d


def operator_agreement(ops: pd.DataFrame) -> pd.DataFrame:
    """Kendall τ (τ-b) between the method rankings of each pair of operators (``AGREEMENT_COLUMNS``).

    Ranked: the methods scored on every study image of the setting (a sampling method at a large
    budget, run on fewer images, is left out of the ranking; ``n_methods`` counts those ranked).
    """
    d = _labelled(ops)
    rows = []
    for (b, t, h, metric), g in d.groupby(SETTING + ["metric"], sort=False):
        g = g[g.n_images == g.n_images.max()]
        wide = g.pivot_table(index="label", columns="operator", values="value")
        for a, c in combinations(list(dict.fromkeys(g.operator)), 2):
            pair = wide[[a, c]].dropna()
            tau = kendalltau(pair[a], pair[c]).statistic if len(pair) >= 2 else float("nan")
            rows.append(dict(backbone=b, task=t, head=h, metric=metric, operator_a=a, operator_b=c,
                             kendall_tau=float(tau), n_methods=len(pair)))
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def operator_verdicts(per_image: pd.DataFrame, rules: Mapping[str, Callable[[dict], tuple[str, str]]]
                      ) -> pd.DataFrame:
    """Each claim rule (``{claim id: rule(tables) -> (verdict, evidence)}``) on the rows of each
    operator: the per-image values as ``per_image`` and their means as ``summary``."""
    rows = []
    keys = [c for c in ("backbone", "task", "head", "method", "budget", "metric", "seed") if c in per_image]
    for op, d in per_image.groupby("operator", sort=False):
        pi = d.drop(columns="operator")
        tables = {"per_image": pi, "summary": pi.groupby(keys, as_index=False).value.mean()}
        for cid, rule in rules.items():
            try:
                verdict, ev = rule(tables)
            except MissingData as e:
                verdict, ev = "not measured", str(e)
            rows.append(dict(id=cid, operator=op, verdict=verdict, evidence=ev))
    return pd.DataFrame(rows, columns=["id", "operator", "verdict", "evidence"])


def operator_robustness(verdicts: pd.DataFrame, reference: str = "mean") -> dict[str, str]:
    """Per claim id: "holds under all operators (…)" when every operator gives the verdict of
    ``reference``, else that verdict and the operators under which it changes."""
    out = {}
    for cid, g in verdicts.groupby("id", sort=False):
        by = dict(zip(g.operator, g.verdict))
        ops = ", ".join(by)
        base = by.get(reference)
        changed = [f"{op} ({v})" for op, v in by.items() if v != base]
        out[cid] = (f"holds under all operators ({ops}): {base}" if not changed else
                    f"{base} under {reference}; changes under {', '.join(changed)}")
    return out


def operator_figure(ops: pd.DataFrame, agreement: pd.DataFrame, head: str = "linear") -> plt.Figure:
    """Left: each method's mean AUC per operator (mean over backbones × tasks, ``head``), one row per
    metric; right: the distribution of Kendall τ over settings per operator pair and metric."""
    d = _labelled(ops[ops["head"] == head])
    d = d[d.n_images == d.groupby(SETTING + ["metric"]).n_images.transform("max")]
    metrics = list(dict.fromkeys(d.metric))
    fig, axes = plt.subplots(len(metrics), 2, figsize=(13, 2.6 * len(metrics)), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2, 1]})
    ag = agreement.assign(pair=agreement.operator_a + " vs " + agreement.operator_b)
    for i, metric in enumerate(metrics):
        sns.pointplot(data=d[d.metric == metric], x="label", y="value", hue="operator", ax=axes[i, 0],
                      dodge=0.3, linestyle="none", errorbar=None)
        arrow = "↑" if DIRECTION.get(metric, 1) > 0 else "↓"
        axes[i, 0].set(xlabel="", ylabel=f"{metric} {arrow}")
        axes[i, 0].tick_params(axis="x", rotation=30)
        with seaborn_boxes():
            sns.boxplot(data=ag[ag.metric == metric], x="kendall_tau", y="pair", ax=axes[i, 1], color="0.8")
        sns.stripplot(data=ag[ag.metric == metric], x="kendall_tau", y="pair", ax=axes[i, 1], size=3, jitter=False)
        axes[i, 1].set(xlim=(-1.05, 1.05), xlabel="Kendall τ of method rankings", ylabel="")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes[:, 0]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle(f"removal operators: method scores ({head} head, mean over settings) and ranking agreement "
                 "(all settings)", y=1.07)
    fig.tight_layout()
    fig.legend(handles, labels, title="operator", loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0),
               frameon=False)
    return fig


def operator_finding(agreement: pd.DataFrame, robustness: Mapping[str, str], n_images: int) -> str:
    """The study's finding in words, from the agreement table and `operator_robustness`."""
    if agreement.empty:
        raise MissingData("fidelity/operator_agreement.csv has no rows")
    parts = [f"On the first {n_images} evaluation images per task, "
             f"{agreement.groupby(SETTING).ngroups} backbone × task × head settings:"]
    for (a, c), g in agreement.groupby(["operator_a", "operator_b"], sort=False):
        per = g.groupby("metric").kendall_tau.median()
        worst = g.loc[g.kendall_tau.idxmin()]
        parts.append(f"- **{a} vs {c}**: median Kendall τ of the method rankings "
                     + ", ".join(f"{m} {v:.2f}" for m, v in per.items())
                     + f"; lowest {worst.kendall_tau:.2f} ({worst.backbone}/{worst.task}/{worst['head']}, "
                       f"{worst.metric}, {int(worst.n_methods)} methods).")
    parts += [f"- claim `{cid}`: {text}." for cid, text in robustness.items()]
    return "\n".join(parts)
