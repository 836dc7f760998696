"""The one protocol every explainer follows (Captum-style): ``explain(images, head, target)``.

``images`` are normalised model inputs ``[B, 3, S, S]``; ``head`` is the downstream head ``h``
on the frozen backbone ``g`` (the explained model is ``f = h ∘ g``); ``target`` is the class to
explain per image (default: the class predicted on the full image). The result is a signed,
unnormalised ``[B, G, G]`` map on the input's device, one value per player (pixel patch).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Backbone
from ..heads import check_head


class Explainer:
    """Base class: holds the frozen backbone and implements target selection."""

    name = "explainer"

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    @property
    def grid(self) -> int:
        return self.backbone.grid

    def model_fn(self, head: nn.Module):
        """``f = h ∘ g`` as a callable on normalised images, returning logits."""
        return lambda x: head(self.backbone.embed(x))

    @torch.no_grad()
    def resolve_target(self, images: torch.Tensor, head: nn.Module,
                       target: torch.Tensor | int | None) -> torch.Tensor:
        """``[B]`` long: the given class(es), or the class predicted on the full image."""
        check_head(head, self.backbone.embed_dim)
        if target is None:
            return head(self.backbone.embed(images)).argmax(-1)
        t = torch.as_tensor(target, device=images.device, dtype=torch.long)
        return t.expand(len(images)) if t.ndim == 0 else t

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        raise NotImplementedError
