"""LTX, "Learning to Explain" (Barkan et al., ICDM 2023; docs/method.md §3): the task-specific peer.

The explainer is a deep copy of the explained backbone's timm model (patch and position
embeddings frozen) whose patch tokens feed ``Linear(d,d) → tanh → Linear(d,1) → sigmoid``: a
``G×G`` mask ``m``. The explained model ``f = h ∘ g`` stays frozen. Loss per image (`ltx_loss`):
``CE(f(x ⊙ m), y) + λ_mask · penalty(m)``, where ``x ⊙ m`` is the shared removal operator with a
soft mask (removed pixels blend toward the removal value) and y is the class predicted on the
full image ("predicted") or the label ("target").

* pLTX (`pretrain_ltx`): pre-trained per task on the task's training images (AdamW, linear
  warm-up then decay).
* LTX (`finetune`): per-image fine-tuning from pLTX, up to ``ft_steps`` single-image steps. The
  images of a chunk are fine-tuned at once: one stacked copy of the explainer's parameters per
  image, run with ``torch.func.functional_call`` + ``vmap``. AdamW is element-wise and the loss is
  a sum of per-image terms, so one optimiser over the stacked copies is exactly one optimiser per image.
* Step selection: ``"loss"`` (default; the step with the lowest training loss) or
  ``"test_metric"`` (the official code: the best POS-AUC measured with the ground-truth label,
  stopping at the first step below ``stop_pos_auc``). Both are read off one trajectory.

The explainers `PLTX` and `LTX` are given their pre-trained `LTXNet` (``net=``); notebook 05's
study pre-trains and caches it per task and head. The network, the soft mask and the loss are in
`tve_lib.explainers.ltx_model`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..config import EvalConfig, LTXConfig
from ..imagesets import ImageSet, iter_batches
from ..schema import SELECTIONS
from .base import Explainer
from .ltx_model import LTXNet, check_config, ltx_loss, training_targets
from .registry import register_explainer

#: the LTXConfig fields pre-training depends on (the pLTX cache key)
PRETRAIN_FIELDS = ("mode", "mask_penalty", "lambda_mask", "upsample", "n_train", "epochs", "batch_size", "lr",
                   "weight_decay", "warmup_frac")


# ----------------------------------------------------------------------------- pLTX
def _warmup_linear(total: int, warmup: int):
    """Linear warm-up to the base lr, then linear decay to 0 (the official schedule)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def pretrain_ltx(net: LTXNet, backbone: Backbone, head: nn.Module, train: ImageSet, cfg: LTXConfig,
                 seed: int, progress: bool = True) -> list[dict]:
    """Pre-train ``net`` (pLTX) on ``cfg.n_train`` of the task's training images.

    Returns one row per epoch: ``epoch, loss, ce, mask_mean, seconds`` (training-set means).
    """
    check_config(cfg)
    device = backbone.mean.device
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train), generator=gen)[: min(cfg.n_train, len(train))]
    steps = math.ceil(len(idx) / cfg.batch_size)
    total = cfg.epochs * steps
    opt = torch.optim.AdamW(list(net.trainable().values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_linear(total, max(1, int(cfg.warmup_frac * total))))
    history, seconds = [], 0.0
    # one bar for the whole pre-training, not one per epoch: a notebook keeps every bar it ever showed
    bar = tqdm(total=total, leave=False, disable=not progress)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = idx[torch.randperm(len(idx), generator=gen)]
        sums = torch.zeros(3)
        bar.set_description(f"pLTX {backbone.name} epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        for raw, labels, _ in iter_batches(train, cfg.batch_size, order):
            x = backbone.normalize(raw.to(device))
            y = training_targets(backbone, head, x, labels, cfg.mode)
            mask = net(x)
            loss, ce, _ = ltx_loss(backbone, head, x, mask, y, cfg)
            opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            opt.step()
            sched.step()
            sums += torch.stack([loss.sum(), ce.sum(), mask.detach().mean((1, 2)).sum()]).detach().cpu()
            bar.update()
            bar.set_postfix(loss=f"{loss.mean().item():.3f}", refresh=False)
        seconds += time.perf_counter() - t0
        s = (sums / len(idx)).tolist()
        history.append({"epoch": epoch + 1, "loss": s[0], "ce": s[1], "mask_mean": s[2], "seconds": seconds})
    bar.close()
    net.eval()
    return history


# ----------------------------------------------------------------------------- LTX fine-tuning
@dataclass
class FineTuneResult:
    """One fine-tuning trajectory per image: masks and losses at every step (step 0 = pLTX)."""

    masks: torch.Tensor  # [B, T, G, G]: the mask of each step's forward, before that step's update
    losses: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B] the CE target the explainer was fine-tuned for
    seconds: float  # wall time of the fine-tuning (without any POS-AUC evaluation)
    pos_auc: torch.Tensor | None = None  # [B, T] with the ground-truth label, when computed
    extra: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return self.masks.shape[1]

    def select(self, selection: str = "loss", stop_pos_auc: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masks [B, G, G], step [B])`` of the selected step per image."""
        step = select_steps(self.losses, self.pos_auc, selection, stop_pos_auc)
        return self.masks[torch.arange(len(step)), step], step


def select_steps(losses: torch.Tensor, pos_auc: torch.Tensor | None, selection: str,
                 stop_pos_auc: float | None = None) -> torch.Tensor:
    """Per-image selected step ``[B]``.

    "loss": the lowest training loss (first on ties). "test_metric" (official): the lowest
    POS-AUC, where the official run stops at the first step whose POS-AUC is below
    ``stop_pos_auc``; since the best-so-far then is that step, it is the first such step.
    """
    if selection == "loss":
        return losses.argmin(1)
    if selection != "test_metric":
        raise ValueError(f"unknown selection {selection!r}; expected one of: {', '.join(SELECTIONS)}")
    if pos_auc is None:
        raise ValueError("selection 'test_metric' needs POS-AUC per step: fine-tune with labels")
    best = pos_auc.argmin(1)
    if stop_pos_auc is None:
        return best
    below = pos_auc < stop_pos_auc
    first = below.int().argmax(1)
    return torch.where(below.any(1), first, best)


def _stacked_copies(net: LTXNet, n: int) -> dict[str, torch.Tensor]:
    """``n`` independent copies of the trainable parameters, stacked on a new dim 0."""
    return {k: p.detach().unsqueeze(0).repeat(n, *([1] * p.ndim)).requires_grad_(True)
            for k, p in net.trainable().items()}


def finetune_chunk(net: LTXNet, backbone: Backbone, head: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   cfg: LTXConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine-tune one copy of ``net`` per image of ``x`` for ``cfg.ft_steps`` single-image steps.

    Returns ``masks [B, T, G, G]`` and ``losses [B, T]`` of each step's forward (step 0 is the
    pre-trained explainer). ``net`` itself is not modified.
    """
    from torch.func import functional_call, vmap

    params = _stacked_copies(net, len(x))
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.ft_lr, weight_decay=cfg.weight_decay)

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(net, p, (xi.unsqueeze(0),)).squeeze(0)

    masks, losses = [], []
    for _ in range(cfg.ft_steps):
        m = vmap(one)(params, x)
        loss, _, _ = ltx_loss(backbone, head, x, m, y, cfg)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # per-image copies: the sum's gradient is each image's own gradient
        opt.step()
        masks.append(m.detach())
        losses.append(loss.detach())
    return torch.stack(masks, 1), torch.stack(losses, 1)


def finetune(net: LTXNet, backbone: Backbone, head: nn.Module, x: torch.Tensor, cfg: LTXConfig,
             labels: torch.Tensor | None = None, target: torch.Tensor | None = None,
             pos_auc: bool = False, eval_cfg: EvalConfig | None = None, progress: bool = True) -> FineTuneResult:
    """Per-image LTX fine-tuning of images ``x`` (normalised), in chunks of ``cfg.ft_batch``.

    ``target``: the CE target per image (default from ``cfg.mode``: prediction or ``labels``).
    ``pos_auc=True`` also measures every step's POS-AUC with ``labels`` (needed by the
    "test_metric" selection; its time is ``extra["pos_auc_seconds"]``, not in ``seconds``);
    ``eval_cfg`` gives its removal fractions and batch size.
    """
    check_config(cfg)
    backbone.check_input(x)
    if pos_auc and labels is None:
        raise ValueError("POS-AUC per step (the 'test_metric' selection) needs the ground-truth labels")
    t0 = time.perf_counter()  # the explanation's cost includes the prediction that picks y
    y = target.to(x.device) if target is not None else training_targets(backbone, head, x, labels, cfg.mode)
    masks, losses = [], []
    starts = range(0, len(x), cfg.ft_batch)
    for s in tqdm(starts, desc=f"LTX {backbone.name} fine-tuning", leave=False, disable=not progress):
        m, lo = finetune_chunk(net, backbone, head, x[s:s + cfg.ft_batch], y[s:s + cfg.ft_batch], cfg)
        masks.append(m)
        losses.append(lo)
    res = FineTuneResult(torch.cat(masks), torch.cat(losses), y, time.perf_counter() - t0)
    if pos_auc:
        t0 = time.perf_counter()
        res.pos_auc = step_pos_auc(backbone, head, x, res.masks, labels.to(x.device), eval_cfg)
        res.extra["pos_auc_seconds"] = time.perf_counter() - t0
    return res


