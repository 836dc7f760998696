"""Attention rollout (Abnar & Zuidema 2020) for ViT/DeiT, batched and prefix-token aware.

timm's fused attention never materialises the attention matrix, so a forward hook on each
block's ``attn.qkv`` recomputes it from the projection: ``softmax(q_norm(q) k_norm(k)ᵀ · scale)``
(the same operations as timm's non-fused path). Per block: mean over heads, add the identity
(residual), renormalise rows; rollout = the product over blocks. The relevance of the patches is
the mean rollout row of the prefix tokens the head reads (CLS, and DeiT's distillation token),
or of all patch tokens for average-pooled models. Class-agnostic: one map per image serves
every head. Hand-written: Captum has no rollout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from .base import Explainer
from .registry import register_explainer


def supports_rollout(backbone: Backbone) -> bool:
    """Rollout needs a plain ViT block stack (``blocks[i].attn.qkv``); Swin has windows instead."""
    blocks = getattr(backbone.model, "blocks", None)
    return bool(blocks) and all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks)


@register_explainer
class Rollout(Explainer):
    """Attention rollout with residual identity (``head_fusion`` mean, optional discard ratio 0)."""

    name = "rollout"
    shares_tasks = True
    requires = "needs a ViT/DeiT block stack (blocks[i].attn.qkv)"

    @classmethod
    def supports(cls, backbone: Backbone) -> bool:
        return supports_rollout(backbone)

    def __init__(self, backbone: Backbone, residual: float = 0.5):
        super().__init__(backbone)
        if not supports_rollout(backbone):
            raise ValueError(f"attention rollout needs a ViT/DeiT block stack; backbone {backbone.name!r} "
                             f"({type(backbone.model).__name__}) has none")
        self.residual = residual

    @torch.no_grad()
    def attentions(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Head-averaged attention ``[B, N, N]`` of every block, from hooks on ``attn.qkv``."""
        mats: list[torch.Tensor] = []
        hooks = []
        for blk in self.backbone.model.blocks:
            attn = blk.attn

            def hook(module, inputs, qkv, attn=attn):
                b, n, _ = qkv.shape
                q, k, _ = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
                q, k = attn.q_norm(q), attn.k_norm(k)
                mats.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1))

            hooks.append(attn.qkv.register_forward_hook(hook))
        try:
            with self.backbone.uncompiled():  # a compiled graph would not call the hooks
                self.backbone.embed(images)
        finally:
            for h in hooks:
                h.remove()
        return mats

    @torch.no_grad()
    def explain_tasks(self, images: torch.Tensor, heads: list[nn.Module],
                      targets: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """The (class-agnostic) rollout map, returned once per head."""
        self.check_call(images, heads, targets)
        a = self.rollout(images)
        return [a for _ in heads]

    @torch.no_grad()
    def rollout(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, G, G]`` rollout relevance of the patch tokens."""
        self.backbone.check_input(images)
        model, npt = self.backbone.model, self.backbone.num_prefix_tokens
        roll = None
        for att in self.attentions(images):
            eye = torch.eye(att.shape[-1], device=att.device)
            att = self.residual * eye + (1 - self.residual) * att
            att = att / att.sum(-1, keepdim=True)
            roll = att if roll is None else att @ roll
        pooled_by_prefix = getattr(model, "global_pool", "token") == "token" and npt > 0
        rows = roll[:, :npt] if pooled_by_prefix else roll[:, npt:]
        rel = rows.mean(1)[:, npt:]
        gh, gw = model.patch_embed.grid_size
        rel = rel.reshape(len(images), 1, gh, gw)
        if (gh, gw) != (self.grid, self.grid):
            rel = F.adaptive_avg_pool2d(rel, self.grid) if gh > self.grid else F.interpolate(
                rel, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return rel.squeeze(1)

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.explain_tasks(images, [head], [target])[0]
