"""Attribution metrics (METHOD.md §2), batched torch, on any device.

Agreement between maps: `spearman`, `topk_overlap`.
"""

from __future__ import annotations

import torch


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
