"""The one removal operator shared by every explainer and metric, and the TVE windows.

Players are the ``G x G`` grid of pixel patches. Removing a player sets its pixels to the
removal value in *normalised* input space (0 = the normalisation's mean colour, docs/method.md §1), or,
under another removal operator (`tve_lib.operators`), to a per-image fill. Soft masks in [0, 1]
(LTX) blend toward the same fill, so hard and soft masking share one formula.
"""

from __future__ import annotations

import numbers

import torch

#: masked copies per backbone call where no profile sets it: the size every masked pass defaults to (sampling
#: explainers, metrics, window embeddings). On a CPU the small backbones run 1.4-1.9x faster at 128-256 than at 1,024
#: (docs/benchmarks.md, "Toward the hour"); the profiles set their own (`EvalConfig.masked_batch_size`).
MASKED_BATCH = 256


def players_to_pixels(keep: torch.Tensor, grid: int, img_size: int) -> torch.Tensor:
    """Upsample a player mask ``[..., G*G]`` or ``[..., G, G]`` to pixels ``[..., 1, S, S]``."""
    if keep.shape[-1] == grid * grid and (keep.ndim == 1 or keep.shape[-2:] != (grid, grid)):
        keep = keep.reshape(*keep.shape[:-1], grid, grid)
    if keep.shape[-2:] != (grid, grid):
        raise ValueError(f"player mask must end in [{grid * grid}] or [{grid}, {grid}], "
                         f"got {tuple(keep.shape)}")
    if img_size % grid:
        raise ValueError(f"image size {img_size} is not a multiple of the grid {grid}")
    p = img_size // grid
    px = keep.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
    return px.unsqueeze(-3)


def apply_mask(x: torch.Tensor, keep: torch.Tensor, grid: int, removal_value: float = 0.0,
               fill: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the players where ``keep`` is 1 and remove the rest.

    ``x``: normalised images ``[B, C, S, S]``. ``keep``: ``[B, P]``, ``[P]``, ``[B, G, G]`` or
    ``[B, K, P]`` (K masks per image: the result is ``[B, K, C, S, S]``). Hard (bool) or soft.
    ``fill``: ``[B, C, S, S]`` values of removed pixels (a removal operator's); None: ``removal_value``.
    Kept players are returned bit-identical.
    """
    hard = keep.dtype == torch.bool
    px = players_to_pixels(keep.to(x.dtype), grid, x.shape[-1])
    if keep.ndim == 3 and keep.shape[-1] == grid * grid:  # [B, K, P]
        x = x.unsqueeze(1)
        fill = fill.unsqueeze(1) if fill is not None else None
    if fill is not None:
        fill = fill.to(x.dtype)
        return torch.where(px.bool(), x, fill) if hard else x * px + fill * (1 - px)
    if removal_value == 0.0:
        return x * px
    return x * px + removal_value * (1 - px)


def default_radius(grid: int) -> int:
    """Window radius scaled with the grid: r = 2 at 14x14 (the official setting), >= 1."""
    return max(1, round(2 * grid / 14))


def window_radius(radius: int | None, grid: int) -> int:
    """The window radius to use on a ``grid x grid`` player grid: ``radius``, or `default_radius` where it is None;
    a clear error for one a window cannot have there (1 to G-1, the ablation's own rule)."""
    if radius is None:
        return default_radius(grid)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Integral) or not 1 <= radius < grid:
        raise ValueError(f"window radius must be None (the default, round(2 G / 14)) or an integer from 1 to "
                         f"{grid - 1} on a {grid}x{grid} player grid, got {radius!r}")
    return int(radius)


def windows(grid: int, radius: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[G*G, G*G]`` bool: row i is the Chebyshev window of ``radius`` around player i."""
    r = torch.arange(grid, device=device)
    rr, cc = torch.meshgrid(r, r, indexing="ij")
    rr, cc = rr.flatten(), cc.flatten()
    cheb = torch.maximum((rr[:, None] - rr[None]).abs(), (cc[:, None] - cc[None]).abs())
    return cheb <= radius


def pool_map(a: torch.Tensor, radius: int) -> torch.Tensor:
    """Average-pool a ``[B, G, G]`` map with kernel 2r+1, stride 1, padding ignored in counts."""
    k = 2 * radius + 1
    return torch.nn.functional.avg_pool2d(a.unsqueeze(1), k, stride=1, padding=radius,
                                          count_include_pad=False).squeeze(1)


def top_k_mask(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """``[B, P]`` bool mask of each row's ``k`` highest scores (ties broken by index)."""
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    k = torch.as_tensor(k, device=scores.device)
    return ranks < (k.unsqueeze(-1) if k.ndim else k)
