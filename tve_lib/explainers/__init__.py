"""Explainers behind one protocol, ``explain(images, head, target=None) -> [B, G, G]``, and a registry.

``make_explainer(name, backbone, **kw)`` builds any registered explainer (the ``method`` names
written in the CSVs) without a Suite and without training; ``supports(name, backbone)`` says
whether it applies (rollout needs a ViT/DeiT block stack); ``explain_heads`` explains several
heads of one task through ``explain_tasks`` (shared model calls where the class says so).

Modules: `simple` (random, window occlusion), `gradient` (IG, Grad-CAM via Captum), `rollout`,
`sampling` (KernelSHAP, LIME), `amortized` (FastSHAP-style, trained per task and head), `tve`
(TVE; its networks in `tve_model`, pre-training in `tve_train`, stored targets in `tve_targets`),
`ltx` (pLTX / LTX; the network and loss in `ltx_model`), `xvec` (the explainability vector's self-explaining
model and its training).
"""

from __future__ import annotations

import torch
from torch import nn

from ..heads import check_targets
from . import amortized, gradient, ltx, rollout, sampling, simple, tve, xvec  # noqa: F401  (register)
from .base import Explainer
from .registry import explainer_class, make_explainer, register_explainer, registered, supports

#: the comparison set of notebooks 03/04, in table order (the ``method`` values of their CSVs)
EXPLAINERS = registered(compared=True)

__all__ = ["EXPLAINERS", "Explainer", "explain_heads", "explainer_class", "make_explainer",
           "register_explainer", "registered", "supports"]


def explain_heads(explainer: Explainer, images: torch.Tensor, heads: list[nn.Module],
                  targets: list[torch.Tensor | None] | None = None,
                  batch_size: int | None = None) -> list[torch.Tensor]:
    """Maps ``[B, G, G]`` of several heads, via ``explain_tasks`` (shared work where it can).

    ``batch_size`` chunks the images (bounds memory for gradient methods; results do not depend
    on it). Targets default to each head's prediction on the full image.
    """
    if not isinstance(heads, (list, tuple)):
        raise TypeError(f"heads must be a list of heads (one per downstream task), got {type(heads).__name__}")
    if targets is not None and (not isinstance(targets, (list, tuple)) or len(targets) != len(heads)):
        got = f"{len(targets)} targets" if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"{got} for {len(heads)} heads: give a list of one target (or None) per head")
    targets = [None if t is None else check_targets(t, len(images), h) for t, h in zip(targets or [None] * len(heads),
                                                                                         heads)]
    n = len(images)
    step = batch_size or n
    outs: list[list[torch.Tensor]] = [[] for _ in heads]
    for s in range(0, n, step):
        x = images[s:s + step]
        ts = [None if t is None else torch.as_tensor(t, device=x.device).expand(n)[s:s + step] for t in targets]
        for o, m in zip(outs, explainer.explain_tasks(x, heads, ts)):
            o.append(m)
    return [torch.cat(o) for o in outs]
