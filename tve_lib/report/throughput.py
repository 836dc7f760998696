"""Notebook 04's table rules and figures, from ``throughput.csv`` rows alone (no model code).

* `TARGETS` are the issue's thresholds, as ratios within one run; `target_checks` checks them per
  backbone, size and batch size.
* `throughput_bars` (Figure 5 analogue), `batch_scaling` and `task_scaling` draw the table that
  `tve_lib.schema.throughput_frame` normalised.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import NullLocator

from ..schema import method_label
from .claims import LOADER_SPEEDUP_OK, TARGETS


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    d = df.copy()
    d["label"] = [method_label(m, b, a) for m, b, a in zip(d.method, d.budget, d.tve_arch)]
    return d


def throughput_bars(df: pd.DataFrame) -> plt.Figure:
    """Figure 5 analogue: images/s per method and backbone (log scale) at each size's largest batch
    size; ``(est.)`` marks estimated rows."""
    d = _labelled(df[df.n_tasks == 1])
    d = d[d.batch_size == d.groupby("size").batch_size.transform("max")]
    d["label"] = d.label + np.where(d.estimated, " (est.)", "")
    sizes = list(dict.fromkeys(d["size"]))
    order = d.groupby("label").images_per_s.median().sort_values(ascending=False).index.tolist()
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 0.35 * len(order) + 1.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ds = d[d["size"] == size]
        sns.barplot(data=ds, y="label", x="images_per_s", hue="backbone", order=order, ax=ax, orient="h", seed=0)
        ax.set_xscale("log")
        bs = int(ds.batch_size.iloc[0])
        ax.set_title(f"{size} size, batch {bs}")
        ax.set_xlabel("explanations per second (log)")
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def _panels(d: pd.DataFrame) -> pd.DataFrame:
    """One panel per (size, backbone) that has rows, so a partial section leaves no empty panel."""
    d = d.copy()
    d["panel"] = d["size"] + " size · " + d["backbone"]
    return d


def batch_scaling(df: pd.DataFrame) -> plt.Figure:
    """Images/s against batch size per method (× and dashes: estimated), one panel per size and backbone."""
    d = _panels(_labelled(df[df.n_tasks == 1]))
    g = sns.relplot(data=d, x="batch_size", y="images_per_s", hue="label", style="estimated",
                    markers={False: "o", True: "X"}, dashes={False: "", True: (2, 2)}, col="panel", col_wrap=3,
                    kind="line", height=3, aspect=1.1, palette="tab20", facet_kws={"sharey": False, "sharex": False},
                    seed=0)
    g.set(xscale="log", yscale="log")
    for name, ax in g.axes_dict.items():
        sizes = sorted(d[d.panel == name].batch_size.unique())
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
    g.set_titles("{col_name}")
    return g.figure


def task_scaling(df: pd.DataFrame) -> plt.Figure:
    """Cost of explaining n tasks over one task; dashed: 1.2 (TVE's target), dotted: linear growth."""
    keys = ["device", "backbone", "size", "method", "budget", "tve_arch", "batch_size"]
    d = _labelled(df[df.groupby(keys, dropna=False).n_tasks.transform("max") > 1])
    one = d.ms_per_image.where(d.n_tasks == 1)
    d["relative_cost"] = d.ms_per_image / one.groupby([d[k] for k in keys], dropna=False).transform("max")
    d = _panels(d)
    g = sns.relplot(data=d, x="n_tasks", y="relative_cost", hue="label", style="estimated", col="panel", col_wrap=3,
                    kind="line", markers={False: "o", True: "X"}, dashes={False: "", True: (2, 2)}, height=3,
                    aspect=1.0, seed=0)
    n_max = int(d.n_tasks.max()) if len(d) else 1
    for ax in g.axes.flat:
        ax.axhline(TARGETS["tve_tasks_cost"], ls="--", c="gray", lw=1)
        ax.plot([1, n_max], [1, n_max], ls=":", c="gray", lw=1)
        ax.set_xticks(range(1, n_max + 1))
    g.set_ylabels("cost / one task")
    g.set_titles("{col_name}")
    return g.figure


def loader_finding(loader: pd.DataFrame, speedup_ok: float = LOADER_SPEEDUP_OK) -> str:
    """The paper loader in words, from ``throughput/loader.csv``: images/s per worker count over the
    0-worker loader (target: 2 workers >= ``speedup_ok``x), beside one TVE pre-training step's."""
    ld = loader[loader.what == "loader"].set_index("workers").images_per_s
    step = loader[loader.what == "tve_step"]
    parts = ["Paper loader (images/s): " + ", ".join(f"{int(w)} worker(s) {v:.1f}" for w, v in ld.items())]
    if 0 in ld.index and 2 in ld.index:
        r = ld[2] / ld[0]
        parts.append(f"2 workers deliver {r:.2f}x the 0-worker loader (target >= {speedup_ok:g}x: "
                     f"{'met' if r >= speedup_ok else 'missed'})")
    if len(step):
        s = step.iloc[0]
        enough = ld[ld >= s.images_per_s]
        parts.append(f"one paper-size TVE pre-training step ({s.backbone}, batch {int(s.batch_size)}, {s.device}) "
                     f"consumes {s.images_per_s:.2f} images/s: "
                     + (f"{int(enough.index.min())} worker(s) keep up" if len(enough) else
                        "no measured worker count keeps up"))
    parts += _memory_parts(loader)
    return "; ".join(parts) + "."


def _memory_parts(loader: pd.DataFrame) -> list[str]:
    """Peak memory of the paper-size step and fidelity batch, where ``loader.csv`` has it."""
    if "peak_memory_mib" not in loader:
        return []
    names = {"tve_step": "the TVE pre-training step", "fidelity_batch": "one fidelity batch"}
    out = []
    for r in loader[loader.what.isin(list(names)) & loader.peak_memory_mib.notna()].itertuples():
        out.append(f"peak memory of {names[r.what]} (batch {int(r.batch_size)}, {r.dtype}): "
                   f"{r.peak_memory_mib / 1024:.2f} GiB {r.memory_kind}, {r.memory_growth_mib / 1024:.2f} GiB of it "
                   "for the work itself")
    return out
