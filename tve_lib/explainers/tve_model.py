"""TVE explainer networks ``ψ(x) = (Φ⁺(x), Φ⁻(x))``, each ``[B, G², D]`` (docs/method.md §1).

Four shapes (suite choice, ``TVEConfig.arch``):

* ``"two"``: two independent ViT trunks on the player grid, each with a token/channel-mixing head
  (the official shape, with smaller trunks);
* ``"shared"``: one trunk, two heads;
* ``"tapped"``: no trunk of its own. The frozen backbone's last ``tap_layers`` token maps (timm's
  ``forward_intermediates``, resized to the player grid by `Backbone.player_tokens`) feed a few
  transformer blocks and the two heads. Explaining then costs about one backbone inference, and
  during dense pre-training the tokens are a fixed function of the image, so they are computed once.
* ``"tapped_global"``: ``"tapped"`` whose blocks also attend to one more token, the full-image embedding
  ``g(x)``: the image without a window is a global function of the image, and the remove branch is where
  the transfer error is (docs/benchmarks.md, "Which branch the transfer error comes from").

Every model takes its input through ``prepare(backbone, x) -> (inputs, base)``: images for the
trunk shapes, tapped tokens for ``"tapped"``; ``base`` is the full-image embedding ``g(x)`` that the
residual remove branch adds to its prediction (and that the transfer rule uses to pick ``y``).

Training and explaining call the model through `explainer_forward`: under the backbone's autocast
(`Backbone.training_autocast`, `Backbone.autocast`: bf16 on a GPU, and under "native" on a CPU with bf16
instructions) with float32 outputs, so losses and the transfer rule stay fp32; without an autocast dtype (fp32)
it is the plain call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..config import TVEConfig
from ..io import load_torch
from ..masking import window_radius

if TYPE_CHECKING:
    from ..backbones import Backbone

ARCHS = ("two", "shared", "tapped", "tapped_global")
TAPPED_ARCHS = ("tapped", "tapped_global")  # the shapes that read the backbone's tokens (`TappedModel`)


class MixHead(nn.Module):
    """Token mixing across the G² player tokens, then a channel MLP to the embedding size D."""

    def __init__(self, n_tokens: int, d_in: int, d_out: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_in)
        self.token_mlp = nn.Sequential(nn.Linear(n_tokens, n_tokens), nn.GELU(),
                                       nn.Linear(n_tokens, n_tokens))
        self.norm2 = nn.LayerNorm(d_in)
        self.channel_mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self.token_mlp(self.norm1(t).transpose(1, 2)).transpose(1, 2)
        return self.channel_mlp(self.norm2(t))


class Trunk(nn.Module):
    """A ViT on the player grid returning one token per player ``[B, G², d]``."""

    def __init__(self, img_size: int, patch: int, cfg: TVEConfig):
        super().__init__()
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=cfg.embed_dim,
                                     depth=cfg.depth, num_heads=cfg.num_heads, num_classes=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]


class _Heads(nn.Module):
    """The two branch heads and the residual remove branch, shared by every shape."""

    def _init_heads(self, n: int, d: int, embed_dim: int, cfg: TVEConfig) -> None:
        self.head_keep = MixHead(n, d, embed_dim, cfg.mix_hidden)
        self.head_remove = MixHead(n, d, embed_dim, cfg.mix_hidden)

    def _out(self, tk: torch.Tensor, tr: torch.Tensor, base: torch.Tensor | None):
        rem = self.head_remove(tr)
        if self.cfg.residual:
            if base is None:
                raise ValueError("a residual TVE model needs base = g(x), the full-image embedding")
            rem = rem + base.unsqueeze(1)  # occluding one window moves g(x) a little: predict the move
        return self.head_keep(tk), rem


class TVEModel(_Heads):
    """Trunk shapes ``"two"`` / ``"shared"``: normalised images ``[B, 3, S, S]`` -> ``(Φ⁺, Φ⁻)``."""

    tapped = False

    def __init__(self, img_size: int, grid: int, embed_dim: int, cfg: TVEConfig):
        super().__init__()
        if cfg.arch not in ("shared", "two"):
            raise ValueError(f"TVEModel takes arch 'shared' or 'two', got {cfg.arch!r} (see build_explainer)")
        self.cfg, self.img_size, self.grid, self.embed_dim = cfg, img_size, grid, embed_dim
        patch = img_size // grid
        self.trunk_keep = Trunk(img_size, patch, cfg)
        self.trunk_remove = Trunk(img_size, patch, cfg) if cfg.arch == "two" else None
        self._init_heads(grid * grid, cfg.embed_dim, embed_dim, cfg)

    def prepare(self, backbone, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, g(x))``: the trunks read the images themselves."""
        with torch.no_grad():
            return x, backbone.embed(x)

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``base``: the full-image embedding ``g(x)`` ``[B, D]``, required when ``cfg.residual``."""
        tk = self.trunk_keep(x)
        tr = self.trunk_remove(x) if self.trunk_remove is not None else tk
        return self._out(tk, tr, base)

    def init_from(self, backbone: nn.Module) -> int:
        """Copy every backbone parameter whose name and shape match the trunks'; returns count."""
        src = {k.removeprefix("model."): v for k, v in backbone.state_dict().items()}
        n = 0
        for trunk in (self.trunk_keep, self.trunk_remove):
            if trunk is None:
                continue
            own = trunk.vit.state_dict()
            match = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
            trunk.vit.load_state_dict(match, strict=False)
            n = len(match)
        return n


