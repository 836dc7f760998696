"""The explainability vector (docs/method.md §4): self-explaining models and task arithmetic.

Everything here beyond the paper's abstract is a **suite choice**:

* A *self-explaining model* is a trainable copy of the profile's pre-trained backbone ``g``
  (only its last ``train_blocks`` blocks and final norm are fine-tuned), a linear classification
  head ``W`` and an *explanation head* ``E``: a per-token MLP mapping every patch token of the
  backbone's last layer to a vector ``v_i`` in the embedding space. One forward pass gives the
  logits ``W g(x) + b`` and the map ``a_i = W_y · v_i`` for the explained class ``y``. ``E``
  never sees a label: the classifier's own weights read it out, so the same ``E`` serves any
  label space (the vector learned on the source applies to targets with other classes).
* Explanation supervision: KernelSHAP values of the source prediction-only model for *all* its
  classes (one regression per image serves every class), cached with their settings. The loss
  is the MSE between ``v_i · W_c`` (``W`` detached, so that what is learned lives in the shared
  parameters, not in the label-specific head) and ``φ_{c,i}``, normalised by the mean ``φ²``.
* Trainings (a) source prediction-only, (b) source prediction + explanation, (c) target
  prediction-only and (d) target prediction + explanation (the upper bound) start from one
  initialisation (the backbone, and the explanation head drawn from the seed) and use the same
  seed, batch order generator and step count. Prediction-only trainings leave ``E`` untouched.
* ``τ = θ_b − θ_a`` over the shared parameters (backbone copy and ``E``); the classification
  heads differ in label space and are excluded: the target keeps its own head from (c).
  ``θ_target(λ) = θ_c + λ τ``; λ is chosen on source validation data only (`select_lambda`).
"""

from __future__ import annotations

import copy
import hashlib
import math
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .backbones import Backbone
from .config import XVecConfig
from .data import ImageSet, iter_batches
from .fidelity import SUMMARY_KEYS, evaluate_maps
from .heads import head_accuracy, last_linear
from .io import CorruptCheckpoint, load_torch, save_torch
from .metrics import DIRECTION, masked_embeddings
from .shapley import ShapleyReference, kernel_coalitions, kernel_shap, player_groups, shapley_references
from .tve_train import _lr_lambda

if TYPE_CHECKING:
    from .suite import Suite

# parameters shared by every self-explaining model of a backbone, whatever its label space
SHARED_PREFIXES = ("backbone.model.", "expl_head.")
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


