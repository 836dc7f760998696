"""Where a backbone's tokens sit on the explanation grid: the grid derived from the model's strides, token maps
folded, resized or pooled onto the ``G x G`` player grid, and the transformer blocks in order. Geometry only,
for any timm ViT, DeiT, Swin or CNN (no hard-coded reshapes); `tve_lib.backbones.Backbone` uses it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def derive_grid(model: nn.Module, img_size: int, max_grid: int) -> tuple[int, int]:
    """``(G, patch)``: the finest feature stride dividing ``img_size`` with a grid <= ``max_grid``."""
    reductions = sorted({int(fi["reduction"]) for fi in getattr(model, "feature_info", [])})
    if not reductions and hasattr(model, "patch_embed"):
        reductions = [int(model.patch_embed.patch_size[0])]
    for r in reductions:
        if img_size % r == 0 and img_size // r <= max_grid:
            return img_size // r, r
    raise ValueError(f"no token stride of {type(model).__name__} (strides {reductions}) gives a "
                     f"grid <= {max_grid} at {img_size} px")



def to_player_grid(m: torch.Tensor, grid: int) -> torch.Tensor:
    """An NCHW token map on the ``grid x grid`` player grid: a coarser map (Swin's later stages) resized
    bilinearly, a finer one (Swin's first stages at 224 px) averaged over each player's cell, so that every
    token counts, where bilinear resizing would read a few of them (and runs ~10x slower on a GPU)."""
    if m.shape[-2:] == (grid, grid):
        return m
    if m.shape[-2] >= grid and m.shape[-1] >= grid:
        return F.adaptive_avg_pool2d(m, (grid, grid))
    # channels-last: CUDA's NCHW bilinear kernel loops over batch x channels in each of the G² output
    # threads (16 ms for Swin-B's last stage at batch 64 on an H200); the NHWC kernel spreads them
    m = m.contiguous(memory_format=torch.channels_last)
    return F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False)


def block_list(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a timm ViT/DeiT (``blocks``) or Swin (``layers[*].blocks``), in order."""
    if hasattr(model, "blocks"):
        return list(model.blocks)
    if hasattr(model, "layers"):
        return [b for layer in model.layers for b in getattr(layer, "blocks", [layer])]
    raise ValueError(f"{type(model).__name__} has neither `blocks` nor `layers`: no transformer block list")


def token_grid(model: nn.Module, feats: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """``forward_features``' output as a token grid ``[B, h, w, d]``.

    ViT/DeiT ``[B, prefix + h·w, d]``: prefix (class/distillation) tokens dropped, the square
    rest folded; Swin: NHWC already; a CNN's NCHW map is permuted.
    """
    if feats.ndim == 4:
        return feats if getattr(model, "output_fmt", "NCHW") == "NHWC" else feats.permute(0, 2, 3, 1)
    if feats.ndim != 3:
        raise ValueError(f"{type(model).__name__}.forward_features gave {tuple(feats.shape)}; expected "
                         "tokens [B, N, d] or a feature map [B, h, w, d]")
    t = feats[:, num_prefix_tokens:]
    h = math.isqrt(t.shape[1])
    if h * h != t.shape[1]:
        raise ValueError(f"{t.shape[1]} patch tokens after dropping {num_prefix_tokens} prefix tokens "
                         "do not form a square grid")
    return t.reshape(len(t), h, h, t.shape[-1])


def resize_grid(t: torch.Tensor, grid: int, mode: str = "nearest") -> torch.Tensor:
    """A grid ``[B, h, w, d]`` resized to the player grid ``[B, G, G, d]`` (unchanged when equal).

    ``nearest`` repeats a coarse token for every player it covers; ``bilinear`` interpolates.
    """
    if t.shape[1:3] == (grid, grid):
        return t
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(t.permute(0, 3, 1, 2), size=(grid, grid), mode=mode, **kw).permute(0, 2, 3, 1)
