"""Pictures of images and attribution maps (tensors): galleries, sample grids, display scaling.

Kept apart from the explainers, which return signed, unnormalised maps: `display_map` and
`upsample_map` only serve display. Maps are shown as the field shows them (Captum's
``visualize_image_attr``): upsampled to pixels and blended over the image, with a sign mode
(`SIGNS`) and percentile clipping. The default, ``centred``, subtracts each map's median first:
window-occlusion-style maps (TVE, occlusion) carry a large per-image offset that a colour scale
centred on 0 turns into one flat colour, hiding the ranking every metric uses. Figures of results
(tables) are in `tve_lib.report`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

#: sign modes: ``centred`` (map minus its per-image median), ``all`` (signed as is), ``positive``
#: (evidence for the class only), ``absolute`` (magnitude)
SIGNS = ("centred", "all", "positive", "absolute")
CAPTIONS = {
    "centred": "red: players above the image's median player, blue: below",
    "all": "red: evidence for the class, blue: against",
    "positive": "colour: evidence for the class (negative values hidden)",
    "absolute": "colour: magnitude, either sign",
}


def display_map(a: torch.Tensor, sign: str = "centred", clip: float = 99.0) -> torch.Tensor:
    """``[B, G, G]`` maps scaled for display: signed modes to [-1, 1], ``positive`` / ``absolute`` to [0, 1].

    Each map is divided by the ``clip`` percentile of its absolute values (after the sign mode), so
    one extreme player does not wash out the rest; a constant map shows as 0.
    """
    if sign not in SIGNS:
        raise ValueError(f"unknown sign mode {sign!r}; expected one of: {', '.join(SIGNS)}")
    if not 0 < clip <= 100:
        raise ValueError(f"clip is a percentile in (0, 100], got {clip}")
    a = a.detach().float()
    if sign == "centred":
        a = a - a.flatten(1).median(1).values.view(-1, 1, 1)
    elif sign == "positive":
        a = a.clamp_min(0)
    elif sign == "absolute":
        a = a.abs()
    scale = torch.quantile(a.flatten(1).abs(), clip / 100, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    lo = 0.0 if sign in ("positive", "absolute") else -1.0
    return (a / scale).clamp(lo, 1.0)


def show_map(ax: plt.Axes, image: torch.Tensor, amap: torch.Tensor, sign: str = "centred",
             clip: float = 99.0, alpha: float = 0.65) -> None:
    """One ``[G, G]`` map upsampled to the image's pixels and blended over the (grayscale) image."""
    ax.imshow(image.detach().cpu().float().mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
    up = upsample_map(display_map(amap.unsqueeze(0), sign, clip), image.shape[-1])[0].cpu()
    signed = sign in ("centred", "all")
    ax.imshow(up.numpy(), cmap="bwr" if signed else "Reds", vmin=-1 if signed else 0, vmax=1, alpha=alpha)
    ax.set_xticks([])
    ax.set_yticks([])


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
                        titles: list[str] | None = None, sign: str = "centred", clip: float = 99.0) -> plt.Figure:
    """Images (first column) and one column per named ``[B, G, G]`` map, blended over the image
    (`show_map`); the colour scale's meaning is written under the gallery."""
    b = len(images)
    cols = 1 + len(maps)
    fig, axes = plt.subplots(b, cols, figsize=(1.8 * cols, 1.8 * b + 0.4), squeeze=False)
    for i in range(b):
        show_image(axes[i, 0], images[i])
        if masks is not None:
            outline(axes[i, 0], masks[i])
        if titles:
            axes[i, 0].set_title(titles[i], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            show_map(ax, images[i], m[i], sign, clip)
            if masks is not None:
                outline(ax, masks[i], "black")
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.text(0.5, 0.0, f"{CAPTIONS[sign]}; each map scaled by the {clip:g}th percentile of its |values|",
             ha="center", va="top", fontsize=8)
    return fig
