"""Explainers behind one protocol, ``explain(images, head, target=None) -> [B, G, G]``, and a registry.

``make_explainer(name, backbone, suite=None, **kw)`` builds any of ``EXPLAINERS`` (the ``method``
names written in the CSVs); ``supports(name, backbone)`` says whether it applies (rollout needs
a ViT/DeiT block stack); ``explain_heads`` explains several heads of one task, sharing the model
calls where an explainer can (``explain_tasks``: occlusion, rollout, KernelSHAP, LIME, TVE).

Modules: `simple` (random, window occlusion), `gradient` (IG, Grad-CAM via Captum), `rollout`,
`sampling` (KernelSHAP, LIME), `amortized` (FastSHAP-style, trained per task and head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbones import Backbone
from .base import Explainer

EXPLAINERS = ("random", "ig", "gradcam", "rollout", "occlusion", "kernelshap", "lime", "fastshap", "tve")
#: methods whose cost is a sample budget of model calls per image (the ``budget`` column)
SAMPLING = ("kernelshap", "lime")


def supports(name: str, backbone: Backbone) -> bool:
    """Whether explainer ``name`` applies to ``backbone`` (rollout: ViT/DeiT only)."""
    if name not in EXPLAINERS:
        raise KeyError(f"unknown explainer {name!r}; expected one of: {', '.join(EXPLAINERS)}")
    if name == "rollout":
        from .rollout import supports_rollout

        return supports_rollout(backbone)
    return True


def make_explainer(name: str, backbone: Backbone, suite: Any = None, **kw: Any) -> Explainer:
    """Explainer ``name`` on ``backbone``.

    Keyword arguments go to the explainer: ``seed`` (random, kernelshap, lime), ``budget``
    (kernelshap, lime; required), ``radius`` (occlusion), ``n_steps`` (ig). Defaults come from
    ``suite.profile.eval`` when a suite is given. ``tve`` needs ``suite`` (the pre-trained
    explainer of the backbone; ``kw`` = ``cfg``, ``train_subset``, λ⁺/λ⁻, ``pool``...);
    ``fastshap`` needs ``suite``, ``task`` and ``head`` (the head kind, e.g. "linear").
    """
    supports(name, backbone)
    ev = suite.profile.eval if suite is not None else None
    if name == "random":
        from .simple import Random

        return Random(backbone, kw.pop("seed", suite.seed if suite is not None else 0), **kw)
    if name == "occlusion":
        from .simple import Occlusion

        if suite is not None and "radius" not in kw:
            kw["radius"] = suite.tve_radius(backbone.name)
        return Occlusion(backbone, **kw)
    if name == "ig":
        from .gradient import IntegratedGradients

        if ev is not None:
            kw.setdefault("n_steps", ev.ig_steps)
            kw.setdefault("internal_batch_size", ev.masked_batch_size)
        return IntegratedGradients(backbone, **kw)
    if name == "gradcam":
        from .gradient import GradCAM

        return GradCAM(backbone, **kw)
    if name == "rollout":
        from .rollout import Rollout

        return Rollout(backbone, **kw)
    if name in SAMPLING:
        from .sampling import LIME, KernelSHAP

        if "budget" not in kw:
            raise TypeError(f"{name} needs budget= (model calls per image)")
        if suite is not None:
            kw.setdefault("seed", suite.seed)
            kw.setdefault("batch_size", ev.masked_batch_size)
        return (KernelSHAP if name == "kernelshap" else LIME)(backbone, **kw)
    if suite is None:
        raise ValueError(f"explainer {name!r} needs the suite (pre-trained / task-trained models)")
    if name == "tve":
        return suite.explainer(backbone.name, **kw)
    from .amortized import obtain_amortized

    if "task" not in kw or "head" not in kw:
        raise TypeError("fastshap needs task= and head= (the head kind it explains)")
    return obtain_amortized(suite, backbone.name, kw["task"], (kw["head"],), kw.get("eval_images"))[kw["head"]]


def explain_heads(explainer: Explainer, images: torch.Tensor, heads: list[nn.Module],
                  targets: list[torch.Tensor | None] | None = None,
                  batch_size: int | None = None) -> list[torch.Tensor]:
    """Maps ``[B, G, G]`` of several heads, via ``explain_tasks`` when the explainer shares work.

    ``batch_size`` chunks the images (bounds memory for gradient methods; results do not depend
    on it). Targets default to each head's prediction on the full image.
    """
    targets = targets or [None] * len(heads)
    n = len(images)
    step = batch_size or n
    outs: list[list[torch.Tensor]] = [[] for _ in heads]
    for s in range(0, n, step):
        x = images[s:s + step]
        ts = [None if t is None else torch.as_tensor(t, device=x.device).expand(n)[s:s + step] for t in targets]
        if hasattr(explainer, "explain_tasks"):
            maps = explainer.explain_tasks(x, heads, ts)
        else:
            maps = [explainer.explain(x, h, t) for h, t in zip(heads, ts)]
        for o, m in zip(outs, maps):
            o.append(m)
    return [torch.cat(o) for o in outs]
