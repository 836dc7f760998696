"""An amortised task-specific Shapley explainer in the FastSHAP / ViT-Shapley style.

``φ_θ(x) ∈ R^{G²×C}``: a ViT on the player grid (initialised from the explained backbone's
weights where names and shapes agree, as ViT-Shapley initialises from the classifier) with a
linear read-out per patch token and class. Trained per task AND head on the task's training
images with FastSHAP's objective: for coalitions ``z`` from the Shapley kernel (paired),
``E_z ‖ v(z) − v(0) − zᵀ φ̂(x) ‖²`` over all classes, where ``v`` are the head's softmax
probabilities under the shared removal operator and ``φ̂ = φ + (v(1) − v(0) − Σφ)/G²`` is the
additive efficient normalisation (also applied at inference: 2 model calls per image).

Suite choice, for compute: each training image gets a fixed pool of ``fastshap_samples``
coalitions, evaluated once (one batched pass, shared by the linear and MLP heads) and reused
every epoch, instead of fresh coalitions per step. Hand-written: Captum has no amortised
explainer. This is the comparison the TVE paper's fine-tuning figure makes: what task-specific
training buys over zero-shot transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..backbones import Backbone
from ..config import EvalConfig
from ..heads import head_logits
from ..metrics import CurveBase, auc, curve_base, masked_embeddings, perturbation_curves
from ..seeds import seeded
from ..shapley import kernel_coalitions
from .base import Explainer
from .registry import register_explainer


class AmortizedNet(nn.Module):
    """``[B, 3, S, S]`` -> ``[B, G², C]`` per-player, per-class values."""

    def __init__(self, img_size: int, grid: int, num_classes: int, embed_dim: int, depth: int, num_heads: int):
        super().__init__()
        self.grid, self.num_classes = grid, num_classes
        self.vit = VisionTransformer(img_size=img_size, patch_size=img_size // grid, embed_dim=embed_dim,
                                     depth=depth, num_heads=num_heads, num_classes=0)
        self.out = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:])

    def init_from(self, model: nn.Module) -> int:
        """Copy every parameter of ``model`` whose name and shape match the trunk's; returns count."""
        own = self.vit.state_dict()
        match = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}
        self.vit.load_state_dict(match, strict=False)
        return len(match)


def build_net(backbone: Backbone, num_classes: int, depth: int) -> AmortizedNet:
    """A net sized like the backbone's tokens (so its weights can initialise it)."""
    d = backbone.embed_dim
    blocks = getattr(backbone.model, "blocks", None)
    heads = blocks[0].attn.num_heads if blocks else next(h for h in (4, 2, 1) if d % h == 0)
    net = AmortizedNet(backbone.img_size, backbone.grid, num_classes, d, depth, heads)
    net.init_from(backbone.model)
    return net.to(backbone.mean.device)


