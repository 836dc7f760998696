"""Downstream heads `h` trained on frozen embeddings: a linear probe and a 2-layer MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadTrain
from .seeds import seeded

HEAD_KINDS = ("linear", "mlp")


def make_head(kind: str, in_dim: int, num_classes: int, hidden: int | None = None) -> nn.Module:
    """A head of ``kind`` ('linear' | 'mlp') mapping ``[.., in_dim]`` to ``[.., num_classes]``.

    The MLP's hidden width defaults to ``in_dim`` so that the official TVE code's behaviour
    (applying only the last Linear layer to Φ) is computable for comparison.
    """
    hidden = hidden or in_dim
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))
    raise KeyError(f"unknown head kind {kind!r}; expected one of: {', '.join(HEAD_KINDS)}")


def head_in_features(head: nn.Module) -> int:
    """Input width of a head: its first Linear layer's ``in_features``."""
    for m in head.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError("head has no nn.Linear layer: cannot tell its input size")


def head_out_features(head: nn.Module) -> int | None:
    """Number of classes of a head: its last Linear layer's ``out_features`` (None without one)."""
    lin = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return lin[-1].out_features if lin else None


def check_targets(target: torch.Tensor | int, n_images: int, head: nn.Module) -> torch.Tensor:
    """``target`` as ``[n_images]`` long class indices of ``head``, or a ValueError that says what was expected
    (one index or one per image, integers in ``[0, classes)``), before any model call."""
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got dtype {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and len(t) != n_images):
        raise ValueError(f"target must be one class index or one per image ([{n_images}]), got shape {tuple(t.shape)}")
    t = t.long().expand(n_images) if t.ndim == 0 else t.long()
    n = head_out_features(head)
    lo, hi = (int(t.min()), int(t.max())) if len(t) else (0, 0)
    if lo < 0 or (n is not None and hi >= n):
        raise ValueError(f"target classes must lie in [0, {n}) (the head's outputs), got {lo}..{hi}")
    return t


def check_head(head: nn.Module, embed_dim: int) -> None:
    """Raise if the head's input size differs from the backbone's embedding size."""
    d = head_in_features(head)
    if d != embed_dim:
        raise ValueError(f"head expects {d}-dim inputs but the backbone's embedding is "
                         f"{embed_dim}-dim: train the head on this backbone's embeddings")


def head_logits(head: nn.Module, emb: torch.Tensor) -> torch.Tensor:
    """``head(emb)``, after checking that the embedding's width is the head's input size: the one place
    where a head meets an embedding, so a mismatch names both sizes instead of a matmul error."""
    check_head(head, emb.shape[-1])
    return head(emb)


def last_linear(head: nn.Module) -> nn.Linear:
    """The head's last Linear layer (what the official TVE code applies)."""
    lin = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise ValueError("head has no nn.Linear layer")
    return lin[-1]


@torch.no_grad()
def fold_standardization(head: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> nn.Module:
    """Fold ``z = (e - mean) / std`` into the head's first Linear layer, in place.

    The head then takes raw embeddings and computes exactly what it computed on standardised ones,
    and stays a plain Linear / MLP (the transfer rule and the last-layer comparison need that).
    """
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    w = first.weight / std
    first.bias.sub_(w @ mean)
    first.weight.copy_(w)
    return head


def train_head(emb: torch.Tensor, labels: torch.Tensor, kind: str, num_classes: int,
               cfg: HeadTrain, seed: int) -> tuple[nn.Module, list[float]]:
    """Train a head on embeddings with AdamW and a cosine schedule; returns (head, epoch losses).

    With ``cfg.standardize`` the head is trained on per-feature standardised embeddings and the
    standardisation is then folded into its first layer: the embeddings of a small backbone vary in
    scale by orders of magnitude across features, which slows a probe trained with Adam.
    """
    if emb.ndim != 2 or labels.ndim != 1 or len(emb) != len(labels):
        raise ValueError(f"train_head needs embeddings [N, D] and labels [N], got {tuple(emb.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")
    if not torch.isfinite(emb).all():
        raise ValueError("train_head: the embeddings contain NaN or inf")
    g = torch.Generator().manual_seed(seed)
    with seeded(seed):
        head = make_head(kind, emb.shape[1], num_classes, cfg.mlp_hidden).to(emb.device)
    mean = std = None
    if cfg.standardize:
        mean, std = emb.mean(0), emb.std(0).clamp_min(1e-6)
        emb = (emb - mean) / std
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * max(1, -(-len(emb) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(emb), generator=g).to(emb.device)
        tot = 0.0
        for s in range(0, len(emb), cfg.batch_size):
            i = perm[s:s + cfg.batch_size]
            loss = F.cross_entropy(head(emb[i]), labels[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(i)
        losses.append(tot / len(emb))
    head.eval().requires_grad_(False)
    if mean is not None:
        fold_standardization(head, mean, std)
    return head, losses


@torch.inference_mode()
def head_accuracy(head: nn.Module, emb: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of ``emb`` whose arg-max class under ``head`` is its label."""
    return (head_logits(head, emb).argmax(1) == labels).float().mean().item()
