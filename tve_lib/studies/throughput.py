"""What notebook 04 benchmarks and the table it writes: plans, method specs, ``throughput.csv``.

* `plans` sizes the two sections of the benchmark (the profile's models; paper-size models with
  random weights), `method_specs` lists what is timed on one backbone: every registered explainer,
  built untrained from its class attributes (`Explainer.sampling`: one spec per budget;
  `.training`: "pretrain" is TVE, one spec per trunk variant, "task" an untrained per-task net).
* `add_ratios` and `append_throughput` (over `tve_lib.schema.throughput_frame`) make the tidy ``throughput.csv``
  (notebooks 05 and 06 append their rows with `append_throughput`).

Running a plan is `tve_lib.studies.throughput_runs`; the timing tools are `tve_lib.timing`; the
target checks and figures, which read only the table, are `tve_lib.report.throughput`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..backbones import Backbone, create_model, wrap
from ..config import BenchConfig, Profile, TVEConfig, get_profile
from ..explainers import EXPLAINERS, explainer_class, make_explainer
from ..explainers.amortized import build_net
from ..explainers.base import Explainer
from ..explainers.tve import TVE, build_explainer
from ..heads import last_linear, make_head
from ..io import upsert_csv, write_csv
from ..masking import window_radius
from ..schema import NO_ARCH, THROUGHPUT_KEYS, method_label, throughput_frame
from ..seeds import seeded

PRIORITY = ("tve", "kernelshap")  # benchmarked first (the targets' methods), the rest in registry order


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
def paper_backbone(name: str, device: str | torch.device, precision: str | None = None,
                   compile: str | None = None) -> Backbone:
    """The paper profile's backbone ``name`` (ViT-B/16, DeiT-B, Swin-B at 224 px) with random weights:
    throughput needs no trained weights. ``precision`` / ``compile``: the running profile's (None: the
    paper profile's), so both sections of notebook 04 time the same precision."""
    paper = get_profile("paper")
    paper = dataclasses.replace(paper, precision=paper.precision if precision is None else precision,
                                compile=paper.compile if compile is None else compile)
    spec = dataclasses.replace(paper.backbone(name), pretrained=False)
    return wrap(create_model(spec, 1000), spec, paper).to(device)


def random_heads(embed_dim: int, classes: Sequence[int], device: str | torch.device, seed: int = 0,
                 kind: str = "linear") -> list[nn.Module]:
    """Untrained heads, one per entry of ``classes`` (paper-size task scaling)."""
    with seeded(seed):
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


# ----------------------------------------------------------------------------- method specs
def tve_specs(backbone: Backbone, cfg: TVEConfig, archs: Sequence[str]) -> list[MethodSpec]:
    """One untrained TVE explainer per shape in ``archs``, sized by ``cfg``; ``cfg.arch`` (the profile's
    default) is timed first, and timed even when ``archs`` does not list it."""
    radius = window_radius(cfg.radius, backbone.grid)
    specs = []
    for arch in [cfg.arch] + [a for a in archs if a != cfg.arch]:  # rows past the time budget are estimated
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
    # the methods the targets are about first: rows after the time budget are only estimated
    names = list(methods or EXPLAINERS)
    names.sort(key=lambda n: PRIORITY.index(n) if n in PRIORITY else len(PRIORITY))
    specs: list[MethodSpec] = []
    for name in names:
        specs += _specs_of(name, backbone, profile, budgets, tve_archs, seed)
    return specs


def _specs_of(name: str, backbone: Backbone, profile: Profile, budgets: Sequence[int], tve_archs: Sequence[str],
              seed: int) -> list[MethodSpec]:
    """The specs of one method, from its class's capabilities."""
    cls = explainer_class(name)  # raises on an unknown name
    if cls.training == "pretrain":  # task-agnostic (TVE): one explainer per trunk variant serves every head
        return tve_specs(backbone, profile.tve, tve_archs)
    if not cls.supports(backbone):
        return [MethodSpec(name, _unsupported(name, backbone))]
    ev = profile.eval
    many = _chunks_model_calls(cls)
    # perturbation methods (their backbone calls do not depend on the head): time their calls alone too
    flags = dict(dry_run=many, overhead=many and cls.shares_tasks)
    if cls.sampling:
        return [MethodSpec(name, lambda h, b=b: make_explainer(
            name, backbone, budget=b, seed=seed, batch_size=ev.batch_size), budget=b, **flags) for b in budgets]
    if cls.training == "task":  # one net per head, its output sized by the head's classes
        return [MethodSpec(name, lambda h: make_explainer(name, backbone, net=build_net(
            backbone, last_linear(h).out_features, ev.fastshap_depth), head=h), per_task=True, **flags)]
    kw = _sized_kwargs(cls, backbone, profile, seed)
    return [MethodSpec(name, lambda h: make_explainer(name, backbone, **kw), **flags)]


def _params(cls: type[Explainer]) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(cls).parameters


def _chunks_model_calls(cls: type[Explainer]) -> bool:
    """A batch-size argument means many model calls per image (masked copies, IG steps, windows):
    a stand-in run predicts the cost before the real one runs."""
    return not {"batch_size", "internal_batch_size"}.isdisjoint(_params(cls))


def _sized_kwargs(cls: type[Explainer], backbone: Backbone, profile: Profile, seed: int) -> dict[str, Any]:
    """The constructor arguments the profile sets, by parameter name (IG's steps and batch, the occlusion
    window's radius, the random map's seed); a method without the parameter keeps its own default."""
    ev = profile.eval
    sized = dict(seed=seed, n_steps=ev.ig_steps, internal_batch_size=ev.batch_size,
                 radius=window_radius(profile.tve.radius, backbone.grid))
    params = _params(cls)
    return {k: v for k, v in sized.items() if k in params}


def _unsupported(name: str, backbone: Backbone) -> Callable[[nn.Module], Explainer]:
    def make(head: nn.Module) -> Explainer:
        raise ValueError(f"{name} does not apply to {backbone.name} ({type(backbone.model).__name__})")
    return make


# ----------------------------------------------------------------------------- tables
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
    merged = upsert_csv(throughput_frame(df, torch.get_num_threads()), path, THROUGHPUT_KEYS)
    merged = add_ratios(throughput_frame(merged, torch.get_num_threads()))
    write_csv(merged, path)
    return merged
