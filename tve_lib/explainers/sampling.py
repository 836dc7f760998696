"""Sampling explainers on the patch players: KernelSHAP and LIME with a budget of model calls.

Both draw ONE coalition tensor per call (from a generator seeded with ``seed``), shared by every
image, evaluate it with batched backbone calls (`tve_lib.metrics.masked_embeddings`) and score
each head from the same embeddings (`explain_tasks`), then solve one regression for the whole
batch (`tve_lib.shapley`). The game is the softmax probability of the explained class.

``budget`` = model calls per image: KernelSHAP spends 2 on the empty and full image and
``budget − 2`` (rounded down to even) on paired kernel samples; LIME spends ``budget`` on its
samples, the first being the full image. Players are the ``G×G`` patches, or groups of them
(``groups``: ``[n, G*G]`` bool, e.g. `tve_lib.shapley.player_groups`); maps are always ``[B, G, G]``
(a group's value is spread evenly over its patches).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Backbone
from ..heads import head_logits
from ..masking import MASKED_BATCH
from ..metrics import class_prob, masked_embeddings
from ..shapley import expand_groups, kernel_coalitions, kernel_shap, lime, lime_coalitions
from .base import Explainer
from .registry import register_explainer


class _Sampler(Explainer):
    sampling = True
    shares_tasks = True
    edges = True  # evaluates the empty and full images besides its samples

    def __init__(self, backbone: Backbone, budget: int, seed: int = 0, groups: torch.Tensor | None = None,
                 batch_size: int = MASKED_BATCH, max_embeddings: int = 65536):
        super().__init__(backbone)
        if isinstance(budget, bool) or not float(budget).is_integer() or int(budget) < 1:
            raise ValueError(f"{self.name}: budget must be a whole number of model calls per image >= 1, "
                             f"got {budget!r}")
        self.budget, self.seed, self.batch_size = int(budget), seed, batch_size
        self.groups = groups
        self.max_embeddings = max_embeddings  # bounds memory: images per chunk × samples
        self.n = len(groups) if groups is not None else backbone.n_players

    def coalitions(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def solve(self, z: torch.Tensor, v: torch.Tensor, v_empty: torch.Tensor, v_full: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _to_map(self, phi: torch.Tensor) -> torch.Tensor:
        if self.groups is not None:
            g = self.groups.to(phi.device, phi.dtype)
            phi = (phi / g.sum(1)) @ g
        return phi.view(-1, self.grid, self.grid)

    @torch.no_grad()
    def explain_tasks(self, images: torch.Tensor, heads: list[nn.Module],
                      targets: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Maps for several heads from one set of coalition embeddings."""
        self.backbone.check_input(images)
        targets = self.given_targets(images, heads, targets)  # on the whole batch; sliced per chunk below
        z = self.coalitions(torch.Generator().manual_seed(self.seed)).to(images.device)
        keep = expand_groups(z, self.groups) if self.groups is not None else z
        p = self.backbone.n_players
        edge = torch.stack([torch.zeros(p, dtype=torch.bool), torch.ones(p, dtype=torch.bool)]).to(images.device)
        chunk = max(1, self.max_embeddings // len(z))
        out: list[list[torch.Tensor]] = [[] for _ in heads]
        for s in range(0, len(images), chunk):
            x = images[s:s + chunk]
            emb = masked_embeddings(self.backbone, x, keep, self.batch_size)
            # the empty and full images: LIME's first sample already is the full image
            e01 = masked_embeddings(self.backbone, x, edge, self.batch_size) if self.edges else None
            e_full = e01[:, 1] if self.edges else emb[:, 0]
            for j, (h, t) in enumerate(zip(heads, targets)):
                t = head_logits(h, e_full).argmax(-1) if t is None else t[s:s + chunk]
                v = class_prob(h, emb, t)
                v0 = class_prob(h, e01[:, 0], t) if self.edges else None
                out[j].append(self._to_map(self.solve(z, v, v0, class_prob(h, e_full, t))))
        return [torch.cat(o) for o in out]

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.explain_tasks(images, [head], [target])[0]


@register_explainer
class KernelSHAP(_Sampler):
    """KernelSHAP: paired Shapley-kernel samples, exact efficiency (Covert & Lee's constrained LS)."""

    name = "kernelshap"

    def coalitions(self, generator: torch.Generator) -> torch.Tensor:
        if self.budget < 4:
            raise ValueError(f"KernelSHAP budget must be >= 4 model calls per image, got {self.budget}")
        return kernel_coalitions(self.n, self.budget - 2, generator)

    def solve(self, z, v, v_empty, v_full):
        return kernel_shap(z, v, v_empty, v_full)


@register_explainer
class LIME(_Sampler):
    """LIME (``lime_image`` defaults: Bernoulli(½) samples, cosine kernel width 0.25, ridge α = 1)."""

    name = "lime"
    edges = False

    def __init__(self, backbone: Backbone, budget: int, seed: int = 0, groups: torch.Tensor | None = None,
                 batch_size: int = MASKED_BATCH, kernel_width: float = 0.25, alpha: float = 1.0):
        super().__init__(backbone, budget, seed, groups, batch_size)
        self.kernel_width, self.alpha = kernel_width, alpha

    def coalitions(self, generator: torch.Generator) -> torch.Tensor:
        return lime_coalitions(self.n, self.budget, generator)

    def solve(self, z, v, v_empty, v_full):
        return lime(z, v, self.kernel_width, self.alpha)
