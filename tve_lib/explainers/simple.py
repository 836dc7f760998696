"""Model-agnostic reference explainers: `Random` and window `Occlusion`.

Occlusion is the *window* occlusion TVE amortises, ``f_y(x ⊙ W_i) − f_y(x ⊙ (1 − W_i))`` on the
head's logits, computed exactly with ``2·G²`` backbone calls per image (`tve_lib.explainers.tve`'s
`window_occlusion`; the embeddings are shared by all heads of a task). Captum's `Occlusion`
slides a remove-only window and re-runs the head per window; the keep branch is what it lacks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Backbone
from ..masking import MASKED_BATCH, window_radius
from ..seeds import image_seeds
from .base import Explainer
from .registry import register_explainer


@register_explainer
class Random(Explainer):
    """Uniform random maps, one generator per image seeded from ``seed`` and the image itself.

    Deterministic, and the map of an image does not depend on the batch it is explained in (a
    generator per call would give images 3–5 of a second batch the maps of images 0–2).
    """

    name = "random"

    def __init__(self, backbone: Backbone, seed: int = 0):
        super().__init__(backbone)
        self.seed = seed

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        self.check_call(images, [head], [target])
        return torch.stack([torch.rand(self.grid, self.grid, generator=torch.Generator().manual_seed(s))
                            for s in image_seeds(images, self.seed)]).to(images.device)


@register_explainer
class Occlusion(Explainer):
    """Exact window occlusion (keep-window minus remove-window logit) with Chebyshev ``radius``.

    ``reuse``: read and fill the backbone's window cache (`exact_window_embeddings`, fp32) instead of
    computing every call, for views that show an image's map without timing it (the explorer): an image
    an earlier notebook took as its exact reference costs no backbone pass. Compared methods keep the
    default, so their seconds are the cost of the map.
    """

    name = "occlusion"
    shares_tasks = True

    def __init__(self, backbone: Backbone, radius: int | None = None, batch_size: int = MASKED_BATCH,
                 reuse: bool = False):
        super().__init__(backbone)
        self.radius = window_radius(radius, backbone.grid)
        self.batch_size = batch_size
        self.reuse = reuse

    @torch.no_grad()
    def explain_tasks(self, images: torch.Tensor, heads: list[nn.Module],
                      targets: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Maps for several heads from one set of ``2·G²`` window embeddings per image."""
        from .tve import all_window_embeddings, exact_window_embeddings, transfer_rule

        self.backbone.check_input(images)
        targets = self.given_targets(images, heads, targets)  # before the 2·G² passes
        windows = exact_window_embeddings if self.reuse else all_window_embeddings
        ek, er = windows(self.backbone, images, self.radius, self.batch_size)
        g = self.grid
        return [transfer_rule(ek, er, h, self.resolve_target(images, h, None) if t is None else t).view(-1, g, g)
                for h, t in zip(heads, targets)]

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.explain_tasks(images, [head], [target])[0]