class TappedModel(_Heads):
    """Shapes ``"tapped"`` and ``"tapped_global"``: the backbone's own player tokens ``[B, G², C]`` (and, for
    ``"tapped_global"``, ``g(x)`` as one more token of the blocks) -> ``(Φ⁺, Φ⁻)``."""

    tapped = True

    def __init__(self, grid: int, token_dim: int, embed_dim: int, cfg: TVEConfig):
        super().__init__()
        self.cfg, self.grid, self.embed_dim, self.token_dim = cfg, grid, embed_dim, token_dim
        n, d = grid * grid, cfg.embed_dim
        self.proj = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, d))
        self.pos = nn.Parameter(torch.zeros(1, n, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(d, cfg.num_heads) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d)
        self._init_heads(n, d, embed_dim, cfg)
        # created last, so the other parameters are initialised as in "tapped" for the same seed
        self.global_proj = (nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, d))
                            if cfg.arch == "tapped_global" else None)

    def prepare(self, backbone, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, g(x))`` from one backbone pass."""
        tokens, base = tapped_inputs(backbone, x, self.cfg)
        if tokens.shape[-1] != self.token_dim:
            raise ValueError(f"this tapped explainer reads {self.token_dim}-channel tokens, the backbone "
                             f"gives {tokens.shape[-1]} (tap_layers={self.cfg.tap_layers})")
        return tokens, base

    def forward(self, tokens: torch.Tensor, base: torch.Tensor | None = None):
        t = self.proj(tokens) + self.pos
        if self.global_proj is None:
            t = self.norm(self.blocks(t))
        else:
            if base is None:
                raise ValueError("a tapped_global TVE model needs base = g(x), the full-image embedding")
            t = self.norm(self.blocks(torch.cat([self.global_proj(base).unsqueeze(1), t], 1)))[:, 1:]
        return self._out(t, t, base)


def explainer_forward(model: nn.Module, backbone: Backbone, inputs: torch.Tensor, base: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Φ⁺, Φ⁻) = model(inputs, base)`` under ``backbone``'s autocast (`Backbone.autocast`), as float32.

    The same precision in pre-training (`Backbone.training_autocast` while gradients are recorded), held-out
    losses and explaining (`Backbone.autocast`); bf16 needs no gradient scaling. Without an autocast dtype
    (fp32) this is exactly ``model(inputs, base)``.
    """
    training = torch.is_grad_enabled()
    if not hasattr(backbone, "pass_dtype") or (backbone.train_dtype if training else backbone.pass_dtype()) is None:
        return model(inputs, base)
    with backbone.training_autocast(model) if training else backbone.autocast():
        pk, pr = model(inputs, base)
    return pk.float(), pr.float()


@torch.no_grad()
def tapped_inputs(backbone: Backbone, x: torch.Tensor, cfg: TVEConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """What the tapped explainer reads, ``[B, G², C]``, and ``g(x)``: the backbone's last
    ``cfg.tap_layers`` token maps and, with ``cfg.tap_pixels``, each player's own pixels (the local
    content a window keeps, which the backbone's contextual tokens blur)."""
    tokens, base = backbone.player_tokens(x, cfg.tap_layers)
    if cfg.tap_pixels:
        p = backbone.img_size // backbone.grid
        pix = torch.nn.functional.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # [B, G², 3·p²]
        tokens = torch.cat([tokens, pix], -1)
    return tokens, base


def check_counts(cfg: TVEConfig, fields: tuple[str, ...]) -> None:
    """Each of ``cfg``'s ``fields`` is a count (>= 1), or a clear error naming it."""
    for field in fields:
        if getattr(cfg, field) < 1:
            raise ValueError(f"TVE {field} must be >= 1, got {getattr(cfg, field)}")


def check_config(backbone: Backbone, cfg: TVEConfig) -> None:
    """The explainer's shape and window radius in ``cfg``, for ``backbone``: a clear error before anything is
    built, computed or trained."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown TVE arch {cfg.arch!r}; expected one of: {', '.join(ARCHS)}")
    check_counts(cfg, ("depth", "embed_dim", "num_heads", "mix_hidden", "tap_layers"))
    if cfg.embed_dim % cfg.num_heads:
        raise ValueError(f"TVE embed_dim ({cfg.embed_dim}) must be a multiple of num_heads ({cfg.num_heads})")
    try:
        window_radius(cfg.radius, backbone.grid)
    except ValueError as e:
        raise ValueError(f"TVE radius on {backbone.name}: {e}") from None


def build_explainer(backbone: Backbone, cfg: TVEConfig) -> nn.Module:
    """A TVE model of shape ``cfg.arch`` for ``backbone`` (trunks initialised from it when asked)."""
    check_config(backbone, cfg)
    if cfg.arch in TAPPED_ARCHS:
        with torch.no_grad():
            blank = torch.zeros(1, 3, backbone.img_size, backbone.img_size, device=backbone.mean.device,
                                dtype=backbone.mean.dtype)
            dim = tapped_inputs(backbone, blank, cfg)[0].shape[-1]
        m = TappedModel(backbone.grid, dim, backbone.embed_dim, cfg)
    else:
        m = TVEModel(backbone.img_size, backbone.grid, backbone.embed_dim, cfg)
        if cfg.init_from_backbone:
            m.init_from(backbone.model)
    return m.to(backbone.mean.device)


def restore_explainer(state: dict, backbone: Backbone, cfg: TVEConfig) -> nn.Module:
    """The pre-trained TVE model of a checkpoint's ``state`` (``state["model"]``), in eval mode."""
    m = build_explainer(backbone, cfg)
    m.load_state_dict(state["model"])
    return m.eval()


def load_explainer(ckpt: str | Path, backbone: Backbone, cfg: TVEConfig) -> tuple[nn.Module, dict]:
    """A pre-trained TVE model from ``ckpt`` (and its history/radius)."""
    s = load_torch(ckpt)
    return restore_explainer(s, backbone, cfg), s
