"""Figures (seaborn/matplotlib). Figures of results are built from the tidy CSVs only."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

sns.set_theme(context="notebook", style="whitegrid")


def savefig(fig: plt.Figure, path: str | Path, pdf: bool = True) -> Path:
    """Save ``fig`` as PNG (and PDF) with stable names; returns the PNG path."""
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    return path


def _show(ax: plt.Axes, img: torch.Tensor) -> None:
    img = img.detach().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def _outline(ax: plt.Axes, mask: torch.Tensor, color: str = "red") -> None:
    ax.contour(mask.float().cpu().numpy(), levels=[0.5], colors=color, linewidths=1.5)


def sample_grid(sets: dict, n: int = 6) -> plt.Figure:
    """Rows of ``n`` raw images per named ImageSet, with class names and known regions outlined."""
    fig, axes = plt.subplots(len(sets), n, figsize=(1.6 * n, 1.8 * len(sets)), squeeze=False)
    for r, (name, ds) in enumerate(sets.items()):
        imgs, labels, masks = ds.get(torch.arange(min(n, len(ds))))
        for c in range(n):
            ax = axes[r, c]
            if c >= len(imgs):
                ax.axis("off")
                continue
            _show(ax, imgs[c])
            if masks is not None:
                _outline(ax, masks[c])
            ax.set_title(ds.classes[labels[c]], fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def accuracy_bars(df: pd.DataFrame) -> plt.Figure:
    """Test accuracy per backbone, task and head (from accuracy.csv)."""
    d = df[df.split == "test"].copy()
    d["model"] = d["task"] + " / " + d["head"]
    g = sns.catplot(data=d, x="accuracy", y="model", hue="backbone", kind="bar", height=4, aspect=1.6)
    g.ax.axvline(0.8, ls="--", c="gray", lw=1)
    g.ax.set_xlim(0, 1)
    g.ax.set_title("test accuracy (dashed: 0.8 target for heads)")
    return g.figure


def attribution_gallery(images: torch.Tensor, maps: dict[str, torch.Tensor], masks: torch.Tensor | None = None,
                        titles: list[str] | None = None) -> plt.Figure:
    """Images (first column) and one column per named ``[B, G, G]`` map, upsampled to pixels."""
    from .viz import normalize_map, upsample_map

    b = len(images)
    cols = 1 + len(maps)
    fig, axes = plt.subplots(b, cols, figsize=(1.8 * cols, 1.8 * b), squeeze=False)
    for i in range(b):
        _show(axes[i, 0], images[i])
        if masks is not None:
            _outline(axes[i, 0], masks[i])
        if titles:
            axes[i, 0].set_title(titles[i], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            up = upsample_map(normalize_map(m[i:i + 1]), images.shape[-1])[0]
            ax.imshow(up.cpu(), cmap="bwr", vmin=-1, vmax=1)
            if masks is not None:
                _outline(ax, masks[i], "black")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def loss_curves(df: pd.DataFrame, x: str = "epoch", hue: str = "split", col: str = "backbone",
                ys: tuple[str, ...] = ("loss_keep", "loss_remove")) -> plt.Figure:
    """Line plots of loss columns against epochs, one panel per ``col`` value and loss."""
    long = df.melt(id_vars=[c for c in df.columns if c not in ys], value_vars=list(ys),
                   var_name="branch", value_name="loss")
    g = sns.relplot(data=long, x=x, y="loss", hue=hue, style="branch", col=col, kind="line",
                    marker="o", height=3, facet_kws={"sharey": False})
    g.set(yscale="log")
    return g.figure
