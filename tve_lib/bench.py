"""Honest timing of explainers (notebook 04): warm-up, repeated timed runs, medians and spreads.

* `time_call` times a callable: ``warmup`` untimed runs, then ``repeats`` timed ones, with
  ``torch.cuda.synchronize`` before and after each timed run on GPU (kernels run asynchronously,
  so a timer without it measures the launch, not the work). Threads, device and dtype are recorded.
* `record_model_calls` logs every backbone call an explainer makes (batch size, whether autograd
  runs through it); `time_model_calls` replays those calls alone, so an explainer's own overhead is
  its time over the replay's (KernelSHAP's ≤ 20 % target). With ``stand_in=True`` the backbone is
  swapped for a near-free linear map: one such run gives the call count and the explainer's own
  time of a method too expensive to run (KernelSHAP-1000 at ViT-B size on CPU).
* `run_backbone` benchmarks the backbone's inference and every method on one backbone at every batch
  size, then the task scaling. A row whose measurement is predicted to exceed its time cap is
  *estimated* and says so (``estimated``, ``basis``); it is never silently dropped.
* `throughput_frame`, `add_ratios`, `append_throughput` and `target_checks` make and check the
  tidy ``throughput.csv``; the figure builders read only that table.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import NullLocator
from torch import nn

from .backbones import Backbone, create_model, wrap
from .config import BenchConfig, Profile, TVEConfig, get_profile
from .explainers.base import Explainer
from .fidelity import method_label as fidelity_label
from .heads import last_linear, make_head
from .io import device_info, upsert_csv
from .masking import default_radius

if TYPE_CHECKING:
    from .suite import Suite

# backward through the model costs about two forwards (the usual rule of thumb), so a call with
# autograd is charged three forwards when a cost is estimated from inference time
GRAD_FACTOR = 3.0
PRIORITY = ("tve", "kernelshap")  # benchmarked first (the targets' methods), the rest in registry order
NO_ARCH = "-"  # tve_arch of methods that are not TVE (a string, so CSV round trips keep keys equal)

THROUGHPUT_COLUMNS = ["device", "threads", "backbone", "size", "method", "budget", "batch_size", "n_tasks",
                      "images_per_s", "ms_per_image", "ratio_to_inference", "repeats"]
EXTRA_COLUMNS = ["tve_arch", "estimated", "basis", "shared_tasks", "ms_per_image_iqr", "warmup",
                 "model_images_per_image", "dtype", "device_name"]
THROUGHPUT_KEYS = ["device", "backbone", "size", "method", "budget", "tve_arch", "batch_size", "n_tasks"]
OVERHEAD_COLUMNS = ["device", "threads", "backbone", "size", "method", "budget", "batch_size",
                    "explainer_ms_per_image", "model_calls_ms_per_image", "overhead", "model_images_per_image",
                    "model_batches", "estimated"]

# the targets, as ratios within one run
TARGETS = {
    "tve_over_kernelshap": 200.0,  # TVE images/s over KernelSHAP-1000's, >=
    "tve_ratio_to_inference": 0.33,  # TVE images/s over the backbone's inference, >=
    "tve_shared_ratio_to_inference": 0.5,  # the aim for the shared-trunk TVE, >=
    "tve_tasks_cost": 1.2,  # TVE time for n_tasks heads over one head, <=
    "kernelshap_overhead": 0.2,  # KernelSHAP's time over its model calls alone, minus 1, <=
}


# ----------------------------------------------------------------------------- timing
def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work on ``device`` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Timed repeats of one call that processes ``n_images`` images."""

    times_s: tuple[float, ...]
    n_images: int
    warmup: int
    device: str
    threads: int
    dtype: str

    @property
    def repeats(self) -> int:
        return len(self.times_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def iqr_s(self) -> float:
        q25, q75 = np.percentile(self.times_s, [25, 75])
        return float(q75 - q25)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.median_s

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.median_s / self.n_images

    @property
    def ms_per_image_iqr(self) -> float:
        return 1000.0 * self.iqr_s / self.n_images

    def summary(self) -> dict:
        return dict(images_per_s=self.images_per_s, ms_per_image=self.ms_per_image,
                    ms_per_image_iqr=self.ms_per_image_iqr, repeats=self.repeats, warmup=self.warmup,
                    device=self.device, threads=self.threads, dtype=self.dtype)


def time_call(fn: Callable[[], object], n_images: int, device: str | torch.device = "cpu", repeats: int = 5,
              warmup: int = 1, dtype: torch.dtype | str = torch.float32,
              clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (median and IQR reported).

    ``n_images`` is how many images one call processes (for images/s and ms/image). On a CUDA
    device every timed run is bracketed by ``torch.cuda.synchronize``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = clock()
        fn()
        synchronize(device)
        times.append(clock() - t0)
    return Timing(tuple(times), n_images, warmup, str(torch.device(device)), torch.get_num_threads(),
                  str(dtype).removeprefix("torch."))


# ----------------------------------------------------------------------------- model calls
@dataclass
class CallLog:
    """Backbone calls made by an explainer: batch size and whether autograd ran through each."""

    sizes: list[int] = field(default_factory=list)
    grad: list[bool] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(self.sizes)

    @property
    def n_calls(self) -> int:
        return len(self.sizes)

    def cost_ms(self, inference_ms: dict[int, float], grad_factor: float = GRAD_FACTOR) -> float:
        """Estimated time of these calls from inference ms/image measured at some batch sizes."""
        return sum(s * nearest(inference_ms, s) * (grad_factor if g else 1.0)
                   for s, g in zip(self.sizes, self.grad))


def nearest(curve: dict[int, float], size: int) -> float:
    """The value of ``curve`` (batch size -> value) at the batch size nearest ``size`` (log scale)."""
    if not curve:
        raise ValueError("empty curve: time the backbone's inference first")
    return curve[min(curve, key=lambda b: (abs(math.log(b) - math.log(max(size, 1))), -b))]


@contextmanager
def record_model_calls(backbone: Backbone, stand_in: bool = False) -> Iterator[CallLog]:
    """Log every ``backbone.embed`` / ``backbone(x)`` call made inside the block.

    ``stand_in=True`` also replaces the network by a fixed linear map of the mean colour
    (``[B, 3] -> [B, D]``, differentiable), so the block costs what the explainer itself costs.
    """
    if "embed" in vars(backbone):
        raise RuntimeError(f"backbone {backbone.name} is already being recorded")
    log = CallLog()
    if stand_in:
        gen = torch.Generator().manual_seed(0)
        proj = (torch.randn(3, backbone.embed_dim, generator=gen) / math.sqrt(3)).to(backbone.mean.device)

        def net(x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) @ proj.to(x.dtype)
    else:
        net = backbone.embed

    def embed(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        log.sizes.append(int(x.shape[0]))
        log.grad.append(bool(out.requires_grad))
        return out

    # instance attributes shadow the class's methods; nn.Module.__call__ looks up self.forward
    backbone.embed = embed
    backbone.forward = embed
    try:
        yield log
    finally:
        del backbone.embed
        del backbone.forward


def time_model_calls(backbone: Backbone, head: nn.Module, log: CallLog, n_images: int,
                     device: str | torch.device, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time the recorded calls alone: ``h(g(x))`` on random batches of the recorded sizes.

    A transformer's cost does not depend on pixel values, so random inputs stand for the masked
    images; calls that ran under autograd are replayed with a backward pass. ``n_images`` is the
    number of explained images the calls served (ms per *explained* image).
    """
    if not log.sizes:
        raise ValueError("no model calls were recorded: nothing to replay")
    s = backbone.img_size
    x = torch.randn(max(log.sizes), 3, s, s, device=device)

    def replay() -> None:
        for n, g in zip(log.sizes, log.grad):
            if g:
                xi = x[:n].clone().requires_grad_(True)
                head(backbone.embed(xi)).sum().backward()
            else:
                with torch.no_grad():
                    head(backbone.embed(x[:n]))

    return time_call(replay, n_images, device, repeats, warmup)


@dataclass(frozen=True)
class DryRun:
    """One explanation with the stand-in backbone: the call log and the explainer's own time."""

    log: CallLog
    seconds: float
    n_images: int

    def estimate_ms(self, inference_ms: dict[int, float]) -> tuple[float, float]:
        """(own ms, model-call ms) per explained image, the latter from measured inference time."""
        return 1000.0 * self.seconds / self.n_images, self.log.cost_ms(inference_ms) / self.n_images


def dry_run(explain: Callable[[], object], backbone: Backbone, n_images: int,
            device: str | torch.device) -> DryRun:
    """Run ``explain`` twice with the stand-in backbone; keeps the faster run (the first warms up)."""
    best, log = math.inf, CallLog()
    for _ in range(2):
        with record_model_calls(backbone, stand_in=True) as cur:
            synchronize(device)
            t0 = time.perf_counter()
            explain()
            synchronize(device)
            dt = time.perf_counter() - t0
        if dt < best:
            best, log = dt, cur
    return DryRun(log, best, n_images)


# ----------------------------------------------------------------------------- benchmark plan
@dataclass
class MethodSpec:
    """One explainer to benchmark: how to build it for a head, and how to time it."""

    method: str
    make: Callable[[nn.Module], Explainer]  # head -> explainer
    budget: int = 0  # model calls per image of a sampling method; 0 for the others (as in the fidelity CSVs)
    tve_arch: str = NO_ARCH
    per_task: bool = False  # one explainer per head (trained on that task): built per head
    dry_run: bool = False  # many model calls: predict its cost with a stand-in run first
    overhead: bool = False  # also time its model calls alone

    @property
    def label(self) -> str:
        return method_label(self.method, self.budget, self.tve_arch)


def method_label(method: str, budget: int = 0, tve_arch: str = NO_ARCH) -> str:
    """``kernelshap-1000``, ``tve (shared)``, ``ig``: the fidelity label plus the TVE variant."""
    out = fidelity_label(method, budget)
    if isinstance(tve_arch, str) and tve_arch not in (NO_ARCH, ""):
        out += f" ({tve_arch})"
    return out


@dataclass(frozen=True)
class BenchPlan:
    """Sizes and repeats of one benchmark section (``size``: ``profile`` or ``paper``)."""

    size: str
    batch_sizes: tuple[int, ...]
    repeats: int
    warmup: int
    max_measure_s: float
    n_tasks: int
    task_batch_size: int
    profile: Profile | None = None  # whose model and explainer sizes this section uses
    time_budget_s: float = 0.0  # the whole section, split over its backbones (0: no limit)
    task_methods: tuple[str, ...] | None = None  # methods in the task scaling (None: all)

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batch_sizes}")
        if self.task_batch_size not in self.batch_sizes:
            raise ValueError(f"task_batch_size {self.task_batch_size} must be one of the batch sizes "
                             f"{self.batch_sizes} (task scaling reuses its one-task row)")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)


def plans(profile: Profile, device: str | torch.device) -> list[BenchPlan]:
    """The profile-size plan and, unless disabled, the paper-size plan (reduced on CPU)."""
    cfg: BenchConfig = profile.bench
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:  # before _task_batch, for a clear message
        raise ValueError(f"bench.batch_sizes must be positive, got {cfg.batch_sizes}")
    out = [BenchPlan("profile", tuple(sorted(cfg.batch_sizes)), cfg.repeats, cfg.warmup, cfg.max_measure_s,
                     cfg.n_tasks, _task_batch(cfg.batch_sizes, cfg.task_batch_size), profile, cfg.time_budget_s,
                     cfg.task_methods)]
    if cfg.paper_size:
        gpu = torch.device(device).type == "cuda"
        bs = tuple(sorted(cfg.paper_batch_sizes if gpu else cfg.paper_batch_sizes_cpu))
        out.append(BenchPlan("paper", bs, cfg.paper_repeats if gpu else cfg.paper_repeats_cpu, cfg.warmup,
                             cfg.paper_max_measure_s if gpu else cfg.paper_max_measure_s_cpu, cfg.n_tasks,
                             _task_batch(bs, cfg.task_batch_size if gpu else cfg.paper_task_batch_size_cpu),
                             get_profile("paper"),
                             cfg.paper_time_budget_s if gpu else cfg.paper_time_budget_s_cpu, cfg.task_methods))
    return out


def _task_batch(batch_sizes: Sequence[int], wanted: int) -> int:
    """The largest benchmarked batch size <= ``wanted`` (else the smallest)."""
    below = [b for b in batch_sizes if b <= wanted]
    return max(below) if below else min(batch_sizes)


# ----------------------------------------------------------------------------- paper-size models
def paper_backbone(name: str, device: str | torch.device) -> Backbone:
    """The paper profile's backbone ``name`` (ViT-B/16, DeiT-B, Swin-B at 224 px) with random weights:
    throughput needs no trained weights."""
    paper = get_profile("paper")
    spec = dataclasses.replace(paper.backbone(name), pretrained=False)
    return wrap(create_model(spec, 1000), spec, paper).to(device)


def random_heads(embed_dim: int, classes: Sequence[int], device: str | torch.device, seed: int = 0,
                 kind: str = "linear") -> list[nn.Module]:
    """Untrained heads, one per entry of ``classes`` (paper-size task scaling)."""
    torch.manual_seed(seed)
    return [make_head(kind, embed_dim, c).to(device).eval().requires_grad_(False) for c in classes]


def random_images(backbone: Backbone, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` normalised random images for ``backbone`` (pixel values do not change a transformer's cost)."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.rand(n, 3, backbone.img_size, backbone.img_size, generator=gen)
    return backbone.normalize(raw)


def tile_images(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` images, repeating the set when it holds fewer."""
    if len(images) == 0:
        raise ValueError("no images to benchmark")
    reps = -(-n // len(images))
    return images.repeat(reps, 1, 1, 1)[:n]


def tve_specs(backbone: Backbone, cfg: TVEConfig, archs: Sequence[str]) -> list[MethodSpec]:
    """One untrained TVE explainer per trunk variant (``shared``/``two``) shaped by ``cfg``."""
    from .tve import TVE, build_explainer

    radius = cfg.radius or default_radius(backbone.grid)
    specs = []
    for arch in archs:
        c = dataclasses.replace(cfg, arch=arch, init_from_backbone=False)
        built: dict[str, TVE] = {}

        def make(head: nn.Module, c: TVEConfig = c, built: dict = built) -> TVE:
            if "tve" not in built:  # one explainer serves every head: build it once
                built["tve"] = TVE(backbone, build_explainer(backbone, c).eval(), radius)
            return built["tve"]

        specs.append(MethodSpec("tve", make, tve_arch=arch))
    return specs


def method_specs(backbone: Backbone, profile: Profile, budgets: Sequence[int], tve_archs: Sequence[str],
                 seed: int = 0, methods: Sequence[str] | None = None) -> list[MethodSpec]:
    """``methods`` (default: every registered explainer, ``EXPLAINERS``) on ``backbone``, sized by
    ``profile`` (its eval and TVE settings), untrained where it is trained (TVE, FastSHAP):
    throughput needs no trained weights. Sampling methods get one spec per budget. An explainer
    that does not apply (rollout on Swin) is kept: building it raises, and the run lists it as skipped.
    """
    from .explainers import EXPLAINERS, SAMPLING, make_explainer, supports
    from .explainers.amortized import Amortized, build_net

    ev = profile.eval
    specs: list[MethodSpec] = []
    # the methods the targets are about first: rows after the time budget are only estimated
    names = list(methods or EXPLAINERS)
    names.sort(key=lambda n: PRIORITY.index(n) if n in PRIORITY else len(PRIORITY))
    for name in names:
        if name == "tve":
            specs += tve_specs(backbone, profile.tve, tve_archs)
        elif not supports(name, backbone):  # raises on an unknown name
            specs.append(MethodSpec(name, _unsupported(name, backbone)))
        elif name in SAMPLING:
            specs += [MethodSpec(name, lambda h, n=name, b=b: make_explainer(
                n, backbone, budget=b, seed=seed, batch_size=ev.batch_size), budget=b, dry_run=True, overhead=True)
                for b in budgets]
        elif name == "fastshap":  # task-specific: one net per head, its output sized by the head's classes
            specs.append(MethodSpec(name, lambda h: Amortized(backbone, build_net(
                backbone, last_linear(h).out_features, ev.fastshap_depth), h), per_task=True))
        elif name == "ig":
            specs.append(MethodSpec(name, lambda h: make_explainer(
                "ig", backbone, n_steps=ev.ig_steps, internal_batch_size=ev.batch_size), dry_run=True))
        elif name == "occlusion":
            specs.append(MethodSpec(name, lambda h: make_explainer(
                "occlusion", backbone, radius=profile.tve.radius or default_radius(backbone.grid)),
                dry_run=True, overhead=True))
        else:
            specs.append(MethodSpec(name, lambda h, n=name: make_explainer(n, backbone, seed=seed)
                                    if n == "random" else make_explainer(n, backbone)))
    return specs


def _unsupported(name: str, backbone: Backbone) -> Callable[[nn.Module], Explainer]:
    def make(head: nn.Module) -> Explainer:
        raise ValueError(f"{name} does not apply to {backbone.name} ({type(backbone.model).__name__})")
    return make


# ----------------------------------------------------------------------------- running
@dataclass
class BenchResult:
    """Rows of one benchmark section: throughput, model-call overhead and skipped methods."""

    throughput: pd.DataFrame
    overhead: pd.DataFrame
    skipped: pd.DataFrame


def _run_once(call: Callable[[], object], device: str | torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - t0


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _measure(call: Callable[[], object], n_images: int, backbone: Backbone, plan: BenchPlan,
             device: str | torch.device, pred_ms: float | None, pred_basis: str, deadline: float | None = None,
             record: bool = True) -> tuple[dict, CallLog | None, Timing | None]:
    """Measure ``call`` unless predicted (or, after its first warm-up run, seen) to exceed the cap,
    or past the ``deadline`` (``time.monotonic``): then one run at most, and the row is estimated.

    Returns the row's timing fields, the model calls of the first run and the Timing (None when
    estimated).
    """
    n_runs = max(plan.warmup, 1) + plan.repeats
    late = _late(deadline)
    why = " (time budget spent)" if late else ""
    if pred_ms is not None and (late or pred_ms * n_images / 1000 * n_runs > plan.max_measure_s):
        return _estimated(pred_ms, pred_basis + why), None, None
    # the first warm-up run probes the cost and records the model calls. A first run pays one-off
    # costs (allocations, lazy initialisation), so before estimating from it a second run is timed
    # whenever one more run fits in the cap, and the estimate is the faster of the two
    if record:
        with record_model_calls(backbone) as log:
            probe = _run_once(call, device)
    else:
        log, probe = None, _run_once(call, device)
    warm = 1
    if (late or probe * n_runs > plan.max_measure_s) and probe <= plan.max_measure_s:
        probe, warm = min(probe, _run_once(call, device)), 2
    if late or probe * n_runs > plan.max_measure_s:
        what = "the faster of two runs" if warm == 2 else "one run (the warm-up)"
        fields = _estimated(1000 * probe / n_images, what + why)
        if log is not None and log.n_calls:
            fields["model_images_per_image"] = log.n_images / n_images
        return fields, log, None
    t = time_call(call, n_images, device, plan.repeats, max(plan.warmup - warm, 0))
    fields = dict(images_per_s=t.images_per_s, ms_per_image=t.ms_per_image,
                  ms_per_image_iqr=t.ms_per_image_iqr, repeats=t.repeats, warmup=max(plan.warmup, warm),
                  estimated=False, basis="measured")
    if log is not None and log.n_calls:
        fields["model_images_per_image"] = log.n_images / n_images
    return fields, log, t


def _estimated(ms: float, basis: str) -> dict:
    return dict(images_per_s=1000.0 / ms, ms_per_image=ms, ms_per_image_iqr=float("nan"), repeats=0,
                warmup=0, estimated=True, basis=f"estimated: {basis}")


def inference_timings(backbone: Backbone, head: nn.Module, images: torch.Tensor, plan: BenchPlan,
                      device: str | torch.device) -> dict[int, Timing]:
    """The reference: ``h(g(x))`` under inference mode at every batch size of ``plan``."""
    out = {}
    for b in plan.batch_sizes:
        x = images[:b]

        def call(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                head(backbone.embed(x))

        out[b] = time_call(call, b, device, plan.repeats, max(plan.warmup, 1))
    return out


def run_backbone(backbone: Backbone, heads: Sequence[nn.Module], images: torch.Tensor,
                 specs: Sequence[MethodSpec], plan: BenchPlan, device: str | torch.device,
                 progress: Callable[[str], None] | None = print, time_budget_s: float = 0.0) -> BenchResult:
    """Benchmark inference and every method of ``specs`` on ``backbone``, then the task scaling.

    ``images`` are normalised, at least ``plan.max_batch`` of them; ``heads`` are the downstream
    heads (the first is the one explained in the batch-size sweep). Every explanation includes the
    forward passes it needs (the prediction that picks the class). A method whose construction
    fails (e.g. attention rollout on Swin) is listed in ``skipped`` with the reason. Once
    ``time_budget_s`` (> 0) has passed, every remaining row is estimated from at most one run.
    """
    if len(images) < plan.max_batch:
        raise ValueError(f"need at least {plan.max_batch} images for batch sizes {plan.batch_sizes}, "
                         f"got {len(images)}")
    if not heads:
        raise ValueError("need at least one head")
    say = progress or (lambda _msg: None)
    deadline = time.monotonic() + time_budget_s if time_budget_s > 0 else None
    info = device_info(device)
    base = dict(device=str(torch.device(device)), threads=torch.get_num_threads(), backbone=backbone.name,
                size=plan.size, dtype=str(images.dtype).removeprefix("torch."),
                device_name=info.get("gpu", info.get("cpu", "")))
    rows, over, skipped = [], [], []
    head = heads[0]

    inf = inference_timings(backbone, head, images, plan, device)
    inf_ms = {b: t.ms_per_image for b, t in inf.items()}
    for b, t in inf.items():
        rows.append(base | dict(method="inference", budget=0, tve_arch=NO_ARCH, batch_size=b, n_tasks=1,
                                model_images_per_image=1.0, basis="measured", estimated=False)
                    | {k: v for k, v in t.summary().items() if k not in ("device", "threads", "dtype")})
    say(f"{backbone.name} ({plan.size}): inference {inf[plan.max_batch].images_per_s:.1f} images/s "
        f"at batch {plan.max_batch}")

    built: dict[str, Explainer] = {}
    sweep_ms: dict[tuple[str, int], float] = {}
    for spec in specs:
        try:
            built[spec.label] = spec.make(head)
        except (ValueError, NotImplementedError, KeyError, TypeError) as e:
            skipped.append(dict(backbone=backbone.name, size=plan.size, method=spec.label, reason=str(e)))
            say(f"  skip {spec.label}: {e}")
            continue
        r, o = _sweep(spec, built[spec.label], backbone, head, images, plan, device, inf_ms, say, deadline)
        rows += [base | row for row in r]
        over += [base | row for row in o]
        sweep_ms.update({(spec.label, row["batch_size"]): row["ms_per_image"] for row in r})

    rows += _task_scaling(backbone, heads, images, specs, built, sweep_ms, plan, device, base, say, deadline)
    tp = add_ratios(throughput_frame(pd.DataFrame(rows)))
    oh = pd.DataFrame(over, columns=OVERHEAD_COLUMNS + ["dtype", "device_name"])
    return BenchResult(tp, oh, pd.DataFrame(skipped, columns=["backbone", "size", "method", "reason"]))


def section_inputs(suite: Suite, plan: BenchPlan, name: str) -> tuple[Backbone, list[nn.Module], torch.Tensor]:
    """Backbone, heads and images of one section. Profile size: the suite's backbone, its linear heads
    of the profile's tasks and test images of the first task; paper size: random weights, random heads
    with the paper tasks' class counts and random images."""
    cfg = suite.profile.bench
    n = plan.max_batch
    if plan.size == "profile":
        bb = suite.backbone(name)
        heads = [suite.head(name, t, "linear") for t in suite.profile.tasks[:plan.n_tasks]]
        ds = suite.task(suite.profile.tasks[0]).test
        raw, _, _ = ds.get(torch.arange(min(n, len(ds))))
        return bb, heads, tile_images(bb.normalize(raw.to(suite.device)), n)
    bb = paper_backbone(name, suite.device)
    heads = random_heads(bb.embed_dim, cfg.paper_head_classes[:plan.n_tasks], suite.device, suite.seed)
    return bb, heads, random_images(bb, n, suite.seed).to(suite.device)


def run_plan(suite: Suite, plan: BenchPlan, methods: Sequence[str] | None = None,
             backbones: Sequence[str] | None = None, progress: Callable[[str], None] | None = print) -> BenchResult:
    """`run_backbone` on every backbone of the section (paper size: one random-weight model at a time);
    each backbone gets an equal share of the section's time budget. ``methods`` / ``backbones``
    restrict the run (default: all registered explainers, all backbones of the section)."""
    cfg = suite.profile.bench
    names = suite.backbone_names if plan.size == "profile" else list(cfg.paper_backbones)
    if backbones:
        names = [b for b in names if b in backbones]
    if not names:
        raise ValueError(f"no backbone of the {plan.size}-size section matches {list(backbones or [])}: "
                         f"expected some of {suite.backbone_names if plan.size == 'profile' else cfg.paper_backbones}")
    parts = []
    for name in names:
        bb, heads, images = section_inputs(suite, plan, name)
        specs = method_specs(bb, plan.profile or suite.profile, cfg.budgets, cfg.tve_archs, suite.seed, methods)
        parts.append(run_backbone(bb, heads, images, specs, plan, suite.device, progress,
                                  plan.time_budget_s / len(names)))
        del bb, heads, images, specs  # paper size: free one ViT-B-sized model before the next
    return BenchResult(*(pd.concat([getattr(r, f) for r in parts], ignore_index=True)
                         for f in ("throughput", "overhead", "skipped")))


def _sweep(spec: MethodSpec, expl: Explainer, backbone: Backbone, head: nn.Module, images: torch.Tensor,
           plan: BenchPlan, device: str | torch.device, inf_ms: dict[int, float],
           say: Callable[[str], None], deadline: float | None) -> tuple[list[dict], list[dict]]:
    """One method over the batch sizes: throughput rows and, for ``spec.overhead``, overhead rows.

    The cost of each batch size is predicted from the previous one's per-image time (or, for the
    first, from a stand-in run when ``spec.dry_run``) and estimated when it would exceed the cap.
    """
    common = dict(method=spec.method, budget=spec.budget, tve_arch=spec.tve_arch, n_tasks=1)
    rows, over = [], []
    dry: DryRun | None = None
    prev: tuple[int, float, str] | None = None
    for b in plan.batch_sizes:
        x = images[:b]
        pred_ms, pred_basis = None, ""
        if prev is not None:
            pb, pred_ms, pbasis = prev
            pred_basis = (f"per-image time measured at batch {pb}" if pbasis == "measured"
                          else pbasis.removeprefix("estimated: ").replace(" (time budget spent)", ""))
        elif spec.dry_run:
            dry = dry_run(lambda: expl.explain(images[:1], head), backbone, 1, device)
            own, model = dry.estimate_ms(inf_ms)
            pred_ms = own + model
            pred_basis = (f"stand-in run ({own:.1f} ms own time) + {dry.log.n_images} model calls "
                          "x measured inference time")
        fields, log, t = _measure(lambda x=x: expl.explain(x, head), b, backbone, plan, device,
                                  pred_ms, pred_basis, deadline)
        if fields["estimated"] and log is None and dry is not None:
            fields["model_images_per_image"] = dry.log.n_images / dry.n_images
        rows.append(common | dict(batch_size=b) | fields)
        prev = (b, fields["ms_per_image"], fields["basis"])
        say(f"  {spec.label:<18} batch {b:>3}: {fields['images_per_s']:10.2f} images/s ({fields['basis']})")
        if spec.overhead:
            o = _overhead_row(backbone, head, log, t, fields, dry if b == plan.batch_sizes[0] else None, inf_ms,
                              b, plan, device, deadline)
            if o is not None:
                over.append(dict(method=spec.method, budget=spec.budget, batch_size=b) | o)
    return rows, over


def _overhead_row(backbone: Backbone, head: nn.Module, log: CallLog | None, t: Timing | None, fields: dict,
                  dry: DryRun | None, inf_ms: dict[int, float], b: int, plan: BenchPlan,
                  device: str | torch.device, deadline: float | None) -> dict | None:
    """Explainer time against its model calls alone: measured when the explainer was, else estimated."""
    if t is not None and log is not None and log.n_calls:
        if _late(deadline) or t.median_s * (plan.repeats + 1) > plan.max_measure_s:  # replay costs as much
            return None
        m = time_model_calls(backbone, head, log, b, device, plan.repeats, 1)
        return dict(explainer_ms_per_image=t.ms_per_image, model_calls_ms_per_image=m.ms_per_image,
                    overhead=t.median_s / m.median_s - 1, model_images_per_image=log.n_images / b,
                    model_batches=log.n_calls, estimated=False)
    # the stand-in run estimates the overhead once, at the batch size whose row it predicted
    if dry is not None and dry.log.n_calls and fields["basis"].startswith("estimated: stand-in"):
        own, model = dry.estimate_ms(inf_ms)
        return dict(explainer_ms_per_image=fields["ms_per_image"], model_calls_ms_per_image=model,
                    overhead=own / model, model_images_per_image=dry.log.n_images / dry.n_images,
                    model_batches=dry.log.n_calls, estimated=True)
    return None


def _task_scaling(backbone: Backbone, heads: Sequence[nn.Module], images: torch.Tensor,
                  specs: Sequence[MethodSpec], built: dict[str, Explainer], sweep_ms: dict[tuple[str, int], float],
                  plan: BenchPlan, device: str | torch.device, base: dict,
                  say: Callable[[str], None], deadline: float | None) -> list[dict]:
    """Explain the same images for 2..n_tasks heads through `explain_heads`: explainers with
    ``explain_tasks`` (TVE, and the perturbation methods, whose backbone calls do not depend on the
    head) run once for all heads, the others head by head; task-specific ones are built per head."""
    from .explainers import explain_heads

    n_max = min(plan.n_tasks, len(heads))
    b = plan.task_batch_size
    x = images[:b]
    rows = []
    for spec in specs:
        if spec.label not in built or (plan.task_methods is not None and spec.method not in plan.task_methods):
            continue
        one = sweep_ms[(spec.label, b)]
        exps = [built[spec.label]] + ([spec.make(h) for h in heads[1:n_max]] if spec.per_task else [])
        for n in range(2, n_max + 1):
            hs = list(heads[:n])
            if spec.per_task:
                def call(hs: list = hs, es: list = exps[:n]) -> object:
                    return [e.explain(x, h) for e, h in zip(es, hs)]
            else:
                def call(hs: list = hs, e: Explainer = exps[0]) -> object:
                    return explain_heads(e, x, hs)
            shared = not spec.per_task and hasattr(exps[0], "explain_tasks")
            fields, _, _ = _measure(call, b, backbone, plan, device, (1 if shared else n) * one,
                                    f"{'the' if shared else f'{n} x the'} one-task time at batch {b}", deadline,
                                    record=False)
            rows.append(base | dict(method=spec.method, budget=spec.budget, tve_arch=spec.tve_arch,
                                    batch_size=b, n_tasks=n, shared_tasks=shared) | fields)
            say(f"  {spec.label:<18} {n} tasks: {fields['ms_per_image'] / one:5.2f} x one task ({fields['basis']})")
    return rows


# ----------------------------------------------------------------------------- tables
def throughput_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Normalise rows to the throughput.csv contract: every named column, in order, with stable key
    types (``budget`` int, 0 when the method has none, as in the fidelity CSVs; ``tve_arch`` ``-`` for
    methods other than TVE)."""
    df = df.copy()
    missing = [c for c in ("device", "backbone", "size", "method", "batch_size", "images_per_s") if c not in df]
    if missing:
        raise ValueError(f"throughput rows lack columns {missing}")
    defaults = dict(threads=torch.get_num_threads(), budget=0, n_tasks=1, ms_per_image=float("nan"),
                    ratio_to_inference=float("nan"), repeats=0, tve_arch=NO_ARCH, estimated=False,
                    basis="measured", shared_tasks=False, ms_per_image_iqr=float("nan"), warmup=0,
                    model_images_per_image=float("nan"), dtype="float32", device_name="")
    for c, v in defaults.items():
        df[c] = df[c].fillna(v) if c in df else v
    df["budget"] = pd.to_numeric(df["budget"], errors="coerce").fillna(0).astype(int)
    df["tve_arch"] = df["tve_arch"].fillna(NO_ARCH).replace("", NO_ARCH).astype(str)
    df["ms_per_image"] = df["ms_per_image"].fillna(1000.0 / df["images_per_s"])
    df["estimated"] = df["estimated"].astype(bool)
    df["shared_tasks"] = df["shared_tasks"].astype(bool)
    for c in ("batch_size", "n_tasks", "repeats", "threads", "warmup"):
        df[c] = df[c].astype(int)
    cols = THROUGHPUT_COLUMNS + EXTRA_COLUMNS
    return df[cols + [c for c in df.columns if c not in cols]].reset_index(drop=True)


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """``ratio_to_inference``: images/s over the backbone's inference images/s at the same batch size
    (same device, backbone and size)."""
    keys = ["device", "backbone", "size", "batch_size"]
    inf = df[df.method == "inference"].groupby(keys)["images_per_s"].first().rename("_inf")
    out = df.drop(columns=["_inf"], errors="ignore").join(inf, on=keys)
    out["ratio_to_inference"] = out["images_per_s"] / out["_inf"]
    return out.drop(columns="_inf")


def append_throughput(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Upsert rows into throughput.csv (other notebooks add LTX / explainability-vector rows so);
    ratios are recomputed against the inference rows already in the file."""
    merged = upsert_csv(throughput_frame(df), path, THROUGHPUT_KEYS)
    merged = add_ratios(throughput_frame(merged))
    from .io import write_csv

    write_csv(merged, path)
    return merged


def target_checks(df: pd.DataFrame, overhead: pd.DataFrame | None = None,
                  kernelshap_budget: int = 1000) -> pd.DataFrame:
    """The issue's targets per backbone, size and batch size: ``target, backbone, size, batch_size,
    tve_arch, value, threshold, op, met, estimated`` (``estimated`` when an input row was)."""
    one = df[df.n_tasks == 1]
    keys = ["device", "backbone", "size", "batch_size"]
    tve = one[one.method == "tve"]
    ks = one[(one.method == "kernelshap") & (one.budget == kernelshap_budget)]
    out = []

    def add(target: str, r: pd.Series, value: float, est: bool, op: str, thr: float) -> None:
        met = value >= thr if op == ">=" else value <= thr
        out.append(dict(target=target, backbone=r.backbone, size=r["size"], batch_size=int(r.batch_size),
                        tve_arch=r.get("tve_arch", NO_ARCH), value=value, threshold=thr, op=op,
                        met=bool(met), estimated=bool(est)))

    m = tve.merge(ks[keys + ["images_per_s", "estimated"]], on=keys, suffixes=("", "_ks"))
    for _, r in m.iterrows():
        add(f"tve_over_kernelshap{kernelshap_budget}", r, r.images_per_s / r.images_per_s_ks,
            r.estimated or r.estimated_ks, ">=", TARGETS["tve_over_kernelshap"])
    for _, r in tve.iterrows():
        add("tve_ratio_to_inference", r, r.ratio_to_inference, r.estimated, ">=", TARGETS["tve_ratio_to_inference"])
        if r.tve_arch == "shared":
            add("tve_shared_ratio_to_inference (aim)", r, r.ratio_to_inference, r.estimated, ">=",
                TARGETS["tve_shared_ratio_to_inference"])
    tasks = df[df.method == "tve"]
    n_max = tasks.n_tasks.max() if len(tasks) else 1
    if n_max > 1:
        tk = keys + ["tve_arch"]
        many = tasks[tasks.n_tasks == n_max].merge(tasks[tasks.n_tasks == 1][tk + ["ms_per_image", "estimated"]],
                                                   on=tk, suffixes=("", "_one"))
        for _, r in many.iterrows():
            add(f"tve_{n_max}_tasks_over_1", r, r.ms_per_image / r.ms_per_image_one, r.estimated or r.estimated_one,
                "<=", TARGETS["tve_tasks_cost"])
    if overhead is not None and len(overhead):
        ko = overhead[(overhead.method == "kernelshap") & (overhead.budget == kernelshap_budget)]
        for _, r in ko.iterrows():
            add(f"kernelshap{kernelshap_budget}_overhead", r, r.overhead, r.estimated, "<=",
                TARGETS["kernelshap_overhead"])
    cols = ["target", "backbone", "size", "batch_size", "tve_arch", "value", "threshold", "op", "met", "estimated"]
    return pd.DataFrame(out, columns=cols)


# ----------------------------------------------------------------------------- figures
def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    d = df.copy()
    d["label"] = [method_label(m, b, a) for m, b, a in zip(d.method, d.budget, d.tve_arch)]
    return d


def throughput_bars(df: pd.DataFrame) -> plt.Figure:
    """Figure 5 analogue: images/s per method and backbone (log scale) at each size's largest batch
    size; ``(est.)`` marks estimated rows."""
    d = _labelled(df[df.n_tasks == 1])
    d = d[d.batch_size == d.groupby("size").batch_size.transform("max")]
    d["label"] = d.label + np.where(d.estimated, " (est.)", "")
    sizes = list(dict.fromkeys(d["size"]))
    order = d.groupby("label").images_per_s.median().sort_values(ascending=False).index.tolist()
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 0.35 * len(order) + 1.8), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        ds = d[d["size"] == size]
        sns.barplot(data=ds, y="label", x="images_per_s", hue="backbone", order=order, ax=ax, orient="h")
        ax.set_xscale("log")
        bs = int(ds.batch_size.iloc[0])
        ax.set_title(f"{size} size, batch {bs}")
        ax.set_xlabel("explanations per second (log)")
        ax.set_ylabel("")
    fig.tight_layout()
    return fig


def _panels(d: pd.DataFrame) -> pd.DataFrame:
    """One panel per (size, backbone) that has rows, so a partial section leaves no empty panel."""
    d = d.copy()
    d["panel"] = d["size"] + " size · " + d["backbone"]
    return d


def batch_scaling(df: pd.DataFrame) -> plt.Figure:
    """Images/s against batch size per method (× and dashes: estimated), one panel per size and backbone."""
    d = _panels(_labelled(df[df.n_tasks == 1]))
    g = sns.relplot(data=d, x="batch_size", y="images_per_s", hue="label", style="estimated",
                    markers={False: "o", True: "X"}, dashes={False: "", True: (2, 2)}, col="panel", col_wrap=3,
                    kind="line", height=3, aspect=1.1, palette="tab20", facet_kws={"sharey": False, "sharex": False})
    g.set(xscale="log", yscale="log")
    for name, ax in g.axes_dict.items():
        sizes = sorted(d[d.panel == name].batch_size.unique())
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
    g.set_titles("{col_name}")
    return g.figure


def task_scaling(df: pd.DataFrame) -> plt.Figure:
    """Cost of explaining n tasks over one task; dashed: 1.2 (TVE's target), dotted: linear growth."""
    keys = ["device", "backbone", "size", "method", "budget", "tve_arch", "batch_size"]
    d = _labelled(df[df.groupby(keys, dropna=False).n_tasks.transform("max") > 1])
    one = d.ms_per_image.where(d.n_tasks == 1)
    d["relative_cost"] = d.ms_per_image / one.groupby([d[k] for k in keys], dropna=False).transform("max")
    d = _panels(d)
    g = sns.relplot(data=d, x="n_tasks", y="relative_cost", hue="label", style="estimated", col="panel", col_wrap=3,
                    kind="line", markers={False: "o", True: "X"}, dashes={False: "", True: (2, 2)}, height=3,
                    aspect=1.0)
    n_max = int(d.n_tasks.max()) if len(d) else 1
    for ax in g.axes.flat:
        ax.axhline(TARGETS["tve_tasks_cost"], ls="--", c="gray", lw=1)
        ax.plot([1, n_max], [1, n_max], ls=":", c="gray", lw=1)
        ax.set_xticks(range(1, n_max + 1))
    g.set_ylabels("cost / one task")
    g.set_titles("{col_name}")
    return g.figure