@torch.no_grad()
def step_pos_auc(backbone: Backbone, head: nn.Module, x: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                 eval_cfg: EvalConfig | None = None) -> torch.Tensor:
    """POS-AUC ``[B, T]`` (percent, `tve_lib.metrics`) of every step's mask, scored with the label."""
    from ..metrics import curve_aucs, perturbation_curves

    ev = eval_cfg or EvalConfig()
    b, t = masks.shape[:2]
    xr = x.unsqueeze(1).expand(-1, t, -1, -1, -1).flatten(0, 1)
    curves = perturbation_curves(backbone, head, xr, masks.flatten(0, 1), labels.repeat_interleave(t),
                                 perturbation_steps=ev.perturbation_steps, batch_size=ev.batch_size,
                                 which=("pos",))
    return curve_aucs(curves)["pos_auc"].view(b, t)


# ----------------------------------------------------------------------------- the Explainer API
@register_explainer
class PLTX(Explainer):
    """The pre-trained explainer: one forward pass gives the mask (task-specific).

    Not class-conditional (``class_conditional = False``): the mask explains the class the net
    was trained for (the prediction, or the label in "target" mode), so ``target`` is ignored.
    """

    name = "pltx"
    training = "task"
    trained_args = ("net",)
    compared = False
    class_conditional = False

    def __init__(self, backbone: Backbone, net: LTXNet, head: nn.Module | None = None):
        super().__init__(backbone)
        if net.grid != backbone.grid:
            raise ValueError(f"LTX net predicts a {net.grid}x{net.grid} mask but backbone {backbone.name} "
                             f"has a {backbone.grid}x{backbone.grid} grid")
        self.net, self.trained_head = net.eval(), head

    def _check_head(self, head: nn.Module) -> None:
        if self.trained_head is not None and head is not self.trained_head:
            raise ValueError("LTX is task-specific: explain with the head it was trained for "
                             "(pre-train another LTX for another head)")

    @torch.no_grad()
    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        """The mask ``[B, G, G]`` (it explains the class it was trained for; ``target`` is unused)."""
        self.backbone.check_input(images)
        self._check_head(head)
        return self.net(images)


@register_explainer
class LTX(PLTX):
    """Per-image fine-tuning from pLTX; ``explain`` returns the mask of the selected step.

    ``target`` is the CE target of the fine-tuning (class-conditional). Ground-truth ``labels``
    (needed by the "test_metric" selection and by "target" mode without ``target``) are given at
    construction or with `with_labels`, so ``explain`` keeps the common protocol.
    """

    name = "ltx"
    class_conditional = True

    def __init__(self, backbone: Backbone, net: LTXNet, cfg: LTXConfig, head: nn.Module | None = None,
                 selection: str = "loss", eval_cfg: EvalConfig | None = None, labels: torch.Tensor | None = None):
        super().__init__(backbone, net, head)
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; expected one of: {', '.join(SELECTIONS)}")
        check_config(cfg)
        self.cfg, self.selection, self.eval_cfg, self.labels = cfg, selection, eval_cfg, labels
        self.last: FineTuneResult | None = None

    def with_labels(self, labels: torch.Tensor | None) -> LTX:
        """A copy that explains images with these ground-truth labels ``[B]`` (shares the net)."""
        out = copy.copy(self)
        out.labels, out.last = labels, None
        return out

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        """Fine-tune per image and return the selected masks ``[B, G, G]``.

        ``target`` (default: the prediction, or ``self.labels`` in "target" mode) is the CE target;
        the "test_metric" selection needs ``self.labels`` (see `with_labels`).
        """
        self._check_head(head)
        t = None if target is None else self.resolve_target(images, head, target)
        self.last = finetune(self.net, self.backbone, head, images, self.cfg, self.labels, t,
                             pos_auc=self.selection == "test_metric", eval_cfg=self.eval_cfg, progress=False)
        return self.last.select(self.selection, self.cfg.stop_pos_auc)[0]
