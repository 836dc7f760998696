"""LTX's explainer and loss (docs/method.md §3): the mask network, a deep copy of the explained backbone's
timm model with the official head on its patch tokens, the soft removal it is trained through, and the loss.
Training (pLTX, per-image fine-tuning) and the `Explainer` API are in `tve_lib.explainers.ltx`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..config import LTXConfig
from ..heads import head_logits
from ..masking import apply_mask
from ..token_grids import token_grid

MODES = ("predicted", "target")
PENALTIES = ("mean", "bce")
UPSAMPLES = ("bilinear", "nearest")
FROZEN_PREFIXES = ("patch_embed.", "pos_embed", "absolute_pos_embed")

def check_config(cfg: LTXConfig) -> None:
    """Raise a clear error for an unknown mode, penalty, upsampling or a non-positive size."""
    for val, allowed, what in ((cfg.mode, MODES, "mode"), (cfg.mask_penalty, PENALTIES, "mask_penalty"),
                               (cfg.upsample, UPSAMPLES, "upsample")):
        if val not in allowed:
            raise ValueError(f"unknown LTX {what} {val!r}; expected one of: {', '.join(allowed)}")
    for k in ("n_train", "epochs", "batch_size", "n_explain", "ft_steps", "ft_batch"):
        if getattr(cfg, k) < 1:
            raise ValueError(f"LTXConfig.{k} must be >= 1, got {getattr(cfg, k)}")


# ----------------------------------------------------------------------------- the explainer
class MaskHead(nn.Module):
    """Per-token ``Linear(d,d) → tanh → Linear(d,1) → sigmoid`` (the official LTX head)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., d]`` -> ``[...]`` in (0, 1)."""
        return torch.sigmoid(self.fc2(torch.tanh(self.fc1(tokens)))).squeeze(-1)


class LTXNet(nn.Module):
    """Normalised images ``[B, 3, S, S]`` -> masks ``[B, G, G]`` in (0, 1) on the backbone's grid.

    A deep copy of the backbone's model: the explained backbone is never touched. When the
    last layer's token grid differs from the player grid (Swin's final stage), the mask is
    interpolated bilinearly to the player grid.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.grid, self.num_prefix_tokens = backbone.grid, backbone.num_prefix_tokens
        self.encoder = copy.deepcopy(backbone.model)
        if hasattr(self.encoder, "reset_classifier"):
            self.encoder.reset_classifier(0)  # the copy's classifier is unused: keep it out of training
        self.encoder.requires_grad_(True)
        for name, p in self.encoder.named_parameters():
            p.requires_grad_(not name.startswith(FROZEN_PREFIXES))
        for mod in self.encoder.modules():
            if hasattr(mod, "fused_attn"):
                mod.fused_attn = False  # vmap has no fast batching rule for fused CPU attention
        self.head = MaskHead(int(self.encoder.num_features))
        self.to(backbone.mean.device).eval()  # no dropout in the explainer, as the official code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.head(token_grid(self.encoder, self.encoder.forward_features(x), self.num_prefix_tokens))
        if m.shape[-2:] != (self.grid, self.grid):
            m = F.interpolate(m.unsqueeze(-3), size=(self.grid, self.grid), mode="bilinear",
                              align_corners=False).squeeze(-3)
        return m

    def trainable(self) -> dict[str, torch.Tensor]:
        """The parameters fine-tuning updates (all but the frozen embeddings), by name."""
        return {k: p for k, p in self.named_parameters() if p.requires_grad}


def apply_soft_mask(backbone: Backbone, x: torch.Tensor, mask: torch.Tensor,
                    upsample: str = "bilinear") -> torch.Tensor:
    """``x ⊙ m`` by the shared removal operator; ``mask`` ``[B, G, G]`` in [0, 1].

    "nearest" keeps the player grid (exactly what the metrics remove); "bilinear" (official)
    upsamples to pixels first and applies the same operator with one player per pixel.
    """
    if upsample == "nearest":
        return backbone.mask(x, mask)
    if upsample != "bilinear":
        raise ValueError(f"unknown upsample {upsample!r}; expected one of: {', '.join(UPSAMPLES)}")
    s = x.shape[-1]
    px = F.interpolate(mask.unsqueeze(1), size=(s, s), mode="bilinear", align_corners=False).squeeze(1)
    return apply_mask(x, px, s, backbone.removal_value, backbone.removal_fill(x))


def ltx_loss(backbone: Backbone, head: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor,
             cfg: LTXConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image ``(loss, ce, penalty)``, each ``[B]``: ``CE(f(x ⊙ m), y) + λ·penalty(m)``."""
    logits = head_logits(head, backbone.embed(apply_soft_mask(backbone, x, mask, cfg.upsample)))
    ce = F.cross_entropy(logits, y, reduction="none")
    m = mask.flatten(1)
    if cfg.mask_penalty == "mean":
        pen = m.mean(1)
    elif cfg.mask_penalty == "bce":  # official: BCEWithLogits on the already-sigmoided mask
        pen = F.binary_cross_entropy_with_logits(m, torch.zeros_like(m), reduction="none").mean(1)
    else:
        raise ValueError(f"unknown mask_penalty {cfg.mask_penalty!r}; expected one of: {', '.join(PENALTIES)}")
    return ce + cfg.lambda_mask * pen, ce, pen


@torch.no_grad()
def training_targets(backbone: Backbone, head: nn.Module, x: torch.Tensor, labels: torch.Tensor | None,
                     mode: str) -> torch.Tensor:
    """The CE target: the class predicted on the full image, or the label ("target" mode)."""
    if mode == "predicted":
        return head_logits(head, backbone.embed(x)).argmax(-1)
    if mode == "target":
        if labels is None:
            raise ValueError("LTX mode 'target' needs the ground-truth labels")
        return labels.to(x.device)
    raise ValueError(f"unknown LTX mode {mode!r}; expected one of: {', '.join(MODES)}")
