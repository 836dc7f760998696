"""LTX, "Learning to Explain" (Barkan et al., ICDM 2023; docs/method.md §3): the task-specific peer.

The explainer is a deep copy of the explained backbone's timm model (patch and position
embeddings frozen) whose patch tokens feed ``Linear(d,d) → tanh → Linear(d,1) → sigmoid``: a
``G×G`` mask ``m``. The explained model ``f = h ∘ g`` stays frozen. Loss per image:
``CE(f(x ⊙ m), y) + λ_mask · penalty(m)``, where ``x ⊙ m`` is the shared removal operator with a
soft mask (removed pixels blend toward the removal value) and y is the class predicted on the
full image ("predicted") or the label ("target").

* pLTX: pre-trained per task on the task's training images (AdamW, linear warm-up then decay).
* LTX: per-image fine-tuning from pLTX, up to ``ft_steps`` single-image steps. The images of a
  chunk are fine-tuned at once: one stacked copy of the explainer's parameters per image, run
  with ``torch.func.functional_call`` + ``vmap``. AdamW is element-wise and the loss is a sum of
  per-image terms, so one optimiser over the stacked copies is exactly one optimiser per image.
* Step selection: ``"loss"`` (default; the step with the lowest training loss) or
  ``"test_metric"`` (the official code: the best POS-AUC measured with the ground-truth label,
  stopping at the first step below ``stop_pos_auc``). Both are read off one trajectory.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .backbones import Backbone
from .config import EvalConfig, LTXConfig
from .data import ImageSet, iter_batches
from .explainers.base import Explainer
from .masking import apply_mask

if TYPE_CHECKING:
    from .suite import Suite

MODES = ("predicted", "target")
PENALTIES = ("mean", "bce")
UPSAMPLES = ("bilinear", "nearest")
SELECTIONS = ("loss", "test_metric")
FROZEN_PREFIXES = ("patch_embed.", "pos_embed", "absolute_pos_embed")
#: the LTXConfig fields pre-training depends on (the pLTX cache key)
PRETRAIN_FIELDS = ("mode", "mask_penalty", "lambda_mask", "upsample", "n_train", "epochs", "batch_size", "lr",
                   "weight_decay", "warmup_frac")


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


def patch_tokens(model: nn.Module, x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The last layer's patch tokens as a grid ``[B, h, w, d]``.

    ViT/DeiT: ``[B, prefix + h·w, d]`` with the prefix (class/distillation) tokens dropped;
    Swin: NHWC already; a CNN's NCHW map is permuted (the head then acts as a 1×1 conv).
    """
    t = model.forward_features(x)
    if t.ndim == 4:
        return t if getattr(model, "output_fmt", "NCHW") == "NHWC" else t.permute(0, 2, 3, 1)
    if t.ndim != 3:
        raise ValueError(f"{type(model).__name__}.forward_features gave {tuple(t.shape)}; expected "
                         "tokens [B, N, d] or a feature map [B, h, w, d]")
    t = t[:, num_prefix_tokens:]
    h = math.isqrt(t.shape[1])
    if h * h != t.shape[1]:
        raise ValueError(f"{t.shape[1]} patch tokens after dropping {num_prefix_tokens} prefix tokens "
                         "do not form a square grid")
    return t.reshape(len(t), h, h, t.shape[-1])


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
        m = self.head(patch_tokens(self.encoder, x, self.num_prefix_tokens))
        if m.shape[-2:] != (self.grid, self.grid):
            m = F.interpolate(m.unsqueeze(-3), size=(self.grid, self.grid), mode="bilinear",
                              align_corners=False).squeeze(-3)
        return m

    def trainable(self) -> dict[str, torch.Tensor]:
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
    return apply_mask(x, px, s, backbone.removal_value)


