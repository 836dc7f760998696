"""TVE: meta-attribution pre-training and zero-shot attribution transfer (METHOD.md §1).

The explainer ``ψ(x) = (Φ⁺(x), Φ⁻(x))``, each ``[G², D]``, predicts in one forward pass, for
every player i, the backbone embedding of the image with only the window ``W_i`` kept
(``g(x ⊙ W_i)``) and with it removed (``g(x ⊙ (1 − W_i))``). It never sees a label or head.
Transfer to any head ``h`` and class ``y``: ``a_i = λ⁺ h_y(Φ⁺_i) − λ⁻ h_y(Φ⁻_i)``.

Architectures (suite choice, configurable): ``"two"`` independent ViT trunks each with a
token/channel-mixing head (the official shape), or ``"shared"``: one trunk, two heads. The trunk
is a timm ViT on the backbone's player grid, initialised from the backbone's weights where the
names and shapes agree. Pre-training runs unchanged under ``torchrun`` (DistributedDataParallel).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from tqdm.auto import tqdm

from .backbones import Backbone
from .config import TVEConfig
from .data import ImageSet, iter_batches
from .explainers.base import Explainer
from .heads import check_head, last_linear
from .io import checkpoint, load_torch, resume, save_torch
from .masking import default_radius, pool_map, windows


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


class TVEModel(nn.Module):
    """``ψ``: normalised images ``[B, 3, S, S]`` -> ``(Φ⁺, Φ⁻)``, each ``[B, G², D]``."""

    def __init__(self, img_size: int, grid: int, embed_dim: int, cfg: TVEConfig):
        super().__init__()
        if cfg.arch not in ("shared", "two"):
            raise ValueError(f"unknown TVE arch {cfg.arch!r}; expected 'shared' or 'two'")
        self.cfg, self.img_size, self.grid, self.embed_dim = cfg, img_size, grid, embed_dim
        patch = img_size // grid
        n = grid * grid
        self.trunk_keep = Trunk(img_size, patch, cfg)
        self.trunk_remove = Trunk(img_size, patch, cfg) if cfg.arch == "two" else None
        self.head_keep = MixHead(n, cfg.embed_dim, embed_dim, cfg.mix_hidden)
        self.head_remove = MixHead(n, cfg.embed_dim, embed_dim, cfg.mix_hidden)

    def forward(self, x: torch.Tensor, base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``base``: the full-image embedding ``g(x)`` ``[B, D]``, required when ``cfg.residual``."""
        tk = self.trunk_keep(x)
        tr = self.trunk_remove(x) if self.trunk_remove is not None else tk
        rem = self.head_remove(tr)
        if self.cfg.residual:
            if base is None:
                raise ValueError("a residual TVE model needs base = g(x), the full-image embedding")
            rem = rem + base.unsqueeze(1)  # occluding one window moves g(x) a little: predict the move
        return self.head_keep(tk), rem

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


def build_explainer(backbone: Backbone, cfg: TVEConfig) -> TVEModel:
    """A TVE model for ``backbone`` (trunk initialised from it when ``cfg.init_from_backbone``)."""
    m = TVEModel(backbone.img_size, backbone.grid, backbone.embed_dim, cfg)
    if cfg.init_from_backbone:
        m.init_from(backbone.model)
    return m.to(backbone.mean.device)


