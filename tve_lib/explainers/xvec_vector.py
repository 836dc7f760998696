"""Task arithmetic of the explainability vector (docs/method.md §4): ``τ = θ_b − θ_a`` over the parameters
every self-explaining model of a backbone shares, and ``θ + λ τ``. Re-exported by `tve_lib.explainers.xvec`."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .xvec import SelfExplainingModel

# parameters shared by every self-explaining model of a backbone, whatever its label space
SHARED_PREFIXES = ("backbone.model.", "expl_head.")


def shared_state(model: SelfExplainingModel) -> dict[str, torch.Tensor]:
    """The floating-point tensors every model of the backbone shares (backbone copy, explanation head)."""
    return {k: v for k, v in model.state_dict().items()
            if k.startswith(SHARED_PREFIXES) and v.is_floating_point()}


def task_vector(theta_b: SelfExplainingModel, theta_a: SelfExplainingModel) -> dict[str, torch.Tensor]:
    """``τ = θ_b − θ_a`` over the shared parameters (the classification heads are left out)."""
    sb, sa = shared_state(theta_b), shared_state(theta_a)
    if sb.keys() != sa.keys():
        diff = sorted(sb.keys() ^ sa.keys())
        raise ValueError(f"models do not share one architecture: parameters {diff[:5]} are in only one")
    for k in sb:
        if sb[k].shape != sa[k].shape:
            raise ValueError(f"parameter {k!r}: shape {tuple(sb[k].shape)} vs {tuple(sa[k].shape)}")
    return {k: (sb[k] - sa[k]).detach().clone() for k in sb}


def apply_vector(model: SelfExplainingModel, tau: dict[str, torch.Tensor], lam: float) -> SelfExplainingModel:
    """A copy of ``model`` with ``θ + λ τ`` on the shared parameters; ``λ = 0`` is an exact copy."""
    out = copy.deepcopy(model)
    if lam == 0:  # θ + 0·τ could turn -0.0 into +0.0: return the model bit for bit instead
        return out
    sd = out.state_dict()
    missing = [k for k in tau if k not in sd]
    if missing:
        raise ValueError(f"task vector has parameters the model lacks: {missing[:5]}")
    with torch.no_grad():
        for k, t in tau.items():
            if sd[k].shape != t.shape:
                raise ValueError(f"parameter {k!r}: model {tuple(sd[k].shape)} vs vector {tuple(t.shape)}")
            sd[k].add_(t.to(sd[k].device), alpha=lam)
    return out


def vector_norms(tau: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 norm of ``τ`` per component (``backbone``, ``expl_head``) and in total."""
    out = {"backbone": 0.0, "expl_head": 0.0}
    for k, t in tau.items():
        out["backbone" if k.startswith("backbone.") else "expl_head"] += float((t.double() ** 2).sum())
    out["total"] = out["backbone"] + out["expl_head"]
    return {k: math.sqrt(v) for k, v in out.items()}
