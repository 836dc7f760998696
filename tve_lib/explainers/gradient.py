"""Gradient explainers through Captum: Integrated Gradients and Grad-CAM.

* `IntegratedGradients`: Captum's `IntegratedGradients` on ``f = h ∘ g`` with the removal value
  as baseline (0 in normalised space, the same "absent" as every metric); pixel attributions are
  summed over channels and each patch, which keeps completeness on the player grid.
* `GradCAM`: Captum's `LayerGradCam` on the patch tokens of the last block. Captum expects a
  channel-first ``[B, C, h, w]`` layer, which transformer blocks do not produce, so a hook routes
  the tokens through a tiny identity module (`TokenMap`) that *is* a ``[B, C, h, w]`` map:
  ViT/DeiT: the tokens entering the last block (its output patch tokens never reach the CLS /
  distillation tokens the head reads, so their gradient is zero; this is the usual
  ``blocks[-1].norm1`` choice), without the prefix tokens, reshaped with the grid the model
  reports (``patch_embed.grid_size``); Swin: the last stage's NHWC output, permuted (it is
  average-pooled, so every token reaches the head). The map is resized to the player grid when
  the block's grid differs (Swin's last stage is coarser).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import LayerGradCam
from torch import nn

from ..backbones import Backbone
from .base import Explainer
from .registry import register_explainer


def pixels_to_players(attr: torch.Tensor, grid: int) -> torch.Tensor:
    """Sum pixel attributions ``[B, C, S, S]`` over channels and each patch -> ``[B, G, G]``."""
    s = attr.shape[-1]
    if s % grid:
        raise ValueError(f"image size {s} is not a multiple of the grid {grid}")
    p = s // grid
    return F.avg_pool2d(attr.sum(1, keepdim=True), p).squeeze(1) * (p * p)


def resize_map(a: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, h, w]`` -> ``[B, G, G]``: bilinear up-sampling to a finer grid, area pooling to a coarser one."""
    if a.shape[-2:] == (grid, grid):
        return a
    a = a.unsqueeze(1)
    if a.shape[-1] < grid:
        return F.interpolate(a, size=(grid, grid), mode="bilinear", align_corners=False).squeeze(1)
    return F.adaptive_avg_pool2d(a, grid).squeeze(1)


@register_explainer
class IntegratedGradients(Explainer):
    """Captum IG with ``n_steps`` (Gauss-Legendre) from the removal-value baseline."""

    name = "ig"

    def __init__(self, backbone: Backbone, n_steps: int = 32, internal_batch_size: int = 256):
        super().__init__(backbone)
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"IG's n_steps must be a whole number >= 1 (points on the path), got {n_steps!r}")
        self.n_steps, self.internal_batch_size = n_steps, internal_batch_size

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        self.backbone.check_input(images)
        t = self.resolve_target(images, head, target)
        ig = CaptumIG(self.model_fn(head))
        with torch.enable_grad():
            attr = ig.attribute(images, baselines=self.backbone.removal_value, target=t, n_steps=self.n_steps,
                                internal_batch_size=self.internal_batch_size)
        return pixels_to_players(attr.detach(), self.grid)


class TokenMap(nn.Module):
    """Identity on a ``[B, C, h, w]`` view of a block's tokens: the layer Captum's Grad-CAM hooks."""

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap


def last_block(model: nn.Module) -> tuple[nn.Module, str]:
    """The last transformer block of a timm model and its layout: ``"tokens"`` or ``"nhwc"``."""
    if hasattr(model, "blocks") and len(model.blocks):
        return model.blocks[-1], "tokens"
    if hasattr(model, "layers") and len(model.layers):
        return model.layers[-1], "nhwc"
    raise ValueError(f"Grad-CAM: {type(model).__name__} has neither .blocks (ViT/DeiT) nor .layers (Swin)")


@register_explainer
class GradCAM(Explainer):
    """Captum `LayerGradCam` (ReLU on, channel-summed) on the last block's patch tokens."""

    name = "gradcam"

    def __init__(self, backbone: Backbone, relu: bool = True):
        super().__init__(backbone)
        self.relu = relu
        self.token_map = TokenMap()
        self.block, self.layout = last_block(backbone.model)

    def _tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """ViT/DeiT tokens ``[B, prefix + h*w, D]`` through `TokenMap` as ``[B, D, h, w]`` and back."""
        npt = self.backbone.num_prefix_tokens
        gh, gw = self.backbone.model.patch_embed.grid_size
        if tokens.ndim != 3 or tokens.shape[1] != npt + gh * gw:
            raise ValueError(f"Grad-CAM: expected [B, {npt}+{gh}*{gw}, D] tokens at the last block, "
                             f"got {tuple(tokens.shape)}")
        prefix, patches = tokens[:, :npt], tokens[:, npt:]
        fmap = self.token_map(patches.transpose(1, 2).reshape(len(tokens), -1, gh, gw))
        return torch.cat([prefix, fmap.flatten(2).transpose(1, 2)], 1)

    @contextmanager
    def _hooked(self):
        if self.layout == "tokens":
            def pre_hook(module, args):
                return (self._tokens_to_map(args[0]), *args[1:])

            h = self.block.register_forward_pre_hook(pre_hook)
        else:
            def hook(module, inputs, out):
                if out.ndim != 4:
                    raise ValueError(f"Grad-CAM: expected NHWC output of the last stage, got {tuple(out.shape)}")
                return self.token_map(out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

            h = self.block.register_forward_hook(hook)
        try:
            yield
        finally:
            h.remove()

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        self.backbone.check_input(images)
        t = self.resolve_target(images, head, target)
        cam = LayerGradCam(self.model_fn(head), self.token_map)
        # eager passes: a compiled graph would not call the hook; under autocast the hooked tokens are
        # bf16, so the map is returned in the images' dtype like every other
        with self._hooked(), self.backbone.uncompiled(), torch.enable_grad():
            a = cam.attribute(images, target=t, relu_attributions=self.relu)
        return resize_map(a.detach().squeeze(1).to(images.dtype), self.grid)
