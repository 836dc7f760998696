"""The explainability vector's method (docs/method.md §4): self-explaining models and task arithmetic.

Beyond the paper's abstract these are **suite choices**. A *self-explaining model* is a trainable
copy of the pre-trained backbone ``g`` (its last ``train_blocks`` blocks and final norm fine-tuned),
a linear classification head ``W`` and an *explanation head* ``E``: a per-token MLP mapping every
last-layer patch token to a vector ``v_i`` in the embedding space. One forward pass gives the logits
and the map ``a_i = W_y · v_i`` of class ``y``; ``E`` never sees a label, so it serves any label
space. Supervision: KernelSHAP values of a prediction-only model for all its classes
(`kernelshap_supervision`, `explanation_loss`). ``τ = θ_b − θ_a`` covers the shared parameters
(backbone copy and ``E``), not the label-specific heads; ``θ(λ) = θ + λ τ`` (`apply_vector`; the arithmetic
lives in `tve_lib.explainers.xvec_vector`).

Notebook 06's trainings (a)-(d), the supervision cache and the choice of λ are `tve_lib.studies.xvec`;
`SelfExplainer` puts a trained model behind the Explainer protocol.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..cache import cached
from ..config import XVecConfig
from ..heads import check_targets, last_linear
from ..imagesets import ImageSet
from ..io import save_torch
from ..metrics import masked_embeddings
from ..seeds import seeded
from ..shapley import kernel_coalitions, kernel_shap
from ..token_grids import resize_grid
from .base import Explainer
from .registry import register_explainer
from .tve_train import _lr_lambda
from .xvec_vector import SHARED_PREFIXES as SHARED_PREFIXES  # re-exported: the task arithmetic's own module
from .xvec_vector import apply_vector as apply_vector
from .xvec_vector import shared_state as shared_state
from .xvec_vector import task_vector as task_vector
from .xvec_vector import vector_norms as vector_norms

OUT_INIT_SCALE = 0.01  # the explanation head's last layer starts at this fraction of PyTorch's init


class ExplanationHead(nn.Module):
    """Per-token MLP: patch tokens ``[B, P, d]`` -> vectors in the embedding space ``[B, P, D]``."""

    def __init__(self, token_dim: int, embed_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, embed_dim))
        # a small output layer: the untrained head's maps keep a (random) ranking, but its values
        # start near zero, so the normalised explanation loss starts near 1 instead of swamping
        # the cross-entropy of the first steps
        with torch.no_grad():
            self.net[-1].weight.mul_(OUT_INIT_SCALE)
            self.net[-1].bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


class SelfExplainingModel(nn.Module):
    """Backbone copy + classification head + label-space-independent explanation head.

    ``forward(x)`` returns ``(logits [B, C], vectors [B, G², D])``; `explain` turns the vectors
    into ``[B, G, G]`` maps through the classifier's weights for the explained class.
    """

    def __init__(self, backbone: Backbone, num_classes: int, cfg: XVecConfig, seed: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.num_classes = num_classes
        d = backbone.embed_dim
        # the heads are drawn from the seed alone (not from the global RNG state), so models of
        # any label space share the explanation head's initialisation
        with seeded(seed):
            self.expl_head = ExplanationHead(d, d, cfg.expl_hidden)
            torch.manual_seed(seed + 1)
            self.cls_head = nn.Linear(d, num_classes)
        self.to(backbone.mean.device)

    @property
    def grid(self) -> int:
        return self.backbone.grid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One inference: logits ``[B, C]`` and explanation vectors ``[B, G², D]``."""
        self.backbone.check_input(x)
        m = self.backbone.model
        feats = m.forward_features(x)
        emb = m.forward_head(feats, pre_logits=True)
        # a token grid coarser than G (Swin's last stage) is repeated up to G, so every player
        # gets its token's vector
        tokens = resize_grid(self.backbone.patch_tokens(feats), self.grid, "nearest")
        return self.cls_head(emb), self.expl_head(tokens.reshape(len(tokens), self.grid ** 2, -1))

    def readout(self, vectors: torch.Tensor, target: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """``a_i = W_y · v_i`` with ``W`` the last Linear of ``head`` (default: own head) -> ``[B, G, G]``."""
        w = last_linear(head if head is not None else self.cls_head).weight
        if w.shape[1] != vectors.shape[-1]:
            raise ValueError(f"head reads {w.shape[1]}-dim inputs but the explanation vectors are "
                             f"{vectors.shape[-1]}-dim")
        a = torch.einsum("bpd,bd->bp", vectors, w[target])
        return a.view(len(a), self.grid, self.grid)

    def explain(self, x: torch.Tensor, target: torch.Tensor | int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, C]`` and the map ``[B, G, G]`` of ``target`` (default: the predicted class)."""
        t = None if target is None else check_targets(target, len(x), self.cls_head).to(x.device)  # before the pass
        logits, vec = self(x)
        return logits, self.readout(vec, logits.argmax(-1) if t is None else t)

    def set_trainable(self, train_blocks: int, explanation: bool) -> list[str]:
        """Unfreeze the last ``train_blocks`` blocks (-1: all) and final norms, the classification
        head, and the explanation head when ``explanation``; returns the trainable names."""
        self.requires_grad_(False)
        m = self.backbone.model
        blocks = self.backbone.blocks
        if train_blocks < 0:
            parts = [mod for name, mod in m.named_children() if name not in ("head", "head_dist")]
        else:
            parts = blocks[len(blocks) - min(train_blocks, len(blocks)):]
            parts += [getattr(m, n) for n in ("norm", "fc_norm") if isinstance(getattr(m, n, None), nn.Module)]
        for p in parts:
            p.requires_grad_(True)
        self.cls_head.requires_grad_(True)
        self.expl_head.requires_grad_(explanation)
        return [n for n, p in self.named_parameters() if p.requires_grad]


def build_model(backbone: Backbone, num_classes: int, cfg: XVecConfig, seed: int) -> SelfExplainingModel:
    """The shared initialisation of every training: the backbone's weights, heads from ``seed``."""
    return SelfExplainingModel(backbone, num_classes, cfg, seed)


# ----------------------------------------------------------------------------- training
def batch_order(n: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """``[steps, min(batch_size, n)]`` indices: consecutive seeded permutations of ``range(n)``.

    Depends only on ``(n, steps, batch_size, seed)``, so trainings with the same data size see
    the same batches whatever their loss.
    """
    if n < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"batch_order needs n, steps, batch_size >= 1, got {n}, {steps}, {batch_size}")
    bs = min(batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    need = steps * bs
    perms = [torch.randperm(n, generator=gen) for _ in range(-(-need // n))]
    return torch.cat(perms)[:need].view(steps, bs)


def explanation_loss(vectors: torch.Tensor, weight: torch.Tensor, phi: torch.Tensor,
                     scale: float = 1.0) -> torch.Tensor:
    """Mean of ``((v · Wᵀ) − φ)²`` over images, classes and players, divided by ``scale``.

    ``vectors`` ``[B, P, D]``, ``weight`` ``[C, D]`` (detached by the caller when wanted),
    ``phi`` ``[B, C, P]``.
    """
    if phi.shape != (vectors.shape[0], weight.shape[0], vectors.shape[1]):
        raise ValueError(f"supervision must be [B, C, P] = {(vectors.shape[0], weight.shape[0], vectors.shape[1])}"
                         f", got {tuple(phi.shape)}")
    pred = torch.einsum("bpd,cd->bcp", vectors, weight)
    return ((pred - phi) ** 2).mean() / scale


def _check_supervision(model: SelfExplainingModel, idx: torch.Tensor, phi: torch.Tensor | None,
                       phi_pos: torch.Tensor | None) -> int:
    """The number of supervised images, after checking ``phi`` and ``phi_pos`` against them."""
    n_sup = len(idx) if phi_pos is None else len(phi_pos)
    if phi is not None and (phi.ndim != 3 or len(phi) != n_sup or phi.shape[1] != model.num_classes
                            or phi.shape[2] != model.grid ** 2):
        raise ValueError(f"phi must be [N={n_sup}, C={model.num_classes}, P={model.grid ** 2}], "
                         f"got {tuple(phi.shape)}")
    if phi_pos is not None and len(phi_pos) and (phi_pos.min() < 0 or phi_pos.max() >= len(idx)):
        raise ValueError(f"phi_pos must index the {len(idx)} training images")
    return n_sup


def _optimizer(model: SelfExplainingModel, cfg: XVecConfig
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with the backbone at ``lr`` and the heads at ``head_lr``, warm-up then cosine decay."""
    heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": heads, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(cfg.steps, max(1, int(cfg.warmup_frac * cfg.steps))))
    return opt, sched


@dataclass
class _TrainLog:
    """Means of ``ce, expl, acc`` over logging windows of ~10 % of the steps."""

    steps: int
    explain: bool
    rows: list[dict] = field(default_factory=list)
    ce: float = 0.0
    ex: float = 0.0
    ok: int = 0
    seen: int = 0

    def add(self, step: int, ce: torch.Tensor, ex: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.ce += ce.item() * len(y)
        self.ex += ex.item() * len(y)
        self.ok += (logits.argmax(1) == y).sum().item()
        self.seen += len(y)
        if (step + 1) % max(1, self.steps // 10) == 0 or step + 1 == self.steps:
            self.rows.append({"step": step + 1, "ce": self.ce / self.seen,
                              "expl": self.ex / self.seen if self.explain else float("nan"),
                              "acc": self.ok / self.seen})
            self.ce, self.ex, self.ok, self.seen = 0.0, 0.0, 0, 0


def train_model(model: SelfExplainingModel, data: ImageSet, cfg: XVecConfig, seed: int,
                idx: torch.Tensor | None = None, phi: torch.Tensor | None = None,
                phi_pos: torch.Tensor | None = None, expl_weight: float | None = None,
                progress: bool = False) -> list[dict]:
    """Fine-tune ``model`` for ``cfg.steps`` steps on ``data`` (restricted to ``idx``).

    ``phi`` ``[K, C, P]`` adds the explanation loss with weight ``expl_weight`` (default
    ``cfg.expl_weight``); without it, or with weight 0, the training is prediction-only and the
    explanation head is left as initialised. ``phi_pos`` None: ``phi`` covers every training
    image (K = len(idx)) and the loss uses the prediction batch itself; else ``phi`` belongs to
    the images at positions ``phi_pos`` of ``idx`` and each step adds a batch of them, drawn
    from their own seeded order (so a partly supervised training still sees ``batch_size``
    supervised images per step). The prediction batches come from
    `batch_order(len(idx), steps, batch_size, seed)` in every case. Returns rows
    ``step, ce, expl, acc`` (means over logging windows of ~10 % of the steps).
    """
    idx = torch.arange(len(data)) if idx is None else torch.as_tensor(idx, dtype=torch.long)
    w_expl = cfg.expl_weight if expl_weight is None else expl_weight
    explain = phi is not None and w_expl > 0
    n_sup = _check_supervision(model, idx, phi, phi_pos)
    device = model.backbone.mean.device
    model.set_trainable(cfg.train_blocks, explain)
    opt, sched = _optimizer(model, cfg)
    scale = max(float((phi ** 2).mean()), 1e-12) if explain else 1.0
    order = batch_order(len(idx), cfg.steps, cfg.batch_size, seed)
    sup_order = batch_order(n_sup, cfg.steps, cfg.batch_size, seed + 1) if explain and phi_pos is not None else None
    log = _TrainLog(cfg.steps, explain)
    model.train()
    # a backbone with stochastic depth (timm's Swin-B: drop-path 0.1) draws in train mode: from a generator seeded
    # per step, not from whatever state the process is in, so (a)-(d) see the same draws for the same step
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for step, b in enumerate(tqdm(order, desc="xvec training", disable=not progress, leave=False)):
            torch.manual_seed(seed * 1_000_003 + step)
            raw, y, _ = data.get(idx[b])
            x = model.backbone.normalize(raw.to(device))
            y = y.to(device)
            logits, vec = model(x)
            ce = F.cross_entropy(logits, y)
            loss, ex = ce, torch.zeros(())
            if explain:
                w = model.cls_head.weight.detach()  # the explanation must live in the shared parameters
                if sup_order is None:
                    ex = explanation_loss(vec, w, phi[b].to(device), scale)
                else:
                    sb = sup_order[step]
                    xs = model.backbone.normalize(data.get(idx[phi_pos[sb]])[0].to(device))
                    ex = explanation_loss(model(xs)[1], w, phi[sb].to(device), scale)
                loss = ce + w_expl * ex
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            log.add(step, ce, ex, logits, y)
    model.eval().requires_grad_(False)
    return log.rows


# ----------------------------------------------------------------------------- supervision
SUPERVISION_ESTIMATOR = ("kernel_shap: paired Shapley-kernel coalitions, one set for every image, exact efficiency, "
                         "logits of all classes")


@torch.no_grad()
def kernelshap_supervision(model: SelfExplainingModel, data: ImageSet, idx: torch.Tensor, budget: int,
                           seed: int, images_per_chunk: int = 32, batch_size: int = 1024,
                           progress: bool = False) -> torch.Tensor:
    """KernelSHAP values ``[N, C, P]`` of ``model``'s logits for every class, on ``data[idx]``.

    Players are the backbone's grid; ``budget`` coalitions (plus the full and the empty image), drawn once from a
    generator seeded with ``seed`` and shared by every image, as the KernelSHAP explainer does, so an image's values
    do not depend on the chunk it is computed in (one batched model call per chunk). One constrained regression per
    image serves all classes (`tve_lib.shapley.kernel_shap`).
    """
    idx = torch.as_tensor(idx, dtype=torch.long)
    device = model.backbone.mean.device
    p = model.backbone.n_players
    if budget <= 2 * p:  # fewer samples leave the regression (nearly) singular: useless targets
        raise ValueError(f"KernelSHAP supervision needs a budget > 2 x {p} players, got {budget}")
    z = kernel_coalitions(p, budget, torch.Generator().manual_seed(seed), device)
    ends = torch.stack([torch.ones(p, dtype=torch.bool, device=device),
                        torch.zeros(p, dtype=torch.bool, device=device)])
    out = []
    model.eval()
    for s in tqdm(range(0, len(idx), images_per_chunk), desc="KernelSHAP supervision", disable=not progress,
                  leave=False):
        x = model.backbone.normalize(data.get(idx[s:s + images_per_chunk])[0].to(device))
        emb = masked_embeddings(model.backbone, x, torch.cat([ends, z]), batch_size)
        v = model.cls_head(emb)  # [B, 2 + M, C] logits
        phi = kernel_shap(z, v[:, 2:], v[:, 1], v[:, 0])  # [B, P, C]
        out.append(phi.transpose(1, 2).float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- persistence
def state_digest(model: nn.Module) -> str:
    """A short hash of a model's weights (cache keys of supervision computed from it)."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def model_payload(model: SelfExplainingModel, **extra) -> dict:
    """What a cached model file holds: the state dict, label-space size and ``extra`` (history, settings)."""
    return {"state": model.state_dict(), "num_classes": model.num_classes, **extra}


def save_model(model: SelfExplainingModel, path: str | Path, **extra) -> None:
    """Atomically save `model_payload` of ``model`` at ``path``."""
    save_torch(model_payload(model, **extra), path)


def restore_model(payload: dict, backbone: Backbone, cfg: XVecConfig, seed: int
                  ) -> tuple[SelfExplainingModel, dict]:
    """The model of a `model_payload` (in eval mode) and its extra entries."""
    m = build_model(backbone, payload["num_classes"], cfg, seed)
    m.load_state_dict(payload["state"])
    return m.eval(), {k: v for k, v in payload.items() if k not in ("state", "num_classes")}


class _Absent(Exception):
    """Raised in place of building: `load_model` reads a cache file, it never trains."""


def _absent() -> dict:
    raise _Absent


def load_model(path: str | Path, backbone: Backbone, cfg: XVecConfig, seed: int
               ) -> tuple[SelfExplainingModel, dict] | None:
    """The model cached at ``path`` and its extra entries, or None when absent or unusable
    (an unusable file is deleted, the `tve_lib.cache.cached` rule)."""
    if not Path(path).exists():
        return None
    try:
        return cached(path, _absent, lambda s: restore_model(s, backbone, cfg, seed), what="self-explaining model")
    except _Absent:
        return None


# ----------------------------------------------------------------------------- explainer
@register_explainer
class SelfExplainer(Explainer):
    """Maps from one inference of a trained self-explaining model.

    The explained model is the self-explaining model itself: ``backbone`` must be its fine-tuned
    backbone copy (``model.backbone``) and the head to pass is its ``cls_head`` (any head reading
    the same embedding works: the explanation vectors are read out through that head's last Linear).
    """

    name = "xvec"
    training = "task"
    trained_args = ("model",)
    compared = False

    def __init__(self, backbone: Backbone, model: SelfExplainingModel):
        if backbone is not model.backbone:
            raise ValueError("xvec explains its self-explaining model: pass that model's own fine-tuned "
                             "backbone copy, make_explainer('xvec', model.backbone, model=model)")
        super().__init__(backbone)
        self.model = model.eval()

    @torch.no_grad()
    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        logits, vec = self.model(images)  # one inference: prediction and explanation vectors
        if target is None and head is self.model.cls_head:
            t = logits.argmax(-1)
        else:
            t = self.resolve_target(images, head, target)
        return self.model.readout(vec, t, head)