def efficient(phi: torch.Tensor, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Additive efficient normalisation: shift ``phi [B, P, C]`` so ``Σ_i φ_i = v1 − v0`` per class."""
    return phi + ((v1 - v0 - phi.sum(1)) / phi.shape[1]).unsqueeze(1)


def _probs(head: nn.Module, emb: torch.Tensor) -> torch.Tensor:
    return F.softmax(head_logits(head, emb).float(), -1)


@register_explainer
class Amortized(Explainer):
    """FastSHAP-style explainer of ONE head (the one it was trained for)."""

    name = "fastshap"
    training = "task"
    trained_args = ("net", "head")

    def __init__(self, backbone: Backbone, net: AmortizedNet, head: nn.Module, history: list[dict] | None = None):
        super().__init__(backbone)
        self.net = net.eval()
        self.head_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        self.history = history or []

    def _check_head(self, head: nn.Module) -> None:
        st = head.state_dict()
        same = st.keys() == self.head_state.keys() and all(
            st[k].shape == v.shape and torch.equal(st[k].to(v.device), v) for k, v in self.head_state.items())
        if not same:
            raise ValueError("this amortised explainer was trained for another head: it explains one task "
                             "model only (train one per head)")

    @torch.no_grad()
    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        self.backbone.check_input(images)
        self._check_head(head)
        p = self.backbone.n_players
        edge = torch.stack([torch.zeros(p, dtype=torch.bool), torch.ones(p, dtype=torch.bool)]).to(images.device)
        e01 = masked_embeddings(self.backbone, images, edge)
        v = _probs(head, e01)
        t = v[:, 1].argmax(-1) if target is None else self.resolve_target(images, head, target)
        phi = efficient(self.net(images), v[:, 0], v[:, 1])
        return phi.gather(-1, t.view(-1, 1, 1).expand(-1, p, 1)).view(-1, self.grid, self.grid)


def _fid_plus_auc(expl: Amortized, head: nn.Module, images: torch.Tensor, cfg: EvalConfig,
                  base: CurveBase | None = None) -> float:
    a = expl.explain(images, head)
    xs, y = perturbation_curves(expl.backbone, head, images, a, None, cfg.sparsities,
                                batch_size=cfg.masked_batch_size, which=("fid_plus",), base=base)["fid_plus"]
    return auc(xs, y).mean().item()


def _train_one(backbone: Backbone, head: nn.Module, images: torch.Tensor, z: torch.Tensor, v: torch.Tensor,
               v01: torch.Tensor, cfg: EvalConfig, seed: int, eval_images: torch.Tensor | None,
               progress: bool) -> Amortized:
    """FastSHAP training of one explainer on precomputed coalition values ``v [N, M, C]``."""
    n = len(images)
    net = build_net(backbone, v.shape[-1], cfg.fastshap_depth)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.fastshap_lr, weight_decay=0.01)
    steps = cfg.fastshap_epochs * -(-n // cfg.fastshap_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.fastshap_lr, total_steps=max(1, steps), pct_start=0.1)
    expl = Amortized(backbone, net, head)
    zf = z.float()

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        phi = efficient(net(images[idx]), v01[idx, 0], v01[idx, 1])
        pred = torch.einsum("bmp,bpc->bmc", zf[idx], phi)
        return ((v[idx] - v01[idx, 0].unsqueeze(1) - pred) ** 2).mean()

    bases: list[CurveBase] = []  # the evaluation images' full and fully removed passes, made once

    def record(epoch: int, loss: float) -> None:
        row = {"epoch": epoch, "loss": loss}
        if eval_images is not None:
            net.eval()
            if not bases:
                bases.append(curve_base(backbone, eval_images, cfg.masked_batch_size))
            row["fid_plus_auc"] = _fid_plus_auc(expl, head, eval_images, cfg, bases[0])
        expl.history.append(row)

    with torch.no_grad():
        net.eval()
        record(0, sum(loss_of(i).item() * len(i) for i in torch.arange(n).split(cfg.fastshap_batch)) / n)
    g = torch.Generator().manual_seed(seed + 1)
    for epoch in range(cfg.fastshap_epochs):
        net.train()
        tot = 0.0
        for idx in torch.randperm(n, generator=g).split(cfg.fastshap_batch):
            loss = loss_of(idx.to(images.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        record(epoch + 1, tot / n)
        if progress:
            print(f"amortised explainer epoch {epoch + 1}/{cfg.fastshap_epochs}: loss {tot / n:.5f}")
    net.eval().requires_grad_(False)
    return expl


def train_amortized(backbone: Backbone, heads: list[nn.Module], images: torch.Tensor, cfg: EvalConfig,
                    seed: int, eval_images: torch.Tensor | None = None, progress: bool = False
                    ) -> list[Amortized]:
    """Train one amortised explainer per head on normalised training ``images`` ``[N, 3, S, S]``.

    The coalition pool (``cfg.fastshap_samples`` paired kernel draws per image) and its
    embeddings are computed once and shared by all heads. Each explainer's ``history`` has one
    row per epoch (0 = before training): ``epoch, loss`` (mean squared error per coalition and
    class) and, with ``eval_images``, ``fid_plus_auc`` on them.
    """
    n, p = len(images), backbone.n_players
    gen = torch.Generator().manual_seed(seed)
    z = kernel_coalitions(p, n * cfg.fastshap_samples, gen).view(n, -1, p).to(images.device)
    edge = torch.stack([torch.zeros(p, dtype=torch.bool), torch.ones(p, dtype=torch.bool)]).to(images.device)
    emb = masked_embeddings(backbone, images, z, cfg.masked_batch_size)
    e01 = masked_embeddings(backbone, images, edge, cfg.masked_batch_size)
    out = []
    for h in heads:
        with torch.no_grad():
            v, v01 = _probs(h, emb), _probs(h, e01)
        with seeded(seed):  # each head's explainer starts from the same initialisation
            out.append(_train_one(backbone, h, images, z, v, v01, cfg, seed, eval_images, progress))
    return out
