"""Generic augmentation of the *upstream* pre-training images (never a downstream image).

TVE pre-trains on single, full-size, centred upstream items; a downstream task may lay its images out otherwise (the
cpu mosaics: four half-size items). ``"composite"`` replaces a fraction of the pre-training images, chosen by seed,
half by 2x2 composites of half-size upstream images (each quadrant filled with probability 1/2, at least one) and half
by single upstream images zoomed to 50-100 % and placed at a random position. ``"composite_lowres"`` splits the
replaced fraction in thirds: composites, zooms, and single upstream images at a low resolution (downsampled to 1/6-1/2
of their side, antialiased, and upsampled back bilinearly: the smooth strokes of an upsampled small image, which no
full-resolution upstream item shows). ``"composite_outline"`` splits it in thirds too, the last third being outlines:
the morphological gradient (dilation minus erosion over a square window of radius about 1/16 of the side) of a single
upstream image, scaled to its maximum and blurred as the low-resolution copies are: thin, smooth, closed strokes, a
shape no upstream item shows filled. ``"composite_glyphs"`` has generated images as its last third, not upstream ones:
a Latin letter (no digit: the cpu profile's digits are a downstream task) of the font Pillow bundles, thin or bold,
its larger side scaled to 54-90 % of the image's, rotated by up to 15 degrees, placed at random, at an intensity of
0.6-1, and blurred as the low-resolution copies are: handwriting-like strokes from a source outside every task.
``"composite_strokes"`` splits that last third between those letters and scribbles: one to three random pen strokes
per image (cubic Bezier curves and elliptic arcs, of a random width), drawn antialiased and blurred the same way:
loops and bends that no font and no upstream item shows. ``"composite_handwriting"`` has the letters of
``"composite_glyphs"`` as its last third, each slanted by a shear and wobbled by a smooth random displacement field
before the blur (`_warp`): the slant and uneven strokes of handwriting, still no digit. Built once,
deterministically, in memory; the rest of the set is untouched, so the explainer still sees the original
distribution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .imagesets import ImageSet, TensorImageSet

AUGMENTS = ("none", "composite", "composite_lowres", "composite_outline", "composite_glyphs", "composite_strokes",
            "composite_handwriting")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # no digit: a cpu task is digits


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


def glyph_bank(side: int = 64) -> torch.Tensor:
    """Every letter of `LETTERS` in the font Pillow bundles (the same file on every machine), thin and bold,
    white on black and centred: ``[2 * len(LETTERS), side, side]`` in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont, features

    if not features.check("freetype2"):
        raise RuntimeError("augment='composite_glyphs' renders letters with FreeType; this Pillow was built "
                           "without it (reinstall Pillow from its wheel)")
    font = ImageFont.load_default(size=side)
    out = []
    for stroke in (max(1, side // 32), max(1, side // 12)):  # thin and bold
        for ch in LETTERS:
            im = Image.new("L", (2 * side, 2 * side))
            ImageDraw.Draw(im).text((side, side), ch, fill=255, font=font, anchor="mm", stroke_width=stroke,
                                    stroke_fill=255)
            im = im.crop(im.getbbox())  # every letter fills the frame's height or width, as the digits do
            k = 0.9 * side / max(im.size)
            im = im.resize((max(1, round(k * im.width)), max(1, round(k * im.height))), Image.BILINEAR)
            canvas = Image.new("L", (side, side))
            canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
            out.append(torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0))
    return torch.stack(out)


def _warp(grid: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``grid`` ``[n, h, w, 2]`` (template coordinates) slanted by a shear of up to 0.35 and wobbled by a smooth
    random displacement (a 4x4 field of up to 0.08 of the half side at its nodes, upsampled bicubically, which
    overshoots by at most 3/8 between them): the slant and the uneven strokes of handwriting, the elastic
    distortion of Simard et al. (2003)."""
    n, h, w, _ = grid.shape
    shear = (torch.rand(n, 1, 1, generator=g) * 2 - 1) * 0.35
    amp = 0.08 * torch.rand(n, 1, 1, 1, generator=g)
    field = F.interpolate((torch.rand(n, 2, 4, 4, generator=g) * 2 - 1) * amp, size=(h, w), mode="bicubic",
                          align_corners=True).permute(0, 2, 3, 1)
    x = grid[..., 0] + shear * grid[..., 1]
    return torch.stack([x, grid[..., 1]], -1) + field


def _glyphs(src: torch.Tensor, n: int, g: torch.Generator, warp: bool = False) -> torch.Tensor:
    _, c, s, _ = src.shape
    bank = glyph_bank()
    pick = torch.randint(0, len(bank), (n,), generator=g)
    zoom = 0.6 + 0.4 * torch.rand(n, generator=g)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(15)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (1 - zoom)[:, None]  # stays inside the frame
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    a = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # output -> template coords
    theta = torch.cat([a, -(a @ shift[:, :, None])], 2)
    grid = F.affine_grid(theta, [n, 1, 2 * s, 2 * s], align_corners=False)
    if warp:
        grid = _warp(grid, g)
    x = F.avg_pool2d(F.grid_sample(bank[pick, None], grid, align_corners=False), 2)  # sampled at 2x, pooled
    x = x * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    return _blurred(x.expand(n, c, s, s), g).clamp(0, 1)


def _stroke_points(n: int, g: torch.Generator, per: int = 48) -> torch.Tensor:
    """``[n, 3, per, 2]`` points along up to three strokes per image, in [-1, 1] coordinates; a stroke an image
    does not draw lies far outside the frame. Each stroke is a cubic Bezier curve or, one time in three, an
    elliptic arc of 180-360 degrees."""
    t = torch.linspace(0, 1, per)
    ctrl = (torch.rand(n, 3, 4, 2, generator=g) * 2 - 1) * 0.8
    basis = torch.stack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], 1)  # [per, 4]
    bezier = torch.einsum("pk,nskd->nspd", basis, ctrl)
    centre = (torch.rand(n, 3, 1, 2, generator=g) * 2 - 1) * 0.4
    radii = 0.15 + 0.45 * torch.rand(n, 3, 1, 2, generator=g)
    start = torch.rand(n, 3, 1, generator=g) * 2 * math.pi
    phi = start + t * math.pi * (1 + torch.rand(n, 3, 1, generator=g))
    arc = centre + radii * torch.stack([torch.cos(phi), torch.sin(phi)], -1)
    is_arc = (torch.rand(n, 3, 1, 1, generator=g) < 1 / 3)
    pts = torch.where(is_arc, arc, bezier)
    drawn = torch.arange(3) < torch.randint(1, 4, (n, 1), generator=g)  # one to three strokes
    return torch.where(drawn[:, :, None, None], pts, torch.full_like(pts, 10.0))


def _scribbles(src: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    _, c, s, _ = src.shape
    hi = 2 * s  # drawn at 2x, pooled
    pts = _stroke_points(n, g).flatten(1, 2)
    half_width = 0.06 + 0.10 * torch.rand(n, 1, generator=g)  # of the half side: thin pen to thick marker
    axis = (torch.arange(hi) + 0.5) / hi * 2 - 1
    pix = torch.stack(torch.meshgrid(axis, axis, indexing="ij")[::-1], -1).view(1, hi * hi, 2)
    out = torch.empty(n, hi * hi)
    for i in range(0, n, 64):  # chunks bound the [images, pixels, points] distance tensor
        d = torch.cdist(pix.expand(len(pts[i:i + 64]), -1, -1), pts[i:i + 64]).amin(-1)
        out[i:i + 64] = ((half_width[i:i + 64] - d) * hi / 2 + 0.5).clamp(0, 1)  # one-pixel antialiased edge
    x = F.avg_pool2d(out.view(n, 1, hi, hi), 2) * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))
    return _blurred(x.expand(n, c, s, s), g).clamp(0, 1)


def _handwriting(src: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    return _glyphs(src, n, g, warp=True)


def _strokes(src: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    half = n // 2
    return torch.cat([_glyphs(src, half, g), _scribbles(src, n - half, g)])


def check_augment(kind: str) -> str:
    """``kind`` if it names an upstream augmentation; a clear error otherwise."""
    if kind not in AUGMENTS:
        raise ValueError(f"unknown upstream augmentation {kind!r}; expected one of: {', '.join(AUGMENTS)}")
    return kind


def augmented_upstream(train: ImageSet, kind: str, frac: float, seed: int) -> ImageSet:
    """``train`` with ``frac`` of its images replaced as ``kind`` says (``"none"``: itself)."""
    check_augment(kind)
    if not 0 <= frac <= 1:  # 0: no image replaced, as "none"; a negative share is a mistake, not "none"
        raise ValueError(f"augment_frac must be in [0, 1] (the share of upstream images replaced), got {frac}")
    if kind == "none" or frac == 0:
        return train
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
        last = {"composite_lowres": _lowres, "composite_outline": _outlines, "composite_glyphs": _glyphs,
                "composite_strokes": _strokes, "composite_handwriting": _handwriting}[kind]
        x[idx[b:]] = last(src, len(idx) - b, g)
    return TensorImageSet(f"{train.name}+{kind}{frac:g}s{seed}", x, y, train.classes)