# ----------------------------------------------------------------------------- targets
@torch.no_grad()
def window_targets(backbone: Backbone, x: torch.Tensor, centres: torch.Tensor, radius: int,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``g(x ⊙ W_c)`` and ``g(x ⊙ (1 − W_c))`` for centres ``[B, K]``: two ``[B, K, D]`` tensors."""
    win = windows(backbone.grid, radius, x.device)[centres]  # [B, K, P]
    b, k = centres.shape
    keep = backbone.mask(x, win).flatten(0, 1)  # [B*K, 3, S, S]
    rem = backbone.mask(x, ~win).flatten(0, 1)
    both = torch.cat([keep, rem])
    e = torch.cat([backbone.embed(both[s:s + chunk]) for s in range(0, len(both), chunk)])
    return e[: b * k].view(b, k, -1), e[b * k:].view(b, k, -1)


@torch.no_grad()
def all_window_embeddings(backbone: Backbone, x: torch.Tensor, radius: int,
                          chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``Φ``: window-kept and window-removed embeddings for every player, ``[B, G², D]`` x 2.

    2·G² backbone passes per image; shared by every head, so one call serves all heads.
    """
    p = backbone.n_players
    centres = torch.arange(p, device=x.device).expand(len(x), p)
    return window_targets(backbone, x, centres, radius, chunk)


def transfer_rule(phi_keep: torch.Tensor, phi_remove: torch.Tensor, head: nn.Module,
                  target: torch.Tensor, lam_plus: float = 1.0, lam_minus: float = 1.0) -> torch.Tensor:
    """``a_i = λ⁺ h_y(Φ⁺_i) − λ⁻ h_y(Φ⁻_i)`` for ``Φ`` of shape ``[B, P, D]``; returns ``[B, P]``."""
    idx = target.view(-1, 1, 1).expand(-1, phi_keep.shape[1], 1)
    a = lam_plus * head(phi_keep).gather(-1, idx).squeeze(-1)
    if lam_minus:
        a = a - lam_minus * head(phi_remove).gather(-1, idx).squeeze(-1)
    return a


def window_occlusion(backbone: Backbone, head: nn.Module, x: torch.Tensor, target: torch.Tensor,
                     radius: int, chunk: int = 1024) -> torch.Tensor:
    """The exact quantity TVE amortises, ``f_y(x⊙W_i) − f_y(x⊙(1−W_i))``, as ``[B, G, G]``."""
    ek, er = all_window_embeddings(backbone, x, radius, chunk)
    g = backbone.grid
    return transfer_rule(ek, er, head, target).view(len(x), g, g)


# ----------------------------------------------------------------------------- explainer
class TVE(Explainer):
    """Zero-shot TVE attributions for any head on the explainer's backbone."""

    name = "tve"

    def __init__(self, backbone: Backbone, model: TVEModel, radius: int, lam_plus: float = 1.0,
                 lam_minus: float = 1.0, pool: bool = False, last_layer_only: bool = False):
        super().__init__(backbone)
        if model.embed_dim != backbone.embed_dim or model.grid != backbone.grid:
            raise ValueError(f"explainer predicts {model.embed_dim}-dim embeddings on a {model.grid} grid "
                             f"but backbone {backbone.name} has {backbone.embed_dim} on {backbone.grid}")
        self.model, self.radius = model.eval(), radius
        self.lam_plus, self.lam_minus, self.pool, self.last_layer_only = (
            lam_plus, lam_minus, pool, last_layer_only)

    def variant(self, **kw) -> TVE:
        """The same explainer with other transfer settings (λ±, pooling, last-layer-only)."""
        args = dict(lam_plus=self.lam_plus, lam_minus=self.lam_minus, pool=self.pool,
                    last_layer_only=self.last_layer_only) | kw
        return TVE(self.backbone, self.model, self.radius, **args)

    @torch.no_grad()
    def explain_tasks(self, images: torch.Tensor, heads: list[nn.Module],
                      targets: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Explain several heads at once: ψ and g run once, only the heads repeat."""
        self.backbone.check_input(images)
        targets = targets or [None] * len(heads)
        need_pred = any(t is None for t in targets)
        emb = self.backbone.embed(images) if need_pred else None
        residual = getattr(getattr(self.model, "cfg", None), "residual", False)
        if residual and emb is None:
            emb = self.backbone.embed(images)
        phi_k, phi_r = self.model(images, emb) if residual else self.model(images)
        g, out = self.grid, []
        for head, t in zip(heads, targets):
            check_head(head, self.backbone.embed_dim)
            t = head(emb).argmax(-1) if t is None else self.resolve_target(images, head, t)
            h = last_linear(head) if self.last_layer_only else head
            if self.last_layer_only and h.in_features != phi_k.shape[-1]:
                raise ValueError(f"last_layer_only: the head's last layer takes {h.in_features} inputs, "
                                 f"Φ has {phi_k.shape[-1]}; it is only defined when they agree")
            a = transfer_rule(phi_k, phi_r, h, t, self.lam_plus, self.lam_minus).view(-1, g, g)
            out.append(pool_map(a, self.radius) if self.pool else a)
        return out

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.explain_tasks(images, [head], [target])[0]


# ----------------------------------------------------------------------------- pre-training
def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return f


@torch.no_grad()
def heldout_losses(model: nn.Module, backbone: Backbone, x: torch.Tensor, centres: torch.Tensor,
                   tk: torch.Tensor, tr: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Held-out MSE of both branches, and the trivial predictor's (mean target) for the ratio."""
    model.eval()
    se_k = se_r = 0.0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        pk, pr = model(xb, backbone.embed(xb)) if model.cfg.residual else model(xb)
        c = centres[s:s + batch_size]
        idx = c.unsqueeze(-1).expand(-1, -1, pk.shape[-1])
        se_k += ((pk.gather(1, idx) - tk[s:s + batch_size]) ** 2).sum().item()
        se_r += ((pr.gather(1, idx) - tr[s:s + batch_size]) ** 2).sum().item()
    n = tk.numel()
    triv_k = ((tk - tk.mean((0, 1))) ** 2).mean().item()
    triv_r = ((tr - tr.mean((0, 1))) ** 2).mean().item()
    return {"loss_keep": se_k / n, "loss_remove": se_r / n, "trivial_keep": triv_k,
            "trivial_remove": triv_r}


def pretrain(model: TVEModel, backbone: Backbone, train: ImageSet, val: ImageSet, cfg: TVEConfig,
             ckpt: Path, seed: int, radius: int | None = None, progress: bool = True,
             on_step: Callable[[int, float, float], None] | None = None) -> list[dict]:
    """Pre-train ``model`` on the upstream set; one checkpoint per epoch, resumes after interruption.

    Each step draws K window centres per image uniformly over the grid (same generator on every
    rank), computes both targets with the frozen backbone and minimises the two MSEs (mean over
    D, K and the batch). Under torchrun each rank takes its slice of the global batch and DDP
    averages gradients, so the trajectory matches a one-process run of the same global batch.
    Returns rows ``epoch, split, loss_keep, loss_remove, trivial_keep, trivial_remove, seconds``.
    """
    rank, world = _dist()
    device = backbone.mean.device
    radius = radius if radius is not None else (cfg.radius or default_radius(backbone.grid))
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index]
                                                  if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = min(cfg.n_images, len(train))
    steps = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(cfg.warmup_frac * total))))
    objs = {"model": model, "opt": opt, "sched": sched}
    part = Path(ckpt).with_suffix(".partial.pt")
    state = resume(part, objs) or {"epoch": 0, "history": [], "seconds": 0.0}

    # a fixed held-out probe: the same images and centres every epoch
    gv = torch.Generator().manual_seed(10_000 + seed)
    vidx = torch.randperm(len(val), generator=gv)[: cfg.n_heldout]
    vx = torch.cat([backbone.normalize(r.to(device)) for r, _, _ in iter_batches(val, 256, vidx)])
    vc = torch.randint(0, backbone.n_players, (len(vx), cfg.windows_per_image), generator=gv).to(device)
    vtk, vtr = window_targets(backbone, vx, vc, radius)

    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(train), generator=gen)[:n]
        net.train()
        sk = sr = 0.0
        seen = 0
        bar = tqdm(range(steps), desc=f"TVE {backbone.name} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress or rank != 0, leave=False)
        for step in bar:
            gidx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            centres = torch.randint(0, backbone.n_players, (len(gidx), cfg.windows_per_image),
                                    generator=gen)
            lo, hi = (len(gidx) * rank) // world, (len(gidx) * (rank + 1)) // world
            raw, _, _ = train.get(gidx[lo:hi])
            x = backbone.normalize(raw.to(device))
            c = centres[lo:hi].to(device)
            tk, tr = window_targets(backbone, x, c, radius)
            pk, pr = net(x, backbone.embed(x).detach()) if cfg.residual else net(x)
            idx = c.unsqueeze(-1).expand(-1, -1, pk.shape[-1])
            lk = ((pk.gather(1, idx) - tk) ** 2).mean()
            lr = ((pr.gather(1, idx) - tr) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            (cfg.keep_weight * lk + lr).backward()
            opt.step()
            sched.step()
            losses = torch.stack([lk.detach(), lr.detach()]) * len(x)
            if world > 1:
                dist.all_reduce(losses)
            sk, sr, seen = sk + losses[0].item(), sr + losses[1].item(), seen + len(gidx)
            if on_step is not None:
                on_step(epoch * steps + step, losses[0].item() / len(gidx), losses[1].item() / len(gidx))
            bar.set_postfix(keep=f"{sk / seen:.4f}", remove=f"{sr / seen:.4f}")
        state["seconds"] += time.time() - t0
        ho = heldout_losses(model, backbone, vx, vc, vtk, vtr, cfg.batch_size)
        state["history"] += [
            {"epoch": epoch + 1, "split": "train", "loss_keep": sk / seen, "loss_remove": sr / seen,
             "seconds": state["seconds"]},
            {"epoch": epoch + 1, "split": "heldout", **ho, "seconds": state["seconds"]},
        ]
        state["epoch"] = epoch + 1
        if rank == 0:
            checkpoint(part, objs, **state)
        if world > 1:
            dist.barrier()
    model.eval()
    if rank == 0:
        save_torch({"model": model.state_dict(), "history": state["history"], "radius": radius,
                    "cfg": cfg}, ckpt)
        if part.exists():
            part.unlink()
    return state["history"]


def load_explainer(ckpt: Path, backbone: Backbone, cfg: TVEConfig) -> tuple[TVEModel, dict]:
    """A pre-trained TVE model from ``ckpt`` (and its history/radius)."""
    s = load_torch(ckpt)
    m = TVEModel(backbone.img_size, backbone.grid, backbone.embed_dim, cfg).to(backbone.mean.device)
    m.load_state_dict(s["model"])
    return m.eval(), s
