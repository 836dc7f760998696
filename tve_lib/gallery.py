"""Pictures of images and attribution maps (tensors): galleries, sample grids, display scaling.

Kept apart from the explainers, which return signed, unnormalised maps: `normalize_map` and
`upsample_map` only serve display. Figures of results (tables) are in `tve_lib.report`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F


def normalize_map(a: torch.Tensor) -> torch.Tensor:
    """Scale each ``[G, G]`` map of ``[B, G, G]`` to [-1, 1] by its largest absolute value."""
    scale = a.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return a / scale


def upsample_map(a: torch.Tensor, size: int, mode: str = "nearest") -> torch.Tensor:
    """``[B, G, G]`` -> ``[B, S, S]`` (nearest keeps the player grid visible; 'bilinear' smooths)."""
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(a.unsqueeze(1).float(), size=(size, size), mode=mode, **kw).squeeze(1)


def show_image(ax: plt.Axes, img: torch.Tensor) -> None:
    """Draw a raw image ``[C, S, S]`` in [0, 1] (gray for one channel) without ticks."""
    img = img.detach().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def outline(ax: plt.Axes, mask: torch.Tensor, color: str = "red") -> None:
    """Outline the region ``mask`` ``[S, S]`` (bool) on ``ax``."""
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
            show_image(ax, imgs[c])
            if masks is not None:
                outline(ax, masks[c])
            ax.set_title(ds.classes[labels[c]], fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def attribution_gallery(images: torch.Tensor, maps: dict[str, torch.Tensor], masks: torch.Tensor | None = None,
                        titles: list[str] | None = None) -> plt.Figure:
    """Images (first column) and one column per named ``[B, G, G]`` map, upsampled to pixels."""
    b = len(images)
    cols = 1 + len(maps)
    fig, axes = plt.subplots(b, cols, figsize=(1.8 * cols, 1.8 * b), squeeze=False)
    for i in range(b):
        show_image(axes[i, 0], images[i])
        if masks is not None:
            outline(axes[i, 0], masks[i])
        if titles:
            axes[i, 0].set_title(titles[i], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            up = upsample_map(normalize_map(m[i:i + 1]), images.shape[-1])[0]
            ax.imshow(up.cpu(), cmap="bwr", vmin=-1, vmax=1)
            if masks is not None:
                outline(ax, masks[i], "black")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig
