"""Running notebook 04's benchmark: every method of a plan on every backbone of its section.

* `run_backbone` benchmarks the backbone's inference and every method on one backbone at every
  batch size, then the task scaling. A row whose measurement is predicted to exceed its time cap
  is *estimated* and says so (``estimated``, ``basis``); it is never silently dropped.
* `run_plan` runs `run_backbone` on each backbone of a section (`section_inputs` gives its
  backbone, heads and images); the result's tables follow `tve_lib.schema.throughput_frame`'s contract.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from ..backbones import Backbone
from ..explainers import explain_heads
from ..explainers.base import Explainer
from ..io import device_info
from ..precision import dtype_name
from ..schema import NO_ARCH, OVERHEAD_COLUMNS, throughput_frame
from ..timing import CallLog, DryRun, Timing, dry_run, record_model_calls, synchronize, time_call, time_model_calls
from .throughput import (
    BenchPlan,
    MethodSpec,
    add_ratios,
    method_specs,
    paper_backbone,
    random_heads,
    random_images,
    tile_images,
)

if TYPE_CHECKING:
    from .suite import Suite


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
                size=plan.size, dtype=dtype_name(backbone.compute_dtype),  # bfloat16 under autocast
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
    tp = add_ratios(throughput_frame(pd.DataFrame(rows), torch.get_num_threads()))
    oh = pd.DataFrame(over, columns=OVERHEAD_COLUMNS + ["basis", "dtype", "device_name"])
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
        ds = suite.task(suite.profile.tasks[0], name).test
        raw, _, _ = ds.get(torch.arange(min(n, len(ds))))
        return bb, heads, tile_images(bb.normalize(raw.to(suite.device)), n)
    bb = paper_backbone(name, suite.device, suite.profile.precision, suite.profile.compile)
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
        elif "model_images_per_image" not in fields and rows:  # not run at this size: the count per image
            # does not depend on the batch size, and the estimate itself comes from the smaller batch's row
            fields["model_images_per_image"] = rows[-1].get("model_images_per_image", float("nan"))
        rows.append(common | dict(batch_size=b) | fields)
        prev = (b, fields["ms_per_image"], fields["basis"])
        say(f"  {spec.label:<18} batch {b:>3}: {fields['images_per_s']:10.2f} images/s ({fields['basis']})")
        if spec.overhead:  # one row per batch size whatever the time budget: the row set is the plan's
            o = _overhead_row(backbone, head, log, t, dry, inf_ms, b, plan, device, deadline)
            over.append(dict(method=spec.method, budget=spec.budget, batch_size=b) | o)
    return rows, over


def _overhead_row(backbone: Backbone, head: nn.Module, log: CallLog | None, t: Timing | None,
                  dry: DryRun | None, inf_ms: dict[int, float], b: int, plan: BenchPlan,
                  device: str | torch.device, deadline: float | None) -> dict:
    """Explainer time against its model calls alone: measured when the explainer was and the replay fits
    the budget, else estimated from the stand-in run (per image, so at any batch size), else NaN."""
    replay_fits = t is not None and not _late(deadline) and t.median_s * (plan.repeats + 1) <= plan.max_measure_s
    if t is not None and log is not None and log.n_calls and replay_fits:
        m = time_model_calls(backbone, head, log, b, device, plan.repeats, 1)
        return dict(explainer_ms_per_image=t.ms_per_image, model_calls_ms_per_image=m.ms_per_image,
                    overhead=t.median_s / m.median_s - 1, model_images_per_image=log.n_images / b,
                    model_batches=log.n_calls, estimated=False, basis="measured")
    if t is not None and log is not None and log.n_calls:  # the explainer's own calls, priced by inference
        model = log.cost_ms(inf_ms) / b
        return dict(explainer_ms_per_image=t.ms_per_image, model_calls_ms_per_image=model,
                    overhead=t.ms_per_image / model - 1, model_images_per_image=log.n_images / b,
                    model_batches=log.n_calls, estimated=True,
                    basis="estimated: measured explainer, its model calls x measured inference time")
    if dry is not None and dry.log.n_calls:
        own, model = dry.estimate_ms(inf_ms)
        # the stand-in ran dry.n_images images: its batch count holds at that batch size only
        return dict(explainer_ms_per_image=own + model, model_calls_ms_per_image=model,
                    overhead=own / model, model_images_per_image=dry.log.n_images / dry.n_images,
                    model_batches=dry.log.n_calls if b == dry.n_images else float("nan"), estimated=True,
                    basis=f"estimated: stand-in run of {dry.n_images} image(s) + measured inference time")
    nan = float("nan")
    return dict(explainer_ms_per_image=nan, model_calls_ms_per_image=nan, overhead=nan,
                model_images_per_image=nan, model_batches=nan, estimated=True, basis="not measured: no stand-in run")


def _task_scaling(backbone: Backbone, heads: Sequence[nn.Module], images: torch.Tensor,
                  specs: Sequence[MethodSpec], built: dict[str, Explainer], sweep_ms: dict[tuple[str, int], float],
                  plan: BenchPlan, device: str | torch.device, base: dict,
                  say: Callable[[str], None], deadline: float | None) -> list[dict]:
    """Explain the same images for 2..n_tasks heads through `explain_heads`: explainers whose class
    ``shares_tasks`` (TVE, and the perturbation methods, whose backbone calls do not depend on the
    head) run once for all heads, the others head by head; task-specific ones are built per head."""
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
            shared = not spec.per_task and type(exps[0]).shares_tasks
            fields, _, _ = _measure(call, b, backbone, plan, device, (1 if shared else n) * one,
                                    f"{'the' if shared else f'{n} x the'} one-task time at batch {b}", deadline,
                                    record=False)
            rows.append(base | dict(method=spec.method, budget=spec.budget, tve_arch=spec.tve_arch,
                                    batch_size=b, n_tasks=n, shared_tasks=shared) | fields)
            say(f"  {spec.label:<18} {n} tasks: {fields['ms_per_image'] / one:5.2f} x one task ({fields['basis']})")
    return rows