def block_list(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a timm ViT/DeiT (``blocks``) or Swin (``layers[*].blocks``), in order."""
    if hasattr(model, "blocks"):
        return list(model.blocks)
    if hasattr(model, "layers"):
        return [b for layer in model.layers for b in getattr(layer, "blocks", [layer])]
    raise ValueError(f"{type(model).__name__} has neither `blocks` nor `layers`: cannot choose which "
                     "blocks to fine-tune")


def patch_tokens(backbone: Backbone, feats: torch.Tensor) -> torch.Tensor:
    """Last-layer patch tokens on the explanation grid, ``[B, G², d]``.

    ``feats`` is ``forward_features``' output: ``[B, prefix + N, d]`` (ViT/DeiT: prefix tokens
    dropped) or NHWC ``[B, h, w, d]`` (Swin). A token grid coarser than ``G`` (Swin's last stage)
    is repeated up to ``G`` (nearest), so every player gets its token's vector.
    """
    if feats.ndim == 3:
        t = feats[:, backbone.num_prefix_tokens:]
        h = math.isqrt(t.shape[1])
        if h * h != t.shape[1]:
            raise ValueError(f"{backbone.name}: {t.shape[1]} patch tokens do not form a square grid")
        t = t.reshape(len(t), h, h, -1)
    elif feats.ndim == 4:
        t = feats
    else:
        raise ValueError(f"{backbone.name}: unexpected forward_features shape {tuple(feats.shape)}")
    g = backbone.grid
    if t.shape[1:3] != (g, g):
        t = F.interpolate(t.permute(0, 3, 1, 2), size=(g, g), mode="nearest").permute(0, 2, 3, 1)
    return t.reshape(len(t), g * g, -1)


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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
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
        return self.cls_head(emb), self.expl_head(patch_tokens(self.backbone, feats))

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
        logits, vec = self(x)
        if target is None:
            t = logits.argmax(-1)
        else:
            t = torch.as_tensor(target, device=x.device, dtype=torch.long)
            t = t.expand(len(x)) if t.ndim == 0 else t
        return logits, self.readout(vec, t)

    def set_trainable(self, train_blocks: int, explanation: bool) -> list[str]:
        """Unfreeze the last ``train_blocks`` blocks (-1: all) and final norms, the classification
        head, and the explanation head when ``explanation``; returns the trainable names."""
        self.requires_grad_(False)
        m = self.backbone.model
        blocks = block_list(m)
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
    n_sup = len(idx) if phi_pos is None else len(phi_pos)
    if phi is not None and (phi.ndim != 3 or len(phi) != n_sup or phi.shape[1] != model.num_classes
                            or phi.shape[2] != model.grid ** 2):
        raise ValueError(f"phi must be [N={n_sup}, C={model.num_classes}, P={model.grid ** 2}], "
                         f"got {tuple(phi.shape)}")
    if phi_pos is not None and len(phi_pos) and (phi_pos.min() < 0 or phi_pos.max() >= len(idx)):
        raise ValueError(f"phi_pos must index the {len(idx)} training images")
    device = model.backbone.mean.device
    model.set_trainable(cfg.train_blocks, explain)
    heads = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr}, {"params": heads, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(cfg.steps, max(1, int(cfg.warmup_frac * cfg.steps))))
    scale = max(float((phi ** 2).mean()), 1e-12) if explain else 1.0
    order = batch_order(len(idx), cfg.steps, cfg.batch_size, seed)
    sup_order = batch_order(n_sup, cfg.steps, cfg.batch_size, seed + 1) if explain and phi_pos is not None else None
    log_every = max(1, cfg.steps // 10)
    hist, acc_ce, acc_ex, acc_ok, seen = [], 0.0, 0.0, 0, 0
    model.train()
    for step, b in enumerate(tqdm(order, desc="xvec training", disable=not progress, leave=False)):
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
        acc_ce += ce.item() * len(y)
        acc_ex += ex.item() * len(y)
        acc_ok += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            hist.append({"step": step + 1, "ce": acc_ce / seen, "expl": acc_ex / seen if explain else float("nan"),
                         "acc": acc_ok / seen})
            acc_ce, acc_ex, acc_ok, seen = 0.0, 0.0, 0, 0
    model.eval().requires_grad_(False)
    return hist


# ----------------------------------------------------------------------------- task arithmetic
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


# ----------------------------------------------------------------------------- supervision
SUPERVISION_ESTIMATOR = "kernel_shap: paired Shapley-kernel coalitions, exact efficiency, logits of all classes"


@torch.no_grad()
def kernelshap_supervision(model: SelfExplainingModel, data: ImageSet, idx: torch.Tensor, budget: int,
                           seed: int, images_per_chunk: int = 32, batch_size: int = 1024,
                           progress: bool = False) -> torch.Tensor:
    """KernelSHAP values ``[N, C, P]`` of ``model``'s logits for every class, on ``data[idx]``.

    Players are the backbone's grid; ``budget`` coalitions per image (plus the full and the
    empty image), drawn afresh for every chunk of images from a generator seeded with ``seed``
    and shared by the images of a chunk (one batched model call per chunk). One constrained
    regression per image serves all classes (`tve_lib.shapley.kernel_shap`).
    """
    idx = torch.as_tensor(idx, dtype=torch.long)
    device = model.backbone.mean.device
    p = model.backbone.n_players
    if budget <= 2 * p:  # fewer samples leave the regression (nearly) singular: useless targets
        raise ValueError(f"KernelSHAP supervision needs a budget > 2 x {p} players, got {budget}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    model.eval()
    for s in tqdm(range(0, len(idx), images_per_chunk), desc="KernelSHAP supervision", disable=not progress,
                  leave=False):
        x = model.backbone.normalize(data.get(idx[s:s + images_per_chunk])[0].to(device))
        z = kernel_coalitions(p, budget, gen, device)
        ends = torch.stack([torch.ones(p, dtype=torch.bool, device=device),
                            torch.zeros(p, dtype=torch.bool, device=device)])
        emb = masked_embeddings(model.backbone, x, torch.cat([ends, z]), batch_size)
        v = model.cls_head(emb)  # [B, 2 + M, C] logits
        phi = kernel_shap(z, v[:, 2:], v[:, 1], v[:, 0])  # [B, P, C]
        out.append(phi.transpose(1, 2).float().cpu())
    return torch.cat(out)


def cached_supervision(path: str | Path, model: SelfExplainingModel, data: ImageSet, idx: torch.Tensor,
                       budget: int, seed: int, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """`kernelshap_supervision`, cached at ``path`` with its settings; recomputed when they differ.

    The settings record the estimator, budget, seed, grid, the image set and indices, and a
    digest of the explained model's weights. Returns ``(phi [N, C, P], settings)``.
    """
    idx = torch.as_tensor(idx, dtype=torch.long)
    settings = {"estimator": SUPERVISION_ESTIMATOR, "budget": budget, "seed": seed,
                "grid": model.grid, "data": data.name, "n_images": len(idx),
                "indices": hashlib.sha1(idx.numpy().tobytes()).hexdigest()[:12],
                "model": state_digest(model)}
    path = Path(path)
    if path.exists():
        try:
            s = load_torch(path)
            if s["settings"] == settings:
                return s["phi"], settings
            print(f"note: supervision at {path} has other settings; recomputing")
        except (CorruptCheckpoint, KeyError) as e:
            print(f"warning: {e}; recomputing the supervision")
    phi = kernelshap_supervision(model, data, idx, budget, seed, progress=progress)
    save_torch({"settings": settings, "phi": phi}, path)
    return phi, settings


# ----------------------------------------------------------------------------- persistence
def state_digest(model: nn.Module) -> str:
    """A short hash of a model's weights (cache keys of supervision computed from it)."""
    h = hashlib.sha1()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def save_model(model: SelfExplainingModel, path: str | Path, **extra) -> None:
    """Atomically save the state dict, label-space size and ``extra`` (history, settings)."""
    save_torch({"state": model.state_dict(), "num_classes": model.num_classes, **extra}, path)


