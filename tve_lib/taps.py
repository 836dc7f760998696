"""What a backbone's read-out tokens attend to, tapped during a pass (`attention_taps`).

A ViT or DeiT reads ``g(x)`` from its prefix (class, distillation) tokens, and each block's attention says how
much those tokens take from each patch. Removing a window changes ``g(x)`` through what they read there, a
property of how this backbone processes this image rather than of what the image shows, so the tapped TVE
explainer can be given it as more channels per player (`TVEConfig.tap_attention`, docs/method.md).
timm's attention modules compute the weights only in their unfused path, so the taps switch the fused
kernel off for the pass and read the softmax output at ``attn_drop`` (an identity at inference).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

TAP_ATTENTION = ("", "prefix")  # "": none; "prefix": the prefix tokens' attention to each player


def attention_blocks(model: nn.Module, n_layers: int) -> list[nn.Module]:
    """The attention modules of ``model``'s last ``n_layers`` blocks (timm ViT-family ``blocks[i].attn``)."""
    blocks = list(getattr(model, "blocks", []))[-n_layers:]
    attns = [getattr(b, "attn", None) for b in blocks]
    if not attns or not all(hasattr(a, "attn_drop") and hasattr(a, "fused_attn") for a in attns):
        raise ValueError(f"{type(model).__name__}: tap_attention needs timm attention blocks "
                         "(model.blocks[i].attn with attn_drop and fused_attn)")
    return attns


class AttentionTaps:
    """The weights captured by `attention_taps`: `prefix` gives the prefix tokens' attention to each patch."""

    def __init__(self, num_prefix: int) -> None:
        self.num_prefix = num_prefix
        self.weights: list[torch.Tensor] = []  # [B, H, N, N] per tapped block, in order

    def prefix(self) -> torch.Tensor:
        """``[B, n·k·H, h·w]``: for each tapped block, prefix token and head, the attention to each patch
        token, times the token count N (so a uniform row reads 1 whatever the size)."""
        if not self.weights:
            raise RuntimeError("no attention was captured: run the backbone's pass inside attention_taps")
        k, out = self.num_prefix, []
        for w in self.weights:
            b, h, n, _ = w.shape
            out.append(w[:, :, :k, k:].float().reshape(b, h * k, n - k) * n)
        return torch.cat(out, 1)


@contextmanager
def attention_taps(model: nn.Module, n_layers: int, num_prefix: int) -> Iterator[AttentionTaps]:
    """Capture the attention weights of ``model``'s last ``n_layers`` blocks during the passes run inside.

    The fused kernel is switched off for those blocks and restored after, with the hooks removed, also
    on error. ``num_prefix`` is the model's prefix-token count; a model without prefix tokens (Swin's
    pooled read-out) has none to tap and raises.
    """
    if num_prefix < 1:
        raise ValueError(f"{type(model).__name__} has no prefix tokens, so no read-out attention to tap; "
                         "tap_attention='prefix' needs a ViT-family backbone with a class token")
    attns = attention_blocks(model, n_layers)
    taps = AttentionTaps(num_prefix)
    fused = [a.fused_attn for a in attns]
    handles = []
    try:
        for a in attns:
            a.fused_attn = False
            handles.append(a.attn_drop.register_forward_hook(lambda m, i, o: taps.weights.append(o.detach())))
        yield taps
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
        for h in handles:
            h.remove()
