"""Attribution metrics (docs/method.md §2), batched torch, on any device.

Conventions shared by every metric here:

* **score**: the softmax probability ``p`` of the class ``ŷ`` predicted on the full image by the
  explained model ``f = h ∘ g`` (or of the given ``target``); POS/NEG use top-1 agreement with ``ŷ``.
* **removal**: the one shared operator ``Backbone.mask`` (removed players -> 0 in normalised input
  space, the dataset mean colour); players are the backbone's ``G × G`` grid of pixel patches.
* **ranking**: players sorted by attribution, highest first; ties are broken by player index
  (row-major, lower index first), so a constant map ranks players in reading order.
* **k at fraction f**: ``round(f · G²)`` players.

Per-image curves (``perturbation_curves``), x is a fraction of the players:

* ``fid_plus``  at sparsity s: ``p(x) − p(x with the top (1−s)·G² players removed)``  (higher better)
* ``fid_minus`` at sparsity s: ``p(x) − p(x with only the top (1−s)·G² kept)``        (lower better)
* ``pos`` / ``neg`` at fraction r: 1 if ``argmax f(x') = ŷ`` after removing the r·G² MOST (pos,
  lower better) or LEAST (neg, higher better) relevant players (LTX / Chefer et al. protocol; on
  equal-size patches, removing r of the players removes r of the pixels)
* ``deletion`` / ``insertion`` at fraction t: ``p`` after removing the top t·G² players from the full
  image / keeping only them (starting from the fully removed image)

AUC (``auc``): trapezoid rule over x, divided by the x-range, so it lies in the units of the curve
(probability; POS/NEG are reported ×100, i.e. percent, as in the LTX tables).
Agreement between maps: ``spearman``, ``topk_overlap``. Localisation: ``pointing_game``,
``mass_in_region``. Intervals: ``bootstrap_ci`` (percentile bootstrap over images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone
from .heads import check_targets, head_logits
from .masking import MASKED_BATCH, top_k_mask
from .schema import AUC_NAMES, CURVE_METRICS, DIRECTION  # noqa: F401  (the summary.csv vocabulary)
from .settings import check_curve_axes


# ----------------------------------------------------------------------------- agreement
def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank) along the last dim, as float."""
    x = x.flatten(1).double()
    order = x.argsort(dim=1, stable=True)
    sorted_x = x.gather(1, order)
    pos = torch.arange(x.shape[1], device=x.device, dtype=torch.double).expand_as(x)
    # ties: average the positions within each run of equal values
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    run_id = new_run.cumsum(1) - 1
    sums = torch.zeros_like(pos).scatter_add_(1, run_id, pos)
    counts = torch.zeros_like(pos).scatter_add_(1, run_id, torch.ones_like(pos))
    avg = (sums / counts.clamp_min(1)).gather(1, run_id)
    return torch.empty_like(avg).scatter_(1, order, avg)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Spearman rank correlation of two ``[B, ...]`` maps -> ``[B]`` (NaN if constant)."""
    ra, rb = _ranks(a), _ranks(b)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).float()


def topk_overlap(a: torch.Tensor, b: torch.Tensor, frac: float = 0.1) -> torch.Tensor:
    """Per-image fraction of ``b``'s top-``frac`` players that are also in ``a``'s -> ``[B]``."""
    a, b = a.flatten(1), b.flatten(1)
    k = max(1, round(frac * a.shape[1]))
    ia = a.topk(k, dim=1).indices
    ib = b.topk(k, dim=1).indices
    hit = (ia.unsqueeze(2) == ib.unsqueeze(1)).any(2)
    return hit.float().mean(1)


# ----------------------------------------------------------------------------- model calls
@torch.no_grad()
def masked_embeddings(backbone: Backbone, x: torch.Tensor, keep: torch.Tensor,
                      batch_size: int = MASKED_BATCH) -> torch.Tensor:
    """``g(x_b ⊙ keep_bk)`` for every image and mask: ``[B, K, D]``.

    ``keep``: ``[B, K, P]`` (masks per image) or ``[K, P]`` (one shared coalition tensor, as the
    samplers use), bool or soft. Masked images are built chunk by chunk, so memory stays at
    ``batch_size`` images whatever ``B·K`` is. The embeddings do not depend on the head: compute
    them once and score several heads with `class_prob`.
    """
    b, p = len(x), backbone.n_players
    if keep.ndim == 2:
        keep = keep.unsqueeze(0).expand(b, -1, -1)
    if keep.ndim != 3 or keep.shape[0] != b or keep.shape[-1] != p:
        raise ValueError(f"keep must be [B={b}, K, P={p}] or [K, P={p}], got {tuple(keep.shape)}")
    k = keep.shape[1]
    keep = keep.to(x.device)
    out = torch.empty(b * k, backbone.embed_dim, device=x.device)
    for s in range(0, b * k, batch_size):
        i = torch.arange(s, min(s + batch_size, b * k), device=x.device)
        bi, ki = i // k, i % k
        out[s:s + len(i)] = backbone.embed(backbone.mask(x[bi], keep[bi, ki]))
    return out.view(b, k, -1)


def class_prob(head: nn.Module, emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax probability of ``target[b]`` from embeddings ``[B, ..., D]`` -> ``[B, ...]``."""
    logits = head_logits(head, emb)
    idx = target.view(-1, *([1] * (logits.ndim - 1))).expand(*logits.shape[:-1], 1)
    return F.softmax(logits.float(), -1).gather(-1, idx).squeeze(-1)