def load_model(path: str | Path, backbone: Backbone, cfg: XVecConfig, seed: int
               ) -> tuple[SelfExplainingModel, dict] | None:
    """The model cached at ``path`` and its extra entries, or None when absent or unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        s = load_torch(path)
        m = build_model(backbone, s["num_classes"], cfg, seed)
        m.load_state_dict(s["state"])
    except (CorruptCheckpoint, KeyError, RuntimeError) as e:
        print(f"warning: {e}; retraining")
        path.unlink()
        return None
    return m.eval(), {k: v for k, v in s.items() if k not in ("state", "num_classes")}


# ----------------------------------------------------------------------------- evaluation helpers
SWEEP_COLUMNS = ["task", "backbone", "lambda", "metric", "value", "seed"]
SWEEP_EXTRA = ["split", "ci_low", "ci_high", "n_images"]
SELF_HEAD = "self_explaining"  # `head` of rows that score a self-explaining model (its own linear head)
XVEC_SUMMARY_KEYS = [*SUMMARY_KEYS, "lambda"]
SELECT_METRICS = ("fid_gap", "accuracy", *DIRECTION)


@torch.no_grad()
def predict_and_explain(model: SelfExplainingModel, x: torch.Tensor, batch_size: int = 256
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`SelfExplainingModel.explain` in chunks: logits ``[B, C]`` and maps ``[B, G, G]``."""
    out = [model.explain(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


@torch.no_grad()
def accuracy(model: SelfExplainingModel, data: ImageSet, batch_size: int = 256,
             idx: torch.Tensor | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (restricted to ``idx``)."""
    device = model.backbone.mean.device
    ok = n = 0
    for raw, y, _ in iter_batches(data, batch_size, idx):
        logits = model.cls_head(model.backbone.embed(model.backbone.normalize(raw.to(device))))
        ok += (logits.argmax(1).cpu() == y).sum().item()
        n += len(y)
    return ok / max(n, 1)


def select_lambda(source: pd.DataFrame, metric: str = "fid_gap", max_acc_drop: float = 0.02) -> float:
    """The λ of the source-validation sweep with the best ``metric`` among those whose accuracy is
    within ``max_acc_drop`` of λ = 0's (ties: the smallest λ). ``source``: sweep rows."""
    if metric not in SELECT_METRICS:
        raise KeyError(f"unknown λ-selection metric {metric!r}; expected one of: {', '.join(SELECT_METRICS)}")
    piv = source.pivot_table(index="lambda", columns="metric", values="value").sort_index()
    for need in (metric, "accuracy"):
        if need not in piv:
            raise ValueError(f"the source sweep has no {need!r} rows")
    if 0.0 not in piv.index:
        raise ValueError("the λ grid must contain 0 (the reference accuracy)")
    ok = piv[piv["accuracy"] >= piv.loc[0.0, "accuracy"] - max_acc_drop]
    sign = DIRECTION.get(metric, 1)
    return float((sign * ok[metric]).idxmax())


def _with_gap(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``fid_gap = fid_plus_auc − fid_minus_auc`` rows (one per method, no interval)."""
    piv = summary.set_index("metric")
    if not {"fid_plus_auc", "fid_minus_auc"} <= set(piv.index):
        return summary
    row = summary[summary.metric == "fid_plus_auc"].copy()
    row["metric"] = "fid_gap"
    row["value"] = row["value"].to_numpy() - summary[summary.metric == "fid_minus_auc"]["value"].to_numpy()
    row[["ci_low", "ci_high"]] = float("nan")
    return pd.concat([summary, row], ignore_index=True)


# ----------------------------------------------------------------------------- notebook 06
def source_indices(n_train: int, n_val: int, cfg: XVecConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented source subsets: ``n_source`` upstream-train and ``n_source_val`` upstream-val
    positions, drawn with ``seed`` (sorted). Downstream test images are never among them."""
    g = torch.Generator().manual_seed(seed + 606)
    tr = torch.randperm(n_train, generator=g)[:cfg.n_source].sort().values
    va = torch.randperm(n_val, generator=g)[:cfg.n_source_val].sort().values
    return tr, va


class XVecStudy:
    """Notebook 06 for one backbone: the four trainings (cached), τ, the λ sweeps and the comparison.

    ``kind`` of a model: ``"pred"`` (prediction only) or ``"expl"`` (prediction + explanation);
    ``task`` None is the source (the upstream set's classes). So (a) = ("pred", None),
    (b) = ("expl", None), (c) = ("pred", task), (d) = ("expl", task).
    """

    def __init__(self, suite: Suite, backbone: str, progress: bool = True):
        self.suite, self.name, self.progress = suite, backbone, progress
        self.cfg, self.eval_cfg, self.seed = suite.profile.xvec, suite.profile.eval, suite.seed
        if self.cfg.select_metric not in SELECT_METRICS:
            raise KeyError(f"xvec.select_metric {self.cfg.select_metric!r}: expected one of {SELECT_METRICS}")
        self.backbone = suite.backbone(backbone)
        self.source_train, self.source_val = suite.upstream
        self.source_idx, self.val_idx = source_indices(len(self.source_train), len(self.source_val),
                                                       self.cfg, self.seed)
        prof = suite.profile.digest("img_size", "backbones", "backbone_train", "upstream", "n_upstream_val",
                                    "mean", "std")
        self.key = hashlib.sha1(repr((self.cfg, prof, self.seed)).encode()).hexdigest()[:10]
        self._models: dict[tuple[str, str | None], SelfExplainingModel] = {}
        self.histories: dict[tuple[str, str | None], list[dict]] = {}
        self.settings: dict[str | None, dict] = {}
        self._refs: dict[tuple, ShapleyReference] = {}
        self._scores: dict[tuple, pd.DataFrame] = {}

    # ------------------------------------------------------------------ data
    @property
    def source_name(self) -> str:
        return self.suite.profile.upstream

    def _train_set(self, task: str | None) -> tuple[ImageSet, torch.Tensor, int]:
        if task is None:
            return self.source_train, self.source_idx, len(self.source_train.classes)
        t = self.suite.task(task)
        return t.train, torch.arange(len(t.train)), t.num_classes

    def _ckpt(self, stem: str) -> Path:
        return self.suite.ckpt_dir / f"xvec_{self.name}_{self.key}_{stem.replace('/', '_').replace(':', '_')}.pt"

    def eval_set(self, task: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalised images, labels and region masks: the first ``n_eval`` target-test images, or
        the source-validation subset (``task`` None)."""
        if task is None:
            raw, y, m = self.source_val.get(self.val_idx)
        else:
            test = self.suite.task(task).test
            raw, y, m = test.get(torch.arange(min(self.cfg.n_eval, len(test))))
        return self.backbone.normalize(raw.to(self.suite.device)), y, m

    def accuracy_indices(self, task: str) -> torch.Tensor:
        """The target-test images accuracy is measured on: the first ``n_accuracy`` (None: all)."""
        n = len(self.suite.task(task).test)
        return torch.arange(min(n, self.cfg.n_accuracy or n))

    # ------------------------------------------------------------------ models
    def supervision(self, task: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """KernelSHAP supervision of the prediction-only model of ``task`` (None: the source), cached.

        Source: every source-training image (positions None). Target (upper bound): the first
        ``n_target_sup`` images of a seeded permutation of the target training set, returned
        with their positions in it.
        """
        ds, idx, _ = self._train_set(task)
        pos = None
        if task is not None:
            g = torch.Generator().manual_seed(self.seed + 707)
            pos = torch.randperm(len(idx), generator=g)[:self.cfg.n_target_sup].sort().values
        model = self.model("pred", task)
        phi, settings = cached_supervision(self._ckpt(f"supervision_{task or 'source'}"), model, ds,
                                           idx if pos is None else idx[pos], self.cfg.shap_budget, self.seed,
                                           self.progress)
        self.settings[task] = settings
        return phi, pos

    def model(self, kind: str, task: str | None = None) -> SelfExplainingModel:
        """Model (a)-(d): trained once from the shared initialisation, cached in memory and on disk."""
        if kind not in ("pred", "expl"):
            raise KeyError(f"unknown model kind {kind!r}; expected 'pred' or 'expl'")
        key = (kind, task)
        if key in self._models:
            return self._models[key]
        path = self._ckpt(f"{kind}_{task or 'source'}")
        loaded = load_model(path, self.backbone, self.cfg, self.seed)
        if loaded is not None:
            m, extra = loaded
            self.histories[key] = extra.get("history", [])
            if extra.get("supervision"):
                self.settings[task] = extra["supervision"]
        else:
            ds, idx, n_cls = self._train_set(task)
            phi, pos = self.supervision(task) if kind == "expl" else (None, None)
            m = build_model(self.backbone, n_cls, self.cfg, self.seed)
            self.histories[key] = train_model(m, ds, self.cfg, self.seed, idx, phi, pos, progress=self.progress)
            save_model(m, path, history=self.histories[key],
                       supervision=self.settings.get(task) if kind == "expl" else None)
        self._models[key] = m
        return m

    def history(self) -> pd.DataFrame:
        """Training rows of every model built so far: ``model, task, step, ce, expl, acc``."""
        return pd.DataFrame([{"model": MODEL_NAMES[(k, t is None)], "task": t or self.source_name, **h}
                             for (k, t), hist in self.histories.items() for h in hist])

    @cached_property
    def tau(self) -> dict[str, torch.Tensor]:
        """``τ = θ_b − θ_a`` over the shared parameters."""
        return task_vector(self.model("expl"), self.model("pred"))

    def at_lambda(self, lam: float, task: str | None = None) -> SelfExplainingModel:
        """``θ_c + λ τ`` for ``task`` (None: ``θ_a + λ τ`` on the source)."""
        return apply_vector(self.model("pred", task), self.tau, lam)

    # ------------------------------------------------------------------ scoring
    def score(self, ref_key: tuple, backbone: Backbone, head: nn.Module, x: torch.Tensor,
              maps: dict[str, torch.Tensor], target: torch.Tensor, masks: torch.Tensor | None,
              meta: dict, n_shapley: int, budget: dict[str, int] | None = None) -> pd.DataFrame:
        """Summary rows of ``maps`` on the model ``head ∘ backbone`` (exact Shapley on the first
        ``n_shapley`` images, computed once per ``ref_key``), with ``fid_gap`` rows added."""
        ref = None
        if n_shapley > 0:
            k = (*ref_key, n_shapley)
            if k not in self._refs:
                groups = player_groups(backbone.grid, tuple(self.cfg.shapley_groups or self.eval_cfg.shapley_groups))
                self._refs[k] = shapley_references(backbone, [head], x[:n_shapley], groups.to(x.device),
                                                   [target[:n_shapley]], self.eval_cfg.batch_size,
                                                   self.eval_cfg.shapley_topk)[0]
            ref = self._refs[k]
        _, summary = evaluate_maps(backbone, head, x, maps, target, masks, self.eval_cfg, budget=budget or 0,
                                   shapley=ref, meta=meta, seed=self.seed)
        return _with_gap(summary)

    def evaluate_lambda(self, lam: float, task: str | None = None) -> pd.DataFrame:
        """Summary rows (plus ``accuracy``) of ``θ(λ)``'s own maps on the evaluation set of ``task``."""
        key = (task, float(lam))
        if key in self._scores:
            return self._scores[key]
        m = self.at_lambda(lam, task)
        x, _, masks = self.eval_set(task)
        logits, maps = predict_and_explain(m, x, self.eval_cfg.batch_size)
        meta = {"backbone": self.name, "task": task or self.source_name, "head": SELF_HEAD}
        n_shap = self.cfg.n_shapley if task is not None else 0
        s = self.score(("lambda", task, float(lam)), m.backbone, m.cls_head, x, {"xvec": maps},
                       logits.argmax(1), masks, meta, n_shap)
        if task is None:
            acc, n_acc = accuracy(m, self.source_val, self.eval_cfg.batch_size, self.val_idx), len(self.val_idx)
        else:
            acc_idx = self.accuracy_indices(task)
            acc, n_acc = accuracy(m, self.suite.task(task).test, self.eval_cfg.batch_size, acc_idx), len(acc_idx)
        s = pd.concat([s, pd.DataFrame([dict(meta, method="xvec", budget=0, metric="accuracy", value=acc,
                                             n_images=n_acc, seed=self.seed)])], ignore_index=True)
        s["lambda"] = float(lam)
        self._scores[key] = s
        return s

    def sweep(self, task: str | None = None) -> pd.DataFrame:
        """``lambda_sweep.csv`` rows of ``task`` (None: the source-validation sweep that chooses λ)."""
        rows = pd.concat([self.evaluate_lambda(lam, task) for lam in self.cfg.lambdas], ignore_index=True)
        rows["split"] = "source_val" if task is None else "test"
        return rows[SWEEP_COLUMNS + SWEEP_EXTRA].reset_index(drop=True)

    def select_lambda(self) -> tuple[float, pd.DataFrame]:
        """λ* from the source-validation sweep only, and that sweep's rows."""
        src = self.sweep(None)
        return select_lambda(src, self.cfg.select_metric, self.cfg.max_acc_drop), src

    def compare(self, task: str, lam: float) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
        """At λ*: the vector-equipped model, λ = 0, KernelSHAP-``compare_budget`` of the same model,
        TVE zero-shot (on the frozen backbone's linear probe) and the upper bound (d).

        Returns summary rows (with ``lambda``, ``label`` and ``accuracy`` rows; the λ rows are the
        sweep's own) and the maps of the first ``n_gallery`` images per label.
        """
        from .explainers.sampling import KernelSHAP  # lazy: keeps `import tve_lib.xvec` light

        x, _, masks = self.eval_set(task)
        bs, n_shap, n_gal = self.eval_cfg.batch_size, self.cfg.n_shapley, self.eval_cfg.n_gallery
        acc_idx = self.accuracy_indices(task)
        n_test = len(acc_idx)
        meta = {"backbone": self.name, "task": task, "head": SELF_HEAD}
        frames, gallery = [], {}

        def add(rows: pd.DataFrame, lam_m: float, label: str, acc: float | None = None) -> None:
            rows = rows.copy()
            if acc is not None:
                ids = rows.iloc[0][["backbone", "task", "head", "method", "budget"]].to_dict()
                acc_row = dict(ids, metric="accuracy", value=acc, n_images=n_test, seed=self.seed)
                rows = pd.concat([rows, pd.DataFrame([acc_row])], ignore_index=True)
            rows["lambda"], rows["label"] = lam_m, label
            frames.append(rows)

        ks_label = f"KernelSHAP-{self.cfg.compare_budget}"
        for lam_m, label in dict.fromkeys([(float(lam), f"xvec (λ={lam:g})"), (0.0, "target model, λ=0")]):
            add(self.evaluate_lambda(lam_m, task), lam_m, label)
            gallery[label] = predict_and_explain(self.at_lambda(lam_m, task), x[:n_gal], bs)[1]
        star = self.at_lambda(lam, task)
        t_star = predict_and_explain(star, x, bs)[0].argmax(1)
        ks = KernelSHAP(star.backbone, self.cfg.compare_budget, seed=self.seed, batch_size=bs)
        ks_maps = ks.explain(x, star.cls_head, t_star)
        acc_star = self.evaluate_lambda(lam, task).set_index("metric").loc["accuracy", "value"]
        add(self.score(("lambda", task, float(lam)), star.backbone, star.cls_head, x, {"kernelshap": ks_maps},
                       t_star, masks, meta, n_shap, {"kernelshap": self.cfg.compare_budget}),
            float(lam), ks_label, acc_star)
        gallery[ks_label] = ks_maps[:n_gal]
        upper = self.model("expl", task)
        lg, mp = predict_and_explain(upper, x, bs)
        label = "upper bound (target supervision)"
        add(self.score(("upper", task), upper.backbone, upper.cls_head, x, {"xvec_upper": mp}, lg.argmax(1),
                       masks, meta, n_shap), float("nan"), label,
            accuracy(upper, self.suite.task(task).test, bs, acc_idx))
        gallery[label] = mp[:n_gal]
        # TVE explains the model it is built for: the frozen backbone with the task's linear probe
        head, tve = self.suite.head(self.name, task, "linear"), self.suite.explainer(self.name)
        with torch.no_grad():
            t_tve = head(self.backbone.embed_batched(x, bs)).argmax(1)
        tv_maps = torch.cat([tve.explain(x[i:i + bs], head, t_tve[i:i + bs]) for i in range(0, len(x), bs)])
        e, y = self.suite.embeddings(self.name, task, "test")
        label = "TVE zero-shot (frozen backbone + linear probe)"
        add(self.score(("tve", task), self.backbone, head, x, {"tve": tv_maps}, t_tve, masks,
                       dict(meta, head="linear"), n_shap), float("nan"), label,
            head_accuracy(head, e[acc_idx], y[acc_idx]))
        gallery["TVE zero-shot"] = tv_maps[:n_gal]
        return pd.concat(frames, ignore_index=True), gallery

    def throughput(self, task: str, lam: float) -> pd.DataFrame:
        """Cost per explanation at the profile's size: the self-explaining model's one inference
        (``xvec``), KernelSHAP-``compare_budget`` of it, and the frozen backbone's inference (only
        used when ``throughput.csv`` has no inference row at this batch size yet)."""
        from .bench import time_call
        from .explainers.sampling import KernelSHAP

        x, _, _ = self.eval_set(task)
        b = self.cfg.bench_batch_size
        xb = x.repeat(-(-b // len(x)), 1, 1, 1)[:b]
        star = self.at_lambda(lam, task)
        ks = KernelSHAP(star.backbone, self.cfg.compare_budget, seed=self.seed, batch_size=self.eval_cfg.batch_size)
        head = self.suite.head(self.name, task, "linear")
        calls = {("inference", 0): lambda: head(self.backbone.embed(xb)),
                 ("xvec", 0): lambda: star.explain(xb),
                 ("kernelshap", self.cfg.compare_budget): lambda: ks.explain(xb, star.cls_head)}
        rows = []
        with torch.no_grad():
            for (method, budget), fn in calls.items():
                t = time_call(fn, b, self.suite.device, self.cfg.bench_repeats)
                rows.append(dict(device=str(self.suite.device), threads=t.threads, backbone=self.name,
                                 size="profile", method=method, budget=budget, batch_size=b, n_tasks=1,
                                 images_per_s=t.images_per_s, ms_per_image=t.ms_per_image,
                                 repeats=t.repeats, ms_per_image_iqr=t.ms_per_image_iqr, warmup=t.warmup,
                                 dtype=t.dtype))
        df = pd.DataFrame(rows)
        inf = df.loc[df.method == "inference", "images_per_s"].iloc[0]
        df["ratio_to_inference"] = df.images_per_s / inf
        return df


MODEL_NAMES = {("pred", True): "(a) source pred-only", ("expl", True): "(b) source pred+expl",
               ("pred", False): "(c) target pred-only", ("expl", False): "(d) target pred+expl"}


def lambda_gain(sweep: pd.DataFrame, lam: float, metrics: tuple[str, ...] = ("shapley_spearman", "fid_gap")
                ) -> pd.DataFrame:
    """Per task and metric: the value at λ = 0 and at ``lam`` and the signed gain (direction-aware)."""
    d = sweep[sweep.metric.isin(metrics) & sweep["lambda"].isin([0.0, lam])]
    piv = d.pivot_table(index=["task", "metric"], columns="lambda", values="value").reset_index()
    piv = piv.rename(columns={0.0: "at_0", lam: "at_star"})
    if "at_star" not in piv:  # λ* = 0
        piv["at_star"] = piv["at_0"]
    piv["gain"] = [DIRECTION.get(m, 1) * (s - z) for m, s, z in zip(piv.metric, piv.at_star, piv.at_0)]
    return piv


def claims(comparison: pd.DataFrame, sweep: pd.DataFrame, lam: float, cfg: XVecConfig) -> pd.DataFrame:
    """The paper's three claims, measured: ``claim, task, evidence, reproduced``.

    1. Quality comparable to KernelSHAP-``compare_budget`` from one inference: per task, the
       fidelity/Shapley metrics where xvec is at least as good as KernelSHAP or their 95 %
       intervals overlap; reproduced when that holds for more than half of them.
    2. No real accuracy loss: accuracy(λ*) − accuracy(λ = 0) ≥ −``max_acc_drop``.
    3. Failure on less-related domains: the gain of λ* over λ = 0 in
       Shapley agreement on each ``unrelated_tasks`` target is at most the smallest gain on
       the related targets.
    """
    out = []
    q = ["fid_plus_auc", "fid_minus_auc", "insertion_auc", "deletion_auc", "shapley_spearman"]
    c = comparison[comparison["head"] == SELF_HEAD]
    for task, d in c.groupby("task"):
        xv = d[(d.method == "xvec") & (d["lambda"] == lam)].set_index("metric")
        ks = d[d.method == "kernelshap"].set_index("metric")
        ok, parts = 0, []
        for m in [m for m in q if m in xv.index and m in ks.index]:
            a, b = xv.loc[m], ks.loc[m]
            better = DIRECTION[m] * (a.value - b.value) >= 0
            overlap = not (a.ci_low > b.ci_high or b.ci_low > a.ci_high)
            ok += bool(better or overlap)
            parts.append(f"{m} {a.value:.3f} vs {b.value:.3f}")
        n = len(parts)
        out.append(dict(claim=f"1 comparable to KernelSHAP-{cfg.compare_budget}", task=task,
                        evidence="; ".join(parts) + f" ({ok}/{n} comparable or better)",
                        reproduced=n > 0 and ok > n / 2))
    sweep = sweep[sweep.split == "test"] if "split" in sweep else sweep
    acc = sweep[sweep.metric == "accuracy"]
    for task, d in acc.groupby("task"):
        a0 = d[d["lambda"] == 0.0].value.iloc[0]
        a1 = d[d["lambda"] == lam].value.iloc[0]
        out.append(dict(claim="2 no real accuracy loss", task=task,
                        evidence=f"accuracy {a0:.3f} at λ=0 -> {a1:.3f} at λ*={lam:g} ({a1 - a0:+.3f})",
                        reproduced=a1 - a0 >= -cfg.max_acc_drop))
    g = lambda_gain(sweep, lam, ("shapley_spearman",))
    related = g[~g.task.isin(cfg.unrelated_tasks)]
    for _, r in g[g.task.isin(cfg.unrelated_tasks)].iterrows():
        lo = related.gain.min() if len(related) else float("nan")
        out.append(dict(claim="3 fails on a less-related domain", task=r.task,
                        evidence=f"Shapley-agreement gain of λ* over λ=0: {r.gain:+.3f} here, "
                                 f"{lo:+.3f} at least on the related targets",
                        reproduced=bool(r.gain <= lo) if len(related) else False))
    return pd.DataFrame(out, columns=["claim", "task", "evidence", "reproduced"])


def append_throughput(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Append notebook 06's throughput rows with `tve_lib.bench.append_throughput`; the inference
    row is only added where the file has none for this device, backbone, size and batch size (the
    benchmark notebook's own measurement is kept)."""
    from .bench import append_throughput as bench_append

    path = Path(path)
    if path.exists():
        old = pd.read_csv(path)
        keys = ["device", "backbone", "size", "batch_size"]
        have = set(map(tuple, old[old.method == "inference"][keys].astype(str).values.tolist()))
        mine = [tuple(r) in have for r in df[keys].astype(str).values.tolist()]
        df = df[~((df.method == "inference") & pd.Series(mine, index=df.index))]
    return bench_append(df, path)
