"""A closed-form backbone for metric and explainer tests: the embedding is the patch means.

``g(x)_i`` = mean of channel 0 over patch i (8x8 grid of 4-px patches at 32 px), so a linear head
``h(e) = W e + b`` gives logits that are *additive* over the players: removing player i (pixels
-> 0) subtracts exactly ``W[:, i] · g(x)_i``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tve_lib.backbones import Backbone


class _PatchEmbed(nn.Module):
    patch_size = (4, 4)
    grid_size = (8, 8)


class PatchMeans(nn.Module):
    num_features = 64
    num_classes = 0

    def __init__(self):
        super().__init__()
        self.patch_embed = _PatchEmbed()

    def forward_features(self, x):
        return F.avg_pool2d(x[:, :1], 4).flatten(1)

    def forward_head(self, f, pre_logits=False):
        return f


def toy_backbone() -> Backbone:
    bb = Backbone(PatchMeans(), "toy", 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return bb.eval().requires_grad_(False)


def linear_head(num_classes: int = 3, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    h = nn.Linear(64, num_classes)
    with torch.no_grad():
        h.weight.copy_(torch.randn(num_classes, 64, generator=g))
        h.bias.copy_(torch.randn(num_classes, generator=g))
    return h.eval().requires_grad_(False)


def contributions(bb: Backbone, head: nn.Linear, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Exact per-player logit contributions ``W[y, i] · g(x)_i`` as ``[B, 8, 8]``."""
    return (head.weight[target] * bb.embed(x)).view(-1, 8, 8)
