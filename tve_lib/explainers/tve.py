"""TVE: meta-attribution pre-training and zero-shot attribution transfer (docs/method.md §1).

The explainer ``ψ(x) = (Φ⁺(x), Φ⁻(x))``, each ``[G², D]``, predicts in one forward pass, for
every player i, the backbone embedding of the image with only the window ``W_i`` kept
(``g(x ⊙ W_i)``) and with it removed (``g(x ⊙ (1 − W_i))``). It never sees a label or head.
Transfer to any head ``h`` and class ``y``: ``a_i = λ⁺ h_y(Φ⁺_i) − λ⁻ h_y(Φ⁻_i)``.

The networks (``"two"`` trunks, ``"shared"``, or ``"tapped"`` / ``"tapped_global"`` on the backbone's own
tokens) live in `tve_lib.explainers.tve_model`, the pre-training loop and its two samplers (dense stored
targets, online drawn windows) in `tve_lib.explainers.tve_train`; both are re-exported here.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..backbones import Backbone
from ..heads import check_head, head_logits, last_linear
from ..masking import MASKED_BATCH, pool_map, window_radius
from .base import Explainer
from .registry import register_explainer
from .tve_model import (
    ARCHS,
    TAPPED_ARCHS,
    MixHead,
    TappedModel,
    Trunk,
    TVEModel,
    build_explainer,
    explainer_forward,
    load_explainer,
    restore_explainer,
)
from .tve_targets import all_window_embeddings, exact_window_embeddings, window_targets

__all__ = ["ARCHS", "TAPPED_ARCHS", "MixHead", "TappedModel", "TVEModel", "Trunk", "build_explainer",
           "explainer_forward", "load_explainer", "restore_explainer", "TVE", "all_window_embeddings",
           "exact_window_embeddings",
           "heldout_losses", "pretrain",
           "transfer_rule", "window_occlusion", "window_targets"]


def transfer_rule(phi_keep: torch.Tensor, phi_remove: torch.Tensor, head: nn.Module,
                  target: torch.Tensor, lam_plus: float = 1.0, lam_minus: float = 1.0) -> torch.Tensor:
    """``a_i = λ⁺ h_y(Φ⁺_i) − λ⁻ h_y(Φ⁻_i)`` for ``Φ`` of shape ``[B, P, D]``; returns ``[B, P]``."""
    idx = target.view(-1, 1, 1).expand(-1, phi_keep.shape[1], 1)
    a = lam_plus * head_logits(head, phi_keep).gather(-1, idx).squeeze(-1)
    if lam_minus:
        a = a - lam_minus * head_logits(head, phi_remove).gather(-1, idx).squeeze(-1)
    return a


def window_occlusion(backbone: Backbone, head: nn.Module, x: torch.Tensor, target: torch.Tensor,
                     radius: int, chunk: int = MASKED_BATCH) -> torch.Tensor:
    """The exact quantity TVE amortises, ``f_y(x⊙W_i) − f_y(x⊙(1−W_i))``, as ``[B, G, G]``: a reference,
    so the backbone runs in fp32 whatever the profile's precision (`Backbone.full_precision`)."""
    check_head(head, backbone.embed_dim)  # before the 2·G² backbone calls
    ek, er = exact_window_embeddings(backbone, x, window_radius(radius, backbone.grid), chunk)
    g = backbone.grid
    return transfer_rule(ek, er, head, target).view(len(x), g, g)


#: TVE's transfer settings (λ⁺, λ⁻, pooling, the paper's last-layer rule), the constructor's keyword arguments
TRANSFER_SETTINGS = ("lam_plus", "lam_minus", "pool", "last_layer_only")


def check_transfer_settings(transfer: dict) -> None:
    """Keyword arguments meant for `TVE`'s transfer settings: a clear error for an unknown name or a λ that is not a
    number, before a caller pre-trains anything."""
    unknown = sorted(set(transfer) - set(TRANSFER_SETTINGS))
    if unknown:
        raise TypeError(f"unknown TVE setting(s) {unknown}; expected some of: {', '.join(TRANSFER_SETTINGS)}")
    for k in ("lam_plus", "lam_minus"):
        if k in transfer and (isinstance(transfer[k], bool) or not isinstance(transfer[k], numbers.Real)):
            raise TypeError(f"TVE's {k} takes a number, got {transfer[k]!r}")


