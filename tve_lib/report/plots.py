"""Figures of results (seaborn/matplotlib), built from the tidy CSVs only; `savefig` saves PNG + PDF.

Pictures of images and maps (tensors) are drawn by `tve_lib.gallery`."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

sns.set_theme(context="notebook", style="whitegrid")


@contextmanager
def seaborn_boxes() -> Iterator[None]:
    """Around a seaborn box plot: seaborn 0.13.2, the newest, passes Matplotlib's deprecated ``vert`` itself, a
    warning no caller can act on (``matplotlib<3.13`` in the requirements keeps the release that removes it out)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="vert: bool was deprecated", category=DeprecationWarning)
        yield


def savefig(fig: plt.Figure, path: str | Path, pdf: bool = True) -> Path:
    """Save ``fig`` as PNG (and PDF) with stable names; returns the PNG path."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    return path


def accuracy_bars(df: pd.DataFrame) -> plt.Figure:
    """Test accuracy per backbone, task and head (from accuracy.csv)."""
    from .claims import HEAD_ACCURACY_OK  # here: claims imports the operator figures, which import this module

    d = df[df.split == "test"].copy()
    d["model"] = d["task"] + " / " + d["head"]
    g = sns.catplot(data=d, x="accuracy", y="model", hue="backbone", kind="bar", height=4, aspect=1.6, seed=0)
    g.ax.axvline(HEAD_ACCURACY_OK, ls="--", c="gray", lw=1)
    g.ax.set_xlim(0, 1)
    g.ax.set_title(f"test accuracy (dashed: {HEAD_ACCURACY_OK:g} target for heads)")
    return g.figure


def loss_curves(df: pd.DataFrame, x: str = "epoch", hue: str = "split", col: str = "backbone",
                ys: tuple[str, ...] = ("loss_keep", "loss_remove")) -> plt.Figure:
    """Line plots of loss columns against epochs, one panel per ``col`` value and loss."""
    long = df.melt(id_vars=[c for c in df.columns if c not in ys], value_vars=list(ys),
                   var_name="branch", value_name="loss")
    g = sns.relplot(data=long, x=x, y="loss", hue=hue, style="branch", col=col, kind="line",
                    marker="o", height=3, facet_kws={"sharey": False}, seed=0)
    g.set(yscale="log")
    return g.figure