def class_hit(head: nn.Module, emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1.0 where the head's top-1 class on ``emb [B, ..., D]`` equals ``target[b]``, else 0.0."""
    pred = head_logits(head, emb).argmax(-1)
    return (pred == target.view(-1, *([1] * (pred.ndim - 1)))).float()


# ----------------------------------------------------------------------------- curves
def auc(x: Sequence[float] | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Trapezoid AUC of ``y [..., X]`` over ``x [X]``, divided by the x-range (units of y)."""
    x = torch.as_tensor(x, dtype=torch.float64, device=y.device)
    if x.ndim != 1 or len(x) < 2 or x.shape[0] != y.shape[-1]:
        raise ValueError(f"auc needs >= 2 points with x [{y.shape[-1]}], got x {tuple(x.shape)}")
    return (torch.trapezoid(y.double(), x, dim=-1) / (x[-1] - x[0])).to(y.dtype)


def curve_grids(sparsities: Sequence[float], perturbation_steps: Sequence[float],
                deletion_steps: int) -> dict[str, list[float]]:
    """The x values of every curve in ``CURVE_METRICS``: sparsities for Fidelity±, the removed
    fractions for POS/NEG, ``deletion_steps + 1`` even fractions in [0, 1] for deletion/insertion."""
    def seq(xs):  # a list, a tuple, an array: checked as a tuple of numbers
        return tuple(float(x) for x in xs) if hasattr(xs, "__len__") and not isinstance(xs, str) else xs

    check_curve_axes(seq(sparsities), seq(perturbation_steps), deletion_steps)
    sp = sorted(float(s) for s in sparsities)
    steps = sorted(float(s) for s in perturbation_steps)
    dele = [i / deletion_steps for i in range(deletion_steps + 1)]
    return {"fid_plus": sp, "fid_minus": sp, "pos": steps, "neg": steps, "deletion": dele, "insertion": dele}


def _player_scores(attr: torch.Tensor, p: int) -> torch.Tensor:
    a = attr.flatten(1)
    if a.shape[1] != p:
        raise ValueError(f"attributions must have {p} players per image ([B, G, G] or [B, G*G]), "
                         f"got {tuple(attr.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError("attributions contain NaN or inf")
    return a


def ranked_keep(attr: torch.Tensor, ks: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``[B, K, P]`` bool: for each k in ``ks``, the k top-ranked players of each image."""
    a = attr.flatten(1)
    ks = torch.as_tensor(ks, device=a.device, dtype=torch.long)
    return top_k_mask(a.unsqueeze(1).expand(-1, len(ks), -1), ks.view(1, -1).expand(len(a), -1))


@torch.no_grad()
def _needed_ks(grids: dict[str, list[float]], p: int) -> tuple[list[int], list[int]]:
    """Every k any curve needs: (top-k removed, top-k kept), the trivial 0 and P left out.

    Removing the top k = keeping the bottom P-k, i.e. NOT the top k: evaluated with the complement mask.
    """
    need_rm = {round((1 - s) * p) for s in grids.get("fid_plus", [])} \
        | {round(f * p) for f in grids.get("deletion", []) + grids.get("pos", [])}
    need_keep = {round((1 - s) * p) for s in grids.get("fid_minus", [])} \
        | {round(f * p) for f in grids.get("insertion", [])} | {p - round(f * p) for f in grids.get("neg", [])}
    return sorted(k for k in need_rm if 0 < k < p), sorted(k for k in need_keep if 0 < k < p)


@dataclass(frozen=True)
class CurveBase:
    """What every curve of some images shares whatever the map: the embeddings ``[B, D]`` of the full
    images and of the fully removed ones, under the removal operator named by ``operator``; and the masked
    embeddings of the last map scored, which the next head's curves reuse when its masks are the same (the map
    of a method that reads neither head nor class, random and rollout: ~9 % of notebook 03's masked passes)."""

    full: torch.Tensor
    empty: torch.Tensor
    operator: str
    last: dict = field(default_factory=dict, compare=False, repr=False)

    def masked(self, backbone: Backbone, images: torch.Tensor, masks: torch.Tensor, batch_size: int) -> torch.Tensor:
        """`masked_embeddings` of these images under ``masks``: read back when the last call had the same masks,
        computed (and kept for the next call) otherwise."""
        if "masks" in self.last and torch.equal(self.last["masks"], masks):
            return self.last["emb"]
        emb = masked_embeddings(backbone, images, masks, batch_size)
        self.last.update(masks=masks, emb=emb)
        return emb


def _operator_key(backbone: Backbone) -> str:
    return backbone.operator.key if backbone.operator is not None else "removal value"


@torch.inference_mode()
def curve_base(backbone: Backbone, images: torch.Tensor, batch_size: int = MASKED_BATCH) -> CurveBase:
    """`CurveBase` of ``images``: computed once, it serves `perturbation_curves` of every map of them (the
    two passes per image that would otherwise be repeated for each method and head)."""
    p = backbone.n_players
    empty = torch.zeros(1, 1, p, dtype=torch.bool, device=images.device)
    return CurveBase(backbone.embed_batched(images, batch_size),
                     masked_embeddings(backbone, images, empty.expand(len(images), 1, p), batch_size)[:, 0],
                     _operator_key(backbone))


def _check_curve_inputs(backbone: Backbone, images: torch.Tensor, attr: torch.Tensor, which: Sequence[str],
                        base: CurveBase | None) -> torch.Tensor:
    """`perturbation_curves`' inputs checked before any pass; the maps as player scores ``[B, P]``."""
    unknown = set(which) - set(CURVE_METRICS)
    if unknown:
        raise KeyError(f"unknown curve(s) {sorted(unknown)}; expected some of {CURVE_METRICS}")
    a = _player_scores(attr, backbone.n_players).to(images.device)
    if len(a) != len(images):
        raise ValueError(f"{len(images)} images but {len(a)} attribution maps")
    if base is not None and (len(base.full) != len(images) or base.operator != _operator_key(backbone)):
        raise ValueError(f"curve base of {len(base.full)} images under operator {base.operator!r}, but "
                         f"{len(images)} images under {_operator_key(backbone)!r}: compute it with curve_base")
    return a


@torch.inference_mode()  # scores only: the curves never enter autograd
def perturbation_curves(backbone: Backbone, head: nn.Module, images: torch.Tensor, attr: torch.Tensor,
                        target: torch.Tensor | None = None, sparsities: Sequence[float] = (0.0, 0.5),
                        perturbation_steps: Sequence[float] = (0.0, 0.5), deletion_steps: int = 10,
                        batch_size: int = MASKED_BATCH, which: Sequence[str] = CURVE_METRICS,
                        base: CurveBase | None = None
                        ) -> dict[str, tuple[list[float], torch.Tensor]]:
    """Per-image curves of every metric in ``CURVE_METRICS``: ``{name: (x [X], y [B, X])}``.

    ``images``: normalised ``[B, 3, S, S]``; ``attr``: ``[B, G, G]``; ``target``: ``[B]`` (default:
    the class predicted on the full image). Every curve is built from one set of model calls: the
    top-k removed and top-k kept images for each distinct k over all grids (full and fully removed
    images are evaluated once, or taken from ``base``, `curve_base` of the same images under the same
    removal operator). ``which`` restricts the curves (and so the model calls).
    """
    p = backbone.n_players
    a = _check_curve_inputs(backbone, images, attr, which, base)
    grids = {k: v for k, v in curve_grids(sparsities, perturbation_steps, deletion_steps).items() if k in which}
    if target is not None:  # checked before any pass
        target = check_targets(target, len(images), head).to(images.device)
    base = base or curve_base(backbone, images, batch_size)
    emb_full, emb_empty = base.full, base.empty
    if target is None:
        target = head_logits(head, emb_full).argmax(-1)
    p_full, hit_full = class_prob(head, emb_full, target), class_hit(head, emb_full, target)
    p_empty, hit_empty = class_prob(head, emb_empty, target), class_hit(head, emb_empty, target)

    rm_ks, keep_ks = _needed_ks(grids, p)
    top = ranked_keep(a, rm_ks + keep_ks)
    masks = torch.cat([~top[:, :len(rm_ks)], top[:, len(rm_ks):]], 1)
    emb = base.masked(backbone, images, masks, batch_size)
    pr, hr = class_prob(head, emb, target), class_hit(head, emb, target)

    def removed(k: int, hit: bool = False) -> torch.Tensor:  # top-k removed
        if k <= 0:
            return hit_full if hit else p_full
        if k >= p:
            return hit_empty if hit else p_empty
        j = rm_ks.index(k)
        return (hr if hit else pr)[:, j]

    def kept(k: int, hit: bool = False) -> torch.Tensor:  # only the top k kept
        if k >= p:
            return hit_full if hit else p_full
        if k <= 0:
            return hit_empty if hit else p_empty
        j = len(rm_ks) + keep_ks.index(k)
        return (hr if hit else pr)[:, j]

    r = lambda f: round(f * p)  # noqa: E731 - local shorthand
    build = {
        "fid_plus": lambda xs: [p_full - removed(r(1 - s)) for s in xs],
        "fid_minus": lambda xs: [p_full - kept(r(1 - s)) for s in xs],
        "pos": lambda xs: [removed(r(f), True) for f in xs],
        "neg": lambda xs: [kept(p - r(f), True) for f in xs],
        "deletion": lambda xs: [removed(r(f)) for f in xs],
        "insertion": lambda xs: [kept(r(f)) for f in xs],
    }
    return {name: (xs, torch.stack(build[name](xs), 1)) for name, xs in grids.items()}


def curve_aucs(curves: dict[str, tuple[list[float], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-image AUC ``[B]`` of each curve, keyed by its summary name (POS/NEG in percent)."""
    out = {}
    for name, (x, y) in curves.items():
        v = auc(x, y)
        out[AUC_NAMES[name]] = 100 * v if name in ("pos", "neg") else v
    return out


# ----------------------------------------------------------------------------- localisation
def region_fraction(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Fraction of each player's pixels inside the region: pixel masks ``[B, S, S]`` -> ``[B, G*G]``."""
    if masks.ndim != 3 or masks.shape[-1] != masks.shape[-2] or masks.shape[-1] % grid:
        raise ValueError(f"region masks must be [B, S, S] with S a multiple of {grid}, got {tuple(masks.shape)}")
    return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), grid).flatten(1)


def pointing_game(attr: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image 1.0 if the top-ranked player lies in the region (≥ half its pixels inside), else 0; players tied
    at the top share the hit (its expectation under a random tie-break), so a constant map scores the region's
    share of the players, not whatever player 0's position gives."""
    a = attr.flatten(1)
    frac = region_fraction(masks, round(a.shape[1] ** 0.5)).to(a.device)
    top = a == a.amax(1, keepdim=True)
    return ((frac >= 0.5) & top).sum(1).float() / top.sum(1).float()


def mass_in_region(attr: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image: share of the positive relevance inside the region (pixel-weighted), NaN if none."""
    a = attr.flatten(1).clamp_min(0).double()
    frac = region_fraction(masks, round(a.shape[1] ** 0.5)).to(a.device).double()
    tot = a.sum(1)
    return torch.where(tot > 0, (a * frac).sum(1) / tot.clamp_min(1e-300), torch.nan).float()


# ----------------------------------------------------------------------------- intervals
def bootstrap_ci(values: torch.Tensor, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of per-image ``values`` [B] (NaNs dropped): percentile bootstrap.

    All resamples are drawn in one batched call from a generator seeded with ``seed``.
    """
    v = values.detach().double().flatten().cpu()
    v = v[~torch.isnan(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = v.mean().item()
    if n == 1 or n_boot < 1:
        return mean, float("nan"), float("nan"), n
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(0, n, (n_boot, n), generator=g)].mean(1)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.double)
    lo, hi = torch.quantile(means, q).tolist()
    return mean, lo, hi, n