# ----------------------------------------------------------------------------- explainer
@register_explainer
class TVE(Explainer):
    """Zero-shot TVE attributions for any head on the explainer's backbone."""

    name = "tve"
    training = "pretrain"
    trained_args = ("model", "radius")
    shares_tasks = True

    def __init__(self, backbone: Backbone, model: TVEModel, radius: int, lam_plus: float = 1.0,
                 lam_minus: float = 1.0, pool: bool = False, last_layer_only: bool = False):
        super().__init__(backbone)
        check_transfer_settings(dict(lam_plus=lam_plus, lam_minus=lam_minus))
        if model.embed_dim != backbone.embed_dim or model.grid != backbone.grid:
            raise ValueError(f"explainer predicts {model.embed_dim}-dim embeddings on a {model.grid} grid "
                             f"but backbone {backbone.name} has {backbone.embed_dim} on {backbone.grid}")
        self.model, self.radius = model.eval(), window_radius(radius, backbone.grid)
        self.lam_plus, self.lam_minus, self.pool, self.last_layer_only = (
            lam_plus, lam_minus, pool, last_layer_only)

    def variant(self, **kw) -> TVE:
        """The same explainer with other transfer settings (λ±, pooling, last-layer-only)."""
        args = dict(lam_plus=self.lam_plus, lam_minus=self.lam_minus, pool=self.pool,
                    last_layer_only=self.last_layer_only) | kw
        return TVE(self.backbone, self.model, self.radius, **args)

    @torch.no_grad()
    def window_predictions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(Φ⁺, Φ⁻, g(x))``: the predicted window embeddings ``[B, G², D]`` of both branches and the
        full-image embedding ``[B, D]``; every head's map is read from them (`map_from`)."""
        self.backbone.check_input(images)
        inputs, emb = self.model.prepare(self.backbone, images)
        phi_k, phi_r = explainer_forward(self.model, self.backbone, inputs, emb)
        return phi_k, phi_r, emb

    def map_from(self, phi_k: torch.Tensor, phi_r: torch.Tensor, head: nn.Module, target: torch.Tensor
                 ) -> torch.Tensor:
        """The ``[B, G, G]`` map of window embeddings ``Φ±`` for ``head`` and class ``target``, under this
        explainer's transfer settings (λ±, last-layer rule, pooling). Also takes exact embeddings, so a
        map can mix one predicted branch with the exact other (`tve_lib.studies.transfer`)."""
        check_head(head, self.backbone.embed_dim)
        h = last_linear(head) if self.last_layer_only else head
        if self.last_layer_only and h.in_features != phi_k.shape[-1]:
            raise ValueError(f"last_layer_only: the head's last layer takes {h.in_features} inputs, "
                             f"Φ has {phi_k.shape[-1]}; it is only defined when they agree")
        a = transfer_rule(phi_k, phi_r, h, target, self.lam_plus, self.lam_minus).view(-1, self.grid, self.grid)
        return pool_map(a, self.radius) if self.pool else a

    @torch.no_grad()
    def explain_tasks(self, images: torch.Tensor, heads: list[nn.Module],
                      targets: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Explain several heads at once: ψ and g run once, only the heads repeat."""
        targets = self.given_targets(images, heads, targets)  # before any pass
        phi_k, phi_r, emb = self.window_predictions(images)
        out = []
        for head, t in zip(heads, targets):
            check_head(head, self.backbone.embed_dim)
            t = head_logits(head, emb).argmax(-1) if t is None else t
            out.append(self.map_from(phi_k, phi_r, head, t))
        return out

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.explain_tasks(images, [head], [target])[0]


# ----------------------------------------------------------------------------- pre-training


from .tve_train import heldout_losses, pretrain  # noqa: E402  (tve_train uses the targets above)
