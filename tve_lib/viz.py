"""Display helpers for attribution maps (kept apart from the explainers, which stay unnormalised)."""

from __future__ import annotations

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
