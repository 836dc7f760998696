"""TVE pre-training: one loop, two samplers (docs/method.md §1).

``cfg.sampler = "dense"``: every window of every image supervises each step, from the target store
(`tve_lib.explainers.tve_targets`), computed once and reused over the epochs. ``"online"``: K window centres drawn
per image per step (K = 1 official) and their targets computed on the fly by the frozen backbone,
for upstream sets too large to store. Both take the first ``n_images`` of the same seeded order of
the upstream set and shuffle it every epoch, so with ``K >= G²`` (every window) the online sampler
follows the dense one step for step. The loss is the mean squared error over the supervised
windows, D and the batch, for both branches (`tve_loss`). The explainer's forward runs under the
backbone's training autocast (`tve_model.explainer_forward`: bf16 on a GPU, and under "native" on a CPU with
bf16 instructions) and the loss in fp32; bf16 keeps fp32's exponent range, so no gradient scaling is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..config import TVEConfig
from ..imagesets import ImageSet, iter_batches
from ..io import checkpoint, resume, save_torch
from ..loader import load_batches
from ..masking import MASKED_BATCH, window_radius
from .tve_model import check_config, check_counts, explainer_forward
from .tve_targets import DTYPES, all_window_embeddings, token_store, upstream_order, window_store, window_targets

SAMPLERS = ("dense", "online")


LOSS_DIMS = ("plain", "whitened")


def dim_weights(tk: torch.Tensor, tr: torch.Tensor, mode: str) -> torch.Tensor | None:
    """Per-dimension weights ``[D]`` of the squared error: None for ``"plain"`` (every dimension alike,
    the method's MSE); for ``"whitened"``, one over each dimension's variance in the targets ``tk, tr``
    (both branches pooled; floored at 1 % of the mean variance), scaled to mean 1 so the loss keeps its size.
    """
    if mode not in LOSS_DIMS:
        raise ValueError(f"unknown loss_dims {mode!r}; expected one of: {', '.join(LOSS_DIMS)}")
    if mode == "plain":
        return None
    var = torch.cat([tk.flatten(0, -2), tr.flatten(0, -2)]).float().var(0)
    w = 1.0 / var.clamp_min(0.01 * var.mean())
    return w / w.mean()


def _mse(p: torch.Tensor, t: torch.Tensor, centred_weight: float, dim_weight: torch.Tensor | None = None
         ) -> torch.Tensor:
    e = p - t
    if dim_weight is not None:  # a weighted squared error is the plain one of rescaled errors
        e = e * dim_weight.sqrt()
    if centred_weight == 1.0:
        return (e ** 2).mean()
    # the MSE splits exactly into the error of the per-image mean over windows and the error of the
    # deviations from it (the part a ranking of windows reads); weight 1 is the plain MSE
    m = e.mean(1, keepdim=True)
    return (m ** 2).mean() + centred_weight * ((e - m) ** 2).mean()


def tve_loss(pk: torch.Tensor, pr: torch.Tensor, tk: torch.Tensor, tr: torch.Tensor,
             centres: torch.Tensor | None, centred_weight: float = 1.0,
             dim_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two branch MSEs: over every window (``centres=None``) or the drawn ``centres [B, K]``.

    ``centred_weight`` (every window only) weights the within-image part of the error: 1 gives
    the plain MSE, the method's objective. ``dim_weight [D]`` (`dim_weights`) weights each embedding
    dimension's squared error.
    """
    if centres is not None:
        if centred_weight != 1.0:
            raise ValueError("centred_weight != 1 needs every window of an image (dense sampler or K >= G²)")
        idx = centres.unsqueeze(-1).expand(-1, -1, pk.shape[-1])
        pk, pr = pk.gather(1, idx), pr.gather(1, idx)
    return _mse(pk, tk, centred_weight, dim_weight), _mse(pr, tr, centred_weight, dim_weight)


class _ImageFeed:
    """The upstream images of each step, in the order of an epoch's plan: a file-backed set (ImageNet)
    is decoded ahead by loader workers (`tve_lib.loader`), each rank reading only its slice."""

    train: ImageSet
    ids: torch.Tensor
    bb: Backbone
    _feed = None
    needs_images = True  # False when every step's inputs are stored (the tapped explainer's tokens)

    def plan(self, order: torch.Tensor, batch_size: int, rank: int, world: int) -> None:
        """Prefetch the images of every step of ``order`` (positions into ``ids``) for this rank."""
        if not self.train.file_backed:
            return
        slices = []
        for s in range(0, len(order), batch_size):
            pos = order[s:s + batch_size]
            slices.append(self.ids[pos[(len(pos) * rank) // world:(len(pos) * (rank + 1)) // world]])
        self._feed = load_batches(self.train, slices, pin_memory=self.bb.mean.device.type == "cuda")

    def images(self, pos: torch.Tensor) -> torch.Tensor:
        """Normalised images of ``ids[pos]`` (from the plan when there is one)."""
        raw = next(self._feed)[0] if self._feed is not None else self.train.get(self.ids[pos])[0]
        if len(raw) != len(pos):
            raise RuntimeError(f"image feed out of step: {len(raw)} images for {len(pos)} positions")
        return self.bb.normalize(raw.to(self.bb.mean.device, non_blocking=True))


class OnlineSource(_ImageFeed):
    """Targets of K drawn windows per image computed by the backbone at every step."""

    def __init__(self, model: nn.Module, bb: Backbone, train: ImageSet, ids: torch.Tensor, radius: int, k: int,
                 chunk: int = MASKED_BATCH):
        self.model, self.bb, self.train, self.ids, self.radius, self.chunk = model, bb, train, ids, radius, chunk
        self.k = k if k < bb.n_players else None  # K >= G²: every window, nothing drawn
        self.cost = 0.0  # no stored targets

    def centres(self, n: int, gen: torch.Generator) -> torch.Tensor | None:
        return None if self.k is None else torch.randint(0, self.bb.n_players, (n, self.k), generator=gen)

    def batch(self, pos: torch.Tensor, centres: torch.Tensor | None):
        x = self.images(pos)
        if centres is None:
            tk, tr = all_window_embeddings(self.bb, x, self.radius, self.chunk)
        else:
            centres = centres.to(x.device)
            tk, tr = window_targets(self.bb, x, centres, self.radius, self.chunk)
        inp, base = self.model.prepare(self.bb, x)
        return inp, base, tk, tr, centres


class DenseSource(_ImageFeed):
    """Every window of every image, read from the target store (and the token store if tapped)."""

    def __init__(self, model: nn.Module, bb: Backbone, train: ImageSet, ids: torch.Tensor, radius: int,
                 cfg: TVEConfig, root: Path, seed: int, progress: bool, rank: int, world: int):
        self.model, self.bb, self.train, self.ids = model, bb, train, ids
        n = len(ids)
        stores = [window_store(bb, train, root, seed, radius, cfg.target_dtype, cfg.target_batch_size)]
        if model.tapped:
            stores.append(token_store(bb, train, root, seed, cfg, cfg.target_batch_size))
        for store, compute in stores:
            if rank == 0:
                store.build(n, compute, f"targets {bb.name}", progress)
            if world > 1:
                dist.barrier()
        dev, self.dtype = bb.mean.device, bb.mean.dtype
        self.data, self.cost = {}, 0.0  # cost: what the targets cost, reused or not
        for store, _ in stores:
            data, cost = store.read(n)
            # converted once to the training precision (exact from float16), not at every step
            self.data.update({k: v.to(dev, self.dtype) for k, v in data.items()})
            self.cost += cost
        self.needs_images = "tokens" not in self.data

    def centres(self, n: int, gen: torch.Generator) -> None:
        return None

    def batch(self, pos: torch.Tensor, centres: None):
        d = {k: v[pos.to(v.device)] for k, v in self.data.items()}
        inp = d["tokens"] if "tokens" in d else self.images(pos)
        return inp, d["base"], d["keep"], d["remove"], None


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
def prepare_batches(model: nn.Module, backbone: Backbone, x: torch.Tensor, batch_size: int) -> list[tuple]:
    """``model.prepare`` of each batch of ``x``: the backbone is frozen, so a fixed probe's inputs are
    computed once and reused at every epoch."""
    return [model.prepare(backbone, x[s:s + batch_size]) for s in range(0, len(x), batch_size)]


@torch.no_grad()
def heldout_losses(model: nn.Module, backbone: Backbone, x: torch.Tensor, centres: torch.Tensor,
                   tk: torch.Tensor, tr: torch.Tensor, batch_size: int,
                   prepared: list[tuple] | None = None) -> dict[str, float]:
    """Held-out MSE of both branches, and the trivial predictor's (mean target) for the ratio.
    ``prepared``: `prepare_batches` of ``x`` at ``batch_size``, when already computed."""
    model.eval()
    prepared = prepared if prepared is not None else prepare_batches(model, backbone, x, batch_size)
    se_k = se_r = 0.0
    for (inp, base), s in zip(prepared, range(0, len(x), batch_size)):
        lk, lr = tve_loss(*explainer_forward(model, backbone, inp, base), tk[s:s + batch_size],
                          tr[s:s + batch_size], centres[s:s + batch_size])
        se_k, se_r = se_k + lk.item() * tk[s:s + batch_size].numel(), se_r + lr.item() * tr[s:s + batch_size].numel()
    n = tk.numel()
    triv_k = ((tk - tk.mean((0, 1))) ** 2).mean().item()
    triv_r = ((tr - tr.mean((0, 1))) ** 2).mean().item()
    return {"loss_keep": se_k / n, "loss_remove": se_r / n, "trivial_keep": triv_k,
            "trivial_remove": triv_r}


def _probe(backbone: Backbone, val: ImageSet, cfg: TVEConfig, seed: int, radius: int):
    """A fixed held-out probe: the same images and window centres every epoch."""
    gv = torch.Generator().manual_seed(10_000 + seed)
    vidx = torch.randperm(len(val), generator=gv)[: cfg.n_heldout]
    device = backbone.mean.device
    vx = torch.cat([backbone.normalize(r.to(device)) for r, _, _ in iter_batches(val, 256, vidx)])
    k = min(cfg.windows_per_image, 2) if cfg.sampler == "online" else 2
    vc = torch.randint(0, backbone.n_players, (len(vx), k), generator=gv).to(device)
    return (vx, vc, *window_targets(backbone, vx, vc, radius, cfg.target_batch_size))


def _optimiser(model: nn.Module, cfg: TVEConfig, total: int) -> dict[str, Any]:
    """AdamW with warm-up then cosine decay over ``total`` steps, as the objects a checkpoint saves."""
    # the fused kernel: one pass over the parameters instead of a dozen elementwise ones; 5 % of a cpu-profile step
    # (74.8 -> 71.1 ms, 2 threads; docs/benchmarks.md, "bf16 inference on this CPU")
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(cfg.warmup_frac * total))))
    return {"model": model, "opt": opt, "sched": sched}


def _epoch(net: nn.Module, objs: dict[str, Any], source: DenseSource | OnlineSource, cfg: TVEConfig,
           order: torch.Tensor, gen: torch.Generator, epoch: int, bar: tqdm | None,
           on_step: Callable[[int, float, float], None] | None, dim_weight: torch.Tensor | None = None
           ) -> tuple[float, float, int]:
    """One pass over ``order`` in global batches, advancing the run's ``bar`` (None: no progress shown);
    returns the summed keep/remove losses and images seen."""
    rank, world = _dist()
    opt, sched = objs["opt"], objs["sched"]
    steps = math.ceil(len(order) / cfg.batch_size)
    if source.needs_images:
        source.plan(order, cfg.batch_size, rank, world)
    net.train()
    sk = sr = 0.0
    seen = 0
    for step in range(steps):
        pos = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        centres = source.centres(len(pos), gen)  # drawn for the global batch: same on every rank
        lo, hi = (len(pos) * rank) // world, (len(pos) * (rank + 1)) // world
        inp, base, tk, tr, c = source.batch(pos[lo:hi], None if centres is None else centres[lo:hi])
        lk, lr = tve_loss(*explainer_forward(net, source.bb, inp, base), tk, tr, c, cfg.centred_weight,
                          dim_weight)
        opt.zero_grad(set_to_none=True)
        (cfg.keep_weight * lk + lr).backward()
        opt.step()
        sched.step()
        losses = torch.stack([lk.detach(), lr.detach()]) * (hi - lo)
        if world > 1:
            dist.all_reduce(losses)
        sk, sr, seen = sk + losses[0].item(), sr + losses[1].item(), seen + len(pos)
        if on_step is not None:
            on_step(epoch * steps + step, losses[0].item() / len(pos), losses[1].item() / len(pos))
        if bar is not None:
            bar.update()
            bar.set_postfix(keep=f"{sk / seen:.4f}", remove=f"{sr / seen:.4f}", refresh=False)
    return sk, sr, seen


def _heldout_probe(model: nn.Module, backbone: Backbone, val: ImageSet, cfg: TVEConfig, seed: int, radius: int
                   ) -> tuple[tuple, list[tuple], torch.Tensor | None]:
    """The held-out probe (images and both branches' targets), its prepared inputs, and the loss's per-dimension
    weights, taken from the probe's targets: the same for both samplers, and fixed before the first step."""
    probe = _probe(backbone, val, cfg, seed, radius)
    inputs = prepare_batches(model, backbone, probe[0], cfg.batch_size)
    return probe, inputs, dim_weights(probe[2], probe[3], cfg.loss_dims)


def check_pretrain_config(cfg: TVEConfig, backbone: Backbone) -> None:
    """The choices and sizes of ``cfg`` that pre-training reads, checked before any target is computed (a store can
    take minutes): sampler, loss dimensions, the store's dtype, counts, weights, and a within-image weight only where
    every window is seen."""
    check_config(backbone, cfg)
    for field, known in (("sampler", SAMPLERS), ("loss_dims", LOSS_DIMS), ("target_dtype", tuple(DTYPES))):
        if getattr(cfg, field) not in known:
            raise ValueError(f"unknown TVE {field} {getattr(cfg, field)!r}; expected one of: {', '.join(known)}")
    check_counts(cfg, ("n_images", "epochs", "batch_size", "n_heldout", "target_batch_size", "windows_per_image"))
    if not 0 <= cfg.warmup_frac < 1 or cfg.keep_weight < 0 or cfg.centred_weight < 0:
        raise ValueError(f"TVE warmup_frac must be in [0, 1), keep_weight and centred_weight >= 0; got "
                         f"{cfg.warmup_frac}, {cfg.keep_weight}, {cfg.centred_weight}")
    if cfg.centred_weight != 1.0 and cfg.sampler == "online" and cfg.windows_per_image < backbone.n_players:
        raise ValueError(f"centred_weight={cfg.centred_weight:g} needs every window of an image: the dense sampler, "
                         f"or windows_per_image >= {backbone.n_players} (G²) with the online one; got "
                         f"windows_per_image={cfg.windows_per_image}")


def pretrain(model: nn.Module, backbone: Backbone, train: ImageSet, val: ImageSet, cfg: TVEConfig,
             ckpt: Path, seed: int, radius: int | None = None, progress: bool = True,
             on_step: Callable[[int, float, float], None] | None = None,
             store_dir: Path | None = None, init_seconds: float = 0.0) -> list[dict]:
    """Pre-train ``model`` on the upstream set; one checkpoint per epoch, resumes after interruption.

    Under torchrun each rank takes its slice of the global batch and DDP averages gradients, so
    the trajectory matches a one-process run of the same global batch. The dense sampler's store
    lives in ``store_dir`` (default: beside ``ckpt``). Returns rows ``epoch, split, loss_keep,
    loss_remove, trivial_keep, trivial_remove, seconds, target_seconds``: ``seconds`` is the
    training time plus ``target_seconds``, what computing the stored targets of these images cost
    (also when an earlier run had built them), so budgets compare on total compute; ``init_seconds``, the
    training time already spent on the weights ``model`` starts from (a continued budget), is counted in it.
    """
    check_pretrain_config(cfg, backbone)
    rank, world = _dist()
    device = backbone.mean.device
    radius = window_radius(radius if radius is not None else cfg.radius, backbone.grid)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    n = min(cfg.n_images, len(train))
    per_epoch = math.ceil(n / cfg.batch_size)
    objs = _optimiser(model, cfg, cfg.epochs * per_epoch)
    part = Path(ckpt).with_suffix(".partial.pt")
    state = resume(part, objs) or {"epoch": 0, "history": [], "seconds": init_seconds}
    ids = upstream_order(train, seed)[:n]
    source = _source(model, backbone, train, ids, radius, cfg, Path(store_dir or Path(ckpt).parent), seed,
                     progress)
    if "target_seconds" not in state:  # counted once, also when the store was built by an earlier run
        state["target_seconds"] = source.cost
        state["seconds"] += state["target_seconds"]
    probe, probe_inputs, dim_weight = _heldout_probe(model, backbone, val, cfg, seed, radius)

    # one bar for the whole pre-training, not one per epoch: a notebook keeps every bar it ever showed
    bar = tqdm(total=cfg.epochs * per_epoch, initial=state["epoch"] * per_epoch, leave=False,
               disable=not progress or rank != 0)
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(n, generator=gen)
        bar.set_description(f"TVE {backbone.name} epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        sk, sr, seen = _epoch(net, objs, source, cfg, order, gen, epoch, bar, on_step, dim_weight)
        state["seconds"] += time.time() - t0
        ho = heldout_losses(model, backbone, probe[0], probe[1], probe[2], probe[3], cfg.batch_size, probe_inputs)
        common, e = {"seconds": state["seconds"], "target_seconds": state["target_seconds"]}, epoch + 1
        state["history"] += [{"epoch": e, "split": "train", "loss_keep": sk / seen, "loss_remove": sr / seen, **common},
                             {"epoch": e, "split": "heldout", **ho, **common}]
        state["epoch"] = epoch + 1
        if rank == 0:
            checkpoint(part, objs, **state)
        if world > 1:
            dist.barrier()
    bar.close()
    model.eval()
    if rank == 0:
        save_torch({"model": model.state_dict(), "history": state["history"], "radius": radius, "cfg": cfg}, ckpt)
        part.unlink(missing_ok=True)
    return state["history"]


def _source(model: nn.Module, backbone: Backbone, train: ImageSet, ids: torch.Tensor, radius: int, cfg: TVEConfig,
            store_dir: Path, seed: int, progress: bool) -> DenseSource | OnlineSource:
    """The targets of the pre-training images: the dense sampler's store, or the online sampler's passes."""
    if cfg.sampler == "dense":
        rank, world = _dist()
        return DenseSource(model, backbone, train, ids, radius, cfg, store_dir, seed, progress, rank, world)
    return OnlineSource(model, backbone, train, ids, radius, cfg.windows_per_image, cfg.target_batch_size)


def step_seconds(model: nn.Module, backbone: Backbone, train: ImageSet, cfg: TVEConfig, steps: int = 1,
                 seed: int = 0) -> list[float]:
    """Seconds of each of ``steps`` pre-training steps (after one warm-up step) of ``model`` on the first
    images of ``train``, through the one training loop: what a step costs, and so how many images per
    second it consumes (``cfg.batch_size`` / seconds). Trains ``model``: give it a throwaway copy."""
    radius = window_radius(cfg.radius, backbone.grid)
    n = cfg.batch_size
    ids = torch.arange(min(n, len(train)))
    source = OnlineSource(model, backbone, train, ids, radius, cfg.windows_per_image, cfg.target_batch_size)
    objs = _optimiser(model, cfg, steps + 1)
    out = []
    for i in range(steps + 1):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        t0 = time.perf_counter()
        _epoch(model, objs, source, cfg, torch.arange(len(ids)), gen, i, None, None)
        if backbone.mean.device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out[1:]
