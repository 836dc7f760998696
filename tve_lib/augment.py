"""Generic augmentation of the *upstream* pre-training images (never a downstream image).

TVE pre-trains on single, full-size, centred upstream items; a downstream task may lay its
images out otherwise (the cpu mosaics: four half-size items). ``"composite"`` replaces a fraction
of the pre-training images, chosen by seed, half by 2x2 composites of half-size upstream images
(each quadrant filled with probability 1/2, at least one) and half by single upstream images
zoomed to 50-100 % and placed at a random position. ``"composite_lowres"`` splits the replaced
fraction in thirds: composites, zooms, and single upstream images at a low resolution (downsampled to
1/6-1/2 of their side, antialiased, and upsampled back bilinearly: the smooth strokes of an upsampled
small image, which no full-resolution upstream item shows). ``"composite_outline"`` splits it in thirds too, the
last third being outlines: the morphological gradient (dilation minus erosion, a window of about 1/16 of the side)
of a single upstream image, scaled to its maximum and blurred as the low-resolution copies are: thin, smooth,
closed strokes, a shape no upstream item shows filled. Built once, deterministically, in memory; the
rest of the set is untouched, so the explainer still sees the original distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .imagesets import ImageSet, TensorImageSet

AUGMENTS = ("none", "composite", "composite_lowres", "composite_outline")


def _composites(src: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    b, c, s, _ = src.shape
    q = s // 2
    pick = torch.randint(0, b, (n, 4), generator=g)
    filled = torch.rand(n, 4, generator=g) < 0.5
    filled[torch.arange(n), torch.randint(0, 4, (n,), generator=g)] = True
    small = F.interpolate(src[pick.flatten()], size=(q, q), mode="bilinear", align_corners=False,
                          antialias=True).view(n, 4, c, q, q)
    small = small * filled.view(n, 4, 1, 1, 1)
    out = torch.zeros(n, c, s, s)
    for k in range(4):
        r, cc = divmod(k, 2)
        out[:, :, r * q:(r + 1) * q, cc * q:(cc + 1) * q] = small[:, k]
    return out


def _zooms(src: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    b, c, s, _ = src.shape
    out = torch.zeros(n, c, s, s)
    pick = torch.randint(0, b, (n,), generator=g)
    sizes = torch.randint(s // 2, s + 1, (n,), generator=g)
    for size in sizes.unique().tolist():  # one resize per distinct size, not per image
        sel = (sizes == size).nonzero().flatten()
        z = F.interpolate(src[pick[sel]], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        top = torch.randint(0, s - size + 1, (len(sel),), generator=g)
        left = torch.randint(0, s - size + 1, (len(sel),), generator=g)
        for j, (i, t, le) in enumerate(zip(sel.tolist(), top.tolist(), left.tolist())):
            out[i, :, t:t + size, le:le + size] = z[j]
    return out


def _lowres(src: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return _blurred(src[torch.randint(0, len(src), (n,), generator=g)], g)


def _blurred(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` downsampled to 1/6-1/2 of its side (antialiased) and upsampled back bilinearly."""
    n, c, s, _ = x.shape
    out = torch.zeros(n, c, s, s)
    sizes = torch.randint(max(2, s // 6), s // 2 + 1, (n,), generator=g)
    for size in sizes.unique().tolist():  # one resize per distinct size, not per image
        sel = (sizes == size).nonzero().flatten()
        small = F.interpolate(x[sel], size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[sel] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)
    return out


def _outlines(src: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    x = src[torch.randint(0, len(src), (n,), generator=g)]
    k = 2 * max(1, src.shape[-1] // 16) + 1
    edge = F.max_pool2d(x, k, 1, k // 2) + F.max_pool2d(-x, k, 1, k // 2)  # dilation minus erosion
    return _blurred(edge / edge.amax((1, 2, 3), keepdim=True).clamp_min(1e-6), g)


def check_augment(kind: str) -> str:
    """``kind`` if it names an upstream augmentation; a clear error otherwise."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown upstream augmentation {kind!r}; expected one of: {', '.join(AUGMENTS)}")
    return kind


def augmented_upstream(train: ImageSet, kind: str, frac: float, seed: int) -> ImageSet:
    """``train`` with ``frac`` of its images replaced as ``kind`` says (``"none"``: itself)."""
    check_augment(kind)
    if kind == "none" or frac <= 0:
        return train
    if not 0 < frac <= 1:
        raise ValueError(f"augment_frac must be in (0, 1], got {frac}")
    x, y, _ = train.get(torch.arange(len(train)))
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise TypeError("upstream augmentation needs an in-memory image set")
    g = torch.Generator().manual_seed(30_011 + seed)
    idx = torch.randperm(len(x), generator=g)[: int(frac * len(x))]
    src, x = x, x.clone()
    if kind == "composite":
        half = len(idx) // 2
        x[idx[:half]] = _composites(src, half, g)
        x[idx[half:]] = _zooms(src, len(idx) - half, g)
    else:
        a, b = len(idx) // 3, 2 * len(idx) // 3
        x[idx[:a]] = _composites(src, a, g)
        x[idx[a:b]] = _zooms(src, b - a, g)
        last = _lowres if kind == "composite_lowres" else _outlines
        x[idx[b:]] = last(src, len(idx) - b, g)
    return TensorImageSet(f"{train.name}+{kind}{frac:g}s{seed}", x, y, train.classes)