def ltx_loss(backbone: Backbone, head: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor,
             cfg: LTXConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image ``(loss, ce, penalty)``, each ``[B]``: ``CE(f(x ⊙ m), y) + λ·penalty(m)``."""
    logits = head(backbone.embed(apply_soft_mask(backbone, x, mask, cfg.upsample)))
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
        return head(backbone.embed(x)).argmax(-1)
    if mode == "target":
        if labels is None:
            raise ValueError("LTX mode 'target' needs the ground-truth labels")
        return labels.to(x.device)
    raise ValueError(f"unknown LTX mode {mode!r}; expected one of: {', '.join(MODES)}")


# ----------------------------------------------------------------------------- pLTX
def _warmup_linear(total: int, warmup: int):
    """Linear warm-up to the base lr, then linear decay to 0 (the official schedule)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def pretrain(net: LTXNet, backbone: Backbone, head: nn.Module, train: ImageSet, cfg: LTXConfig,
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
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = idx[torch.randperm(len(idx), generator=gen)]
        sums = torch.zeros(3)
        bar = tqdm(iter_batches(train, cfg.batch_size, order), total=steps, leave=False,
                   desc=f"pLTX {backbone.name} epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for raw, labels, _ in bar:
            x = backbone.normalize(raw.to(device))
            y = training_targets(backbone, head, x, labels, cfg.mode)
            mask = net(x)
            loss, ce, _ = ltx_loss(backbone, head, x, mask, y, cfg)
            opt.zero_grad(set_to_none=True)
            loss.mean().backward()
            opt.step()
            sched.step()
            sums += torch.stack([loss.sum(), ce.sum(), mask.detach().mean((1, 2)).sum()]).detach().cpu()
            bar.set_postfix(loss=f"{loss.mean().item():.3f}")
        seconds += time.perf_counter() - t0
        s = (sums / len(idx)).tolist()
        history.append({"epoch": epoch + 1, "loss": s[0], "ce": s[1], "mask_mean": s[2], "seconds": seconds})
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
    from .metrics import curve_aucs, perturbation_curves

    ev = eval_cfg or EvalConfig()
    b, t = masks.shape[:2]
    xr = x.unsqueeze(1).expand(-1, t, -1, -1, -1).flatten(0, 1)
    curves = perturbation_curves(backbone, head, xr, masks.flatten(0, 1), labels.repeat_interleave(t),
                                 perturbation_steps=ev.perturbation_steps, batch_size=ev.batch_size,
                                 which=("pos",))
    return curve_aucs(curves)["pos_auc"].view(b, t)


# ----------------------------------------------------------------------------- the Explainer API
class PLTX(Explainer):
    """The pre-trained explainer: one forward pass gives the mask (task-specific)."""

    name = "pltx"

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


class LTX(PLTX):
    """Per-image fine-tuning from pLTX; ``explain`` returns the mask of the selected step."""

    name = "ltx"

    def __init__(self, backbone: Backbone, net: LTXNet, cfg: LTXConfig, head: nn.Module | None = None,
                 selection: str = "loss", eval_cfg: EvalConfig | None = None):
        super().__init__(backbone, net, head)
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; expected one of: {', '.join(SELECTIONS)}")
        check_config(cfg)
        self.cfg, self.selection, self.eval_cfg = cfg, selection, eval_cfg
        self.last: FineTuneResult | None = None

    def explain(self, images: torch.Tensor, head: nn.Module, target: torch.Tensor | int | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """Fine-tune per image and return the selected masks ``[B, G, G]``.

        ``target`` (default: the prediction, or ``labels`` in "target" mode) is the CE target;
        ``labels`` are required by the "test_metric" selection.
        """
        self._check_head(head)
        t = None if target is None else self.resolve_target(images, head, target)
        self.last = finetune(self.net, self.backbone, head, images, self.cfg, labels, t,
                             pos_auc=self.selection == "test_metric", eval_cfg=self.eval_cfg, progress=False)
        return self.last.select(self.selection, self.cfg.stop_pos_auc)[0]


# ----------------------------------------------------------------------------- cached pLTX per task
def pltx_checkpoint(suite: Suite, backbone: str, task: str, kind: str = "linear",
                    cfg: LTXConfig | None = None) -> Path:
    """Cache file of a pLTX explainer: keyed on its config, the backbone, task and head."""
    cfg = cfg or suite.profile.ltx
    pre = tuple((f, getattr(cfg, f)) for f in PRETRAIN_FIELDS)  # fine-tuning settings do not invalidate it
    key = hashlib.sha1(repr((pre, suite._bb_key(backbone), task, kind,
                             suite.profile.digest("head_train"))).encode()).hexdigest()[:10]
    safe = task.replace("/", "_").replace(":", "_")
    return suite.ckpt_dir / f"pltx_{backbone}_{safe}_{kind}_{key}.pt"


def pretrained_ltx(suite: Suite, backbone: str, task: str, kind: str = "linear",
                   cfg: LTXConfig | None = None) -> tuple[LTXNet, list[dict]]:
    """The pLTX explainer of (backbone, task, head kind), pre-trained once and cached."""
    from .io import CorruptCheckpoint, load_torch, save_torch

    cfg = cfg or suite.profile.ltx
    bb, head = suite.backbone(backbone), suite.head(backbone, task, kind)
    path = Path(pltx_checkpoint(suite, backbone, task, kind, cfg))
    if path.exists():
        try:
            s = load_torch(path)
            net = LTXNet(bb)
            net.load_state_dict(s["model"])
            return net.eval(), s["history"]
        except (CorruptCheckpoint, KeyError, RuntimeError) as e:
            print(f"warning: {e}; pre-training pLTX again")
    torch.manual_seed(suite.seed)
    net = LTXNet(bb)
    hist = pretrain(net, bb, head, suite.task(task).train, cfg, suite.seed)
    save_torch({"model": net.state_dict(), "history": hist, "cfg": cfg}, path)
    return net, hist


# ----------------------------------------------------------------------------- notebook 05: the comparison
NO_SELECTION = "none"  # the selection column of methods without step selection (pLTX, TVE, KernelSHAP)


def score_ltx(backbone: Backbone, head: nn.Module, images: torch.Tensor, result: FineTuneResult, cfg: LTXConfig,
              eval_cfg: EvalConfig | None = None, selections: tuple[str, ...] = ("loss",),
              masks: torch.Tensor | None = None, meta: dict | None = None, seed: int = 0,
              target: torch.Tensor | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fidelity rows of pLTX (the trajectory's step 0) and of LTX under each selection.

    Every row carries ``selection`` (``none`` for pLTX), so rows of the official
    ``test_metric`` selection can always be told apart and kept out of rankings. ``target``:
    the class scored (default: the one LTX was fine-tuned for).
    """
    from .fidelity import concat, evaluate_maps

    meta = dict(meta or {})
    runs = [("pltx", NO_SELECTION, result.masks[:, 0])]
    runs += [("ltx", sel, result.select(sel, cfg.stop_pos_auc)[0]) for sel in selections]
    curves, summary = [], []
    for method, sel, m in runs:
        c, sm = evaluate_maps(backbone, head, images, {method: m}, result.targets if target is None else target,
                              masks, eval_cfg,
                              meta=dict(meta, selection=sel), seed=seed)
        curves.append(c)
        summary.append(sm)
    return concat(curves), concat(summary)


@dataclass
class TaskComparison:
    """Everything notebook 05 reports for one backbone × task × head (tidy frames)."""

    summary: pd.DataFrame  # evaluate_maps summary rows of every method, with `selection`
    curves: pd.DataFrame
    costs: pd.DataFrame  # method, selection, train_scope, train_s, explain_ms_per_image
    throughput: pd.DataFrame  # per-task timing rows (pltx, ltx, inference); merge with `throughput_table`
    history: pd.DataFrame  # pLTX pre-training per epoch
    trajectory: pd.DataFrame  # fine-tuning: mean loss / POS-AUC per step, share of images selecting it
    gallery: dict  # raw images, region masks and maps of the first images


def _timed(fn, n: int, device: torch.device, repeats: int) -> tuple[object, float, int]:
    """Run ``fn`` once for its result, then time it (median of ``repeats`` runs, via bench)."""
    from .bench import time_call

    out = fn()
    if repeats < 1:
        return out, float("nan"), 0
    t = time_call(fn, n, device, repeats=repeats, warmup=0)
    return out, t.ms_per_image, t.repeats


def compare_task(suite: Suite, backbone: str, task: str, kind: str = "linear",
                 progress: bool = True) -> TaskComparison:
    """Pre-train (or load) pLTX, fine-tune LTX on ``ltx.n_explain`` test images, explain the same
    images with TVE (zero-shot) and KernelSHAP (largest ``eval.budgets``), and score them all.

    LTX is scored under both selections from one fine-tuning trajectory; the costs are the
    pre-training time per task and the explanation time per image (pLTX, TVE and the inference
    reference timed with ``cfg.time_repeats`` repeats; LTX and KernelSHAP from their one run).
    """
    from .explainers import make_explainer
    from .fidelity import concat, evaluate_maps, evaluation_indices

    cfg, ev, dev = suite.profile.ltx, suite.profile.eval, suite.device
    bb, head, t = suite.backbone(backbone), suite.head(backbone, task, kind), suite.task(task)
    meta = dict(backbone=backbone, task=task, head=kind)
    net, hist = pretrained_ltx(suite, backbone, task, kind, cfg)
    idx = evaluation_indices(t.test, cfg.n_explain, suite.seed)  # the first of notebook 03's images
    n = len(idx)
    raw, labels, regions = t.test.get(idx)
    x, labels = bb.normalize(raw.to(dev)), labels.to(dev)
    regions = regions.to(dev) if regions is not None else None
    with torch.inference_mode():
        y = head(bb.embed(x)).argmax(-1)

    def infer():
        with torch.inference_mode():
            return head(bb.embed(x))

    def pltx_call():
        with torch.inference_mode():
            return net(x)

    _, inf_ms, inf_rep = _timed(infer, n, dev, cfg.time_repeats)
    _, pltx_ms, pltx_rep = _timed(pltx_call, n, dev, cfg.time_repeats)
    res = finetune(net, bb, head, x, cfg, labels=labels, pos_auc=True, eval_cfg=ev, progress=progress)
    tve = suite.explainer(backbone)
    tve_map, tve_ms, tve_rep = _timed(lambda: tve.explain(x, head), n, dev, cfg.time_repeats)
    budget = max(ev.budgets)
    ks = make_explainer("kernelshap", bb, suite, budget=budget)
    t0 = time.perf_counter()
    ks_map = ks.explain(x, head)
    ks_ms = 1000 * (time.perf_counter() - t0) / n

    # every method is scored on the class predicted on the full image (also in LTX's "target" mode)
    c_l, s_l = score_ltx(bb, head, x, res, cfg, ev, SELECTIONS, regions, meta, suite.seed, target=y)
    c_o, s_o = evaluate_maps(bb, head, x, {"tve": tve_map, "kernelshap": ks_map}, y, regions, ev,
                             budget={"kernelshap": budget}, meta=dict(meta, selection=NO_SELECTION), seed=suite.seed)
    train_s = hist[-1]["seconds"] if hist else float("nan")
    ft_ms = 1000 * res.seconds / n
    sel_ms = ft_ms + 1000 * res.extra.get("pos_auc_seconds", float("nan")) / n
    costs = pd.DataFrame([
        dict(method="pltx", selection=NO_SELECTION, budget=0, train_scope="task", train_s=train_s,
             explain_ms_per_image=pltx_ms),
        dict(method="ltx", selection="loss", budget=0, train_scope="task", train_s=train_s,
             explain_ms_per_image=ft_ms),
        dict(method="ltx", selection="test_metric", budget=0, train_scope="task", train_s=train_s,
             explain_ms_per_image=sel_ms),
        dict(method="tve", selection=NO_SELECTION, budget=0, train_scope="backbone",
             train_s=_tve_seconds(suite, backbone), explain_ms_per_image=tve_ms),
        dict(method="kernelshap", selection=NO_SELECTION, budget=budget, train_scope="none", train_s=0.0,
             explain_ms_per_image=ks_ms),
        dict(method="inference", selection=NO_SELECTION, budget=0, train_scope="none", train_s=0.0,
             explain_ms_per_image=inf_ms),
    ]).assign(**meta, n_images=n, seed=suite.seed)
    costs["ratio_to_inference"] = inf_ms / costs["explain_ms_per_image"]

    base = dict(device=str(dev), threads=torch.get_num_threads(), backbone=backbone, size="profile", n_tasks=1,
                basis="measured", estimated=False)
    tp = pd.DataFrame([
        base | dict(method="inference", budget=None, batch_size=n, ms_per_image=inf_ms, repeats=inf_rep),
        base | dict(method="pltx", budget=None, batch_size=n, ms_per_image=pltx_ms, repeats=pltx_rep),
        base | dict(method="ltx", budget=cfg.ft_steps, batch_size=min(cfg.ft_batch, n), ms_per_image=ft_ms,
                    repeats=1),
    ])
    tp["images_per_s"] = 1000.0 / tp["ms_per_image"]
    tp["task"] = task  # for the record; `throughput_table` merges the tasks

    steps = torch.arange(res.n_steps)
    sel = {s: res.select(s, cfg.stop_pos_auc)[1].cpu() for s in SELECTIONS}
    traj = pd.DataFrame(dict(step=steps.numpy(), loss=res.losses.mean(0).cpu().numpy(),
                             pos_auc=res.pos_auc.mean(0).cpu().numpy(),
                             **{f"selected_{s}": (v.unsqueeze(1) == steps).float().mean(0).numpy()
                                for s, v in sel.items()})).assign(**meta)
    k = min(ev.n_gallery, n)

    def centred(m: torch.Tensor) -> torch.Tensor:  # masks lie in (0, 1): show them around their mean
        return (m - m.mean((1, 2), keepdim=True)).cpu()

    gallery = dict(images=raw[:k].cpu(), regions=None if regions is None else regions[:k].cpu(),
                   labels=labels[:k].cpu(),
                   maps={"pLTX": centred(res.masks[:k, 0]), "LTX (loss)": centred(res.select("loss")[0][:k]),
                         "TVE": tve_map[:k].cpu(), f"KernelSHAP-{budget}": ks_map[:k].cpu()})
    return TaskComparison(concat([s_l, s_o]), concat([c_l, c_o]), costs, tp,
                          pd.DataFrame(hist).assign(**meta), traj, gallery)


def _tve_seconds(suite: Suite, backbone: str) -> float:
    """TVE's pre-training time (per backbone, shared by every task); NaN when unrecorded."""
    try:
        h = suite.tve_history(backbone)
        return float(h[-1]["seconds"]) if h else float("nan")
    except (KeyError, IndexError, TypeError):
        return float("nan")


def throughput_table(tp: pd.DataFrame) -> pd.DataFrame:
    """One throughput row per device × backbone × method from the per-task rows of `compare_task`:
    the median ms/image over tasks (throughput does not depend on the task), repeats summed."""
    keys = ["device", "threads", "backbone", "size", "method", "budget", "batch_size", "n_tasks", "basis",
            "estimated"]
    out = tp.groupby(keys, dropna=False, sort=False).agg(ms_per_image=("ms_per_image", "median"),
                                                         repeats=("repeats", "sum")).reset_index()
    out["images_per_s"] = 1000.0 / out["ms_per_image"]
    return out


def missing_inference(tp: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """``tp`` without its inference rows where throughput.csv already has one for the same device,
    backbone, size and batch size (notebook 04's measurement is kept; ours fills gaps only)."""
    path = Path(path)
    if not path.exists():
        return tp
    old = pd.read_csv(path)
    if "method" not in old:
        return tp
    keys = ["device", "backbone", "size", "batch_size"]
    have = set(map(tuple, old.loc[old.method == "inference", keys].astype(str).values.tolist()))
    known = pd.Series([tuple(r) in have for r in tp[keys].astype(str).values.tolist()], index=tp.index)
    dup = (tp.method == "inference") & known
    return tp[~dup]


# ----------------------------------------------------------------------------- rankings and the claim
def method_label(method: str, selection: str = NO_SELECTION, budget: float | int = 0) -> str:
    """Display name: ``ltx (loss)``, ``ltx (test_metric)``, ``kernelshap-1000``, ``tve``..."""
    from .fidelity import method_label as base_label

    name = base_label(method, 0 if pd.isna(budget) else budget)
    return name if selection in (NO_SELECTION, "", None) or pd.isna(selection) else f"{name} ({selection})"


def rank_methods(summary: pd.DataFrame) -> pd.DataFrame:
    """Mean rank per method and metric over backbone × task × head (1 = best, by ``DIRECTION``).

    Rows of the ``test_metric`` selection are never ranked: that selection peeks at the
    evaluation metric with the true label, so it is reported beside the ranking only.
    """
    from .metrics import DIRECTION

    if "selection" not in summary:
        raise ValueError("summary rows need a 'selection' column (LTX rows record which selection ran)")
    d = summary[(summary.selection != "test_metric") & summary.metric.isin(list(DIRECTION))].copy()
    d["label"] = [method_label(m, s, b) for m, s, b in zip(d.method, d.selection, d.budget)]
    d["oriented"] = d.value * d.metric.map(DIRECTION)
    d["rank"] = d.groupby(["backbone", "task", "head", "metric"])["oriented"].rank(ascending=False)
    return d.groupby(["metric", "label"])["rank"].agg(["mean", "count"]).rename(
        columns={"mean": "mean_rank", "count": "n_settings"}).reset_index()


def finetune_claim(summary: pd.DataFrame) -> pd.DataFrame:
    """Per metric and selection: does LTX improve on pLTX? ``n_settings, n_better, mean_gain``.

    ``gain`` = LTX − pLTX oriented so that positive is better (``metrics.DIRECTION``).
    """
    from .metrics import DIRECTION

    keys = ["backbone", "task", "head", "metric"]
    d = summary[summary.metric.isin(list(DIRECTION))]
    p = d[d.method == "pltx"].set_index(keys)["value"].rename("pltx")
    rows = []
    for sel in SELECTIONS:
        lt = d[(d.method == "ltx") & (d.selection == sel)].set_index(keys)["value"].rename("ltx")
        j = pd.concat([p, lt], axis=1, join="inner").reset_index()
        if not len(j):
            continue
        j["gain"] = (j.ltx - j.pltx) * j.metric.map(DIRECTION)
        for metric, g in j.groupby("metric"):
            rows.append(dict(selection=sel, metric=metric, n_settings=len(g), n_better=int((g.gain > 0).sum()),
                             n_worse=int((g.gain < 0).sum()), mean_gain=g.gain.mean(), mean_pltx=g.pltx.mean(),
                             mean_ltx=g.ltx.mean()))
    return pd.DataFrame(rows)


def claim_verdict(claim: pd.DataFrame, selection: str = "loss") -> str:
    """One sentence with the numbers: does per-instance fine-tuning improve on pLTX?

    "reproduces" when LTX is better in at least two thirds of the settings on a majority of
    the metrics, "does not reproduce" when it is better in at most one third on a majority,
    "mixed" otherwise.
    """
    c = claim[claim.selection == selection]
    if not len(c):
        return f"no LTX ({selection}) rows to judge the claim"
    share = c.n_better / c.n_settings
    parts = [f"{r.metric}: better in {r.n_better}/{r.n_settings} (mean gain {r.mean_gain:+.3g})"
             for r in c.itertuples()]
    if (share >= 2 / 3).sum() > len(c) / 2:
        verdict = "reproduces"
    elif (share <= 1 / 3).sum() > len(c) / 2:
        verdict = "does not reproduce"
    else:
        verdict = "is mixed"
    return (f"With selection={selection}, the claim that per-instance fine-tuning improves on the pre-trained "
            f"explainer {verdict}: " + "; ".join(parts) + ".")


# ----------------------------------------------------------------------------- figures
def comparison_figure(summary: pd.DataFrame, metrics: tuple[str, ...] = ("fid_plus_auc", "fid_minus_auc",
                                                                           "pos_auc", "neg_auc")):
    """Bars of each metric per method (hatched: the test_metric selection), one panel per metric."""
    import seaborn as sns

    d = summary[summary.metric.isin(metrics)].copy()
    d["label"] = [method_label(m, s, b) for m, s, b in zip(d.method, d.selection, d.budget)]
    d["setting"] = d.backbone + " / " + d.task
    g = sns.catplot(data=d, x="value", y="setting", hue="label", col="metric", kind="bar", col_wrap=2,
                    height=3.2, aspect=1.3, sharex=False)
    for ax in g.axes.flat:
        for bar_group, lab in zip(ax.containers, d.label.unique()):  # hue order = order of appearance
            if "test_metric" in lab:
                for b in bar_group:
                    b.set_hatch("//")
    g.figure.suptitle("LTX vs pLTX, TVE and KernelSHAP (hatched: selected with the test metric)", y=1.02)
    return g.figure


def trajectory_figure(traj: pd.DataFrame):
    """Fine-tuning: mean training loss and POS-AUC per step, and where each selection stops."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    d = traj.copy()
    d["setting"] = d.backbone + " / " + d.task
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    sns.lineplot(data=d, x="step", y="loss", hue="setting", ax=axes[0])
    axes[0].legend(fontsize=6, ncol=2)
    axes[0].set_title("training loss (mean over images)")
    sns.lineplot(data=d, x="step", y="pos_auc", hue="setting", ax=axes[1], legend=False)
    axes[1].set_title("POS-AUC with the label (lower is better)")
    long = d.melt(id_vars=["step", "setting"], value_vars=[c for c in d if c.startswith("selected_")],
                  var_name="selection", value_name="share")
    long["selection"] = long.selection.str.removeprefix("selected_")
    sns.lineplot(data=long, x="step", y="share", hue="selection", ax=axes[2], errorbar=None)
    axes[2].set_title("share of images whose selected step is this one")
    fig.tight_layout()
    return fig
