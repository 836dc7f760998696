"""Fidelity evaluation: attribution maps -> tidy rows of ``curves.csv`` and ``summary.csv``.

`evaluate_maps` is the one entry point every notebook uses to score its methods (03 for the
baselines and TVE; LTX and the explainability vector append their own rows with it), so all
methods share the metrics, the removal operator, the ranking rule and the bootstrap of
`tve_lib.metrics`. `run_task` is notebook 03's orchestration for one backbone × task; its
verdicts (`tve_verdict`, `amortisation_ceiling`) read the tables and live in `tve_lib.report.fidelity`.

CSV contracts (one row per measurement):
``curves.csv``:  backbone, task, head, method, budget, metric, sparsity, value, n_images, seed
``summary.csv``: backbone, task, head, method, budget, metric, value, ci_low, ci_high, n_images, seed
``metric`` in curves: fid_plus, fid_minus (x = sparsity), pos, neg (x = fraction removed; top-1
agreement with ŷ), deletion, insertion (x = fraction removed / inserted; probability of ŷ).
``metric`` in summary: fid_plus_auc, fid_minus_auc, pos_auc, neg_auc (percent), insertion_auc,
deletion_auc, shapley_spearman, shapley_topk, pointing_game, mass_in_region. ``budget`` is the
number of model calls per image of a sampling method, 0 otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from .. import metrics as M
from ..backbones import Backbone
from ..cache import cached, digest, file_safe
from ..config import EvalConfig
from ..explainers import EXPLAINERS, explain_heads, explainer_class, supports
from ..heads import HEAD_KINDS, check_targets, head_logits
from ..imagesets import ImageSet
from ..schema import CURVE_COLUMNS, PER_IMAGE_METRICS, SUMMARY_COLUMNS, method_label
from ..shapley import ShapleyReference, group_sum, player_groups, shapley_references
from .fastshap import obtain_amortized

if TYPE_CHECKING:
    from .suite import Suite


def _order(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    first = [c for c in columns if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


@torch.no_grad()
def evaluate_maps(backbone: Backbone, head: nn.Module, images: torch.Tensor,
                  maps: Mapping[str, torch.Tensor], target: torch.Tensor | None = None,
                  masks: torch.Tensor | None = None, cfg: EvalConfig | None = None, *,
                  budget: int | Mapping[str, int] = 0, shapley: ShapleyReference | None = None,
                  meta: Mapping[str, Any] | None = None, seed: int = 0,
                  per_image: list[pd.DataFrame] | None = None, base: M.CurveBase | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score attribution maps of the model ``f = head ∘ backbone`` on ``images``.

    Args:
        backbone, head: the explained model (``head`` maps ``backbone.embed`` to logits).
        images: normalised ``[B, 3, S, S]`` (``backbone.normalize(raw)``).
        maps: ``{method name: [B, G, G] map}`` (signed, unnormalised; any device).
        target: ``[B]`` classes to score; default the class predicted on the full image (use the
            same ``target`` the maps explain).
        masks: ``[B, S, S]`` bool regions known to be relevant (task 3) -> pointing_game and
            mass_in_region rows; None skips localisation.
        cfg: sparsities, perturbation_steps, deletion_steps, masked_batch_size, bootstrap (EvalConfig;
            default ``EvalConfig()``).
        budget: model calls per image of the methods (an int for all, or ``{method: int}``).
        shapley: exact Shapley values of this head on ``images[:len(shapley.values)]`` ->
            shapley_spearman and shapley_topk rows.
        meta: columns added to every row, e.g. ``{"backbone": "vit", "task": "digits", "head":
            "linear"}``.
        seed: recorded in the ``seed`` column and seeds the bootstrap.
        per_image: optional list; when given, a frame of per-image values of ``PER_IMAGE_METRICS``
            (columns: meta, method, budget, metric, image = position in ``images``, value, seed) is
            appended to it, for paired comparisons on image subsets.
        base: `tve_lib.metrics.curve_base` of ``images`` (computed here when None), shared by every map:
            a caller scoring more maps of the same images passes it once.

    Returns:
        ``(curves, summary)`` DataFrames with the module's CSV columns (mean curve per x; per
        summary metric the mean over images with a 95 % percentile-bootstrap interval). Rows
        of several calls concatenate; write them with `tve_lib.io.upsert_csv` and
        ``CURVE_KEYS`` / ``SUMMARY_KEYS``.
    """
    cfg = cfg or EvalConfig()
    meta = dict(meta or {})
    _check_maps(maps, len(images), backbone.grid)  # every method's, before any pass
    if target is None:
        target = head_logits(head, backbone.embed_batched(images, cfg.masked_batch_size)).argmax(-1)
    else:
        target = check_targets(target, len(images), head).to(images.device)
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} region masks")
    curve_rows, summary_rows = [], []
    base = base or M.curve_base(backbone, images, cfg.masked_batch_size)
    for i, (method, amap) in enumerate(maps.items()):
        bud = budget.get(method, 0) if isinstance(budget, Mapping) else budget
        ids = dict(meta, method=method, budget=int(bud))
        c, sm = _score_method(backbone, head, images, amap, target, masks, cfg, shapley, ids, seed, i, per_image,
                              base)
        curve_rows += c
        summary_rows += sm
    return _order(pd.DataFrame(curve_rows), CURVE_COLUMNS), _order(pd.DataFrame(summary_rows), SUMMARY_COLUMNS)


def _check_maps(maps: Mapping[str, torch.Tensor], n: int, g: int) -> None:
    """``maps`` as `evaluate_maps` takes them, ``{method: [n, g, g]}`` (or ``[n, g·g]``), all finite."""
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be {{method name: [B, G, G] map}}, got {type(maps).__name__}")
    for method, amap in maps.items():
        if len(amap) != n:
            raise ValueError(f"method {method!r}: {len(amap)} maps for {n} images")
        if tuple(amap.shape[1:]) not in ((g, g), (g * g,)):
            raise ValueError(f"method {method!r}: maps must be [B, {g}, {g}] (or [B, {g * g}]), "
                             f"got {tuple(amap.shape)}")
        if not torch.isfinite(amap).all():
            raise ValueError(f"method {method!r}: maps contain NaN or inf")


def _score_method(backbone: Backbone, head: nn.Module, images: torch.Tensor, amap: torch.Tensor,
                  target: torch.Tensor, masks: torch.Tensor | None, cfg: EvalConfig,
                  shapley: ShapleyReference | None, ids: dict[str, Any], seed: int, i: int,
                  per_image: list[pd.DataFrame] | None, base: M.CurveBase
                  ) -> tuple[list[dict], list[dict]]:
    """Curve and summary rows of one method's maps (the ``i``-th method seeds its bootstrap)."""
    curve_rows, summary_rows = [], []
    curves = M.perturbation_curves(backbone, head, images, amap, target, cfg.sparsities,
                                   cfg.perturbation_steps, cfg.deletion_steps, cfg.masked_batch_size, base=base)
    for metric, (xs, y) in curves.items():
        mean = y.double().mean(0).tolist()
        curve_rows += [dict(ids, metric=metric, sparsity=x, value=v, n_images=len(y), seed=seed)
                       for x, v in zip(xs, mean)]
    values = M.curve_aucs(curves)
    if shapley is not None:
        n = len(shapley.values)
        grouped = group_sum(amap[:n].to(shapley.values.device), shapley.groups)
        values["shapley_spearman"] = M.spearman(grouped, shapley.values)
        values["shapley_topk"] = M.topk_overlap(grouped, shapley.values, shapley.topk_frac)
    if masks is not None:
        values["pointing_game"] = M.pointing_game(amap, masks.to(amap.device))
        values["mass_in_region"] = M.mass_in_region(amap, masks.to(amap.device))
    for metric, vals in values.items():
        mean, lo, hi, n = M.bootstrap_ci(vals, cfg.bootstrap, seed=seed * 7919 + i)
        summary_rows.append(dict(ids, metric=metric, value=mean, ci_low=lo, ci_high=hi, n_images=n, seed=seed))
        if per_image is not None and metric in PER_IMAGE_METRICS:
            per_image.append(pd.DataFrame(dict(ids, metric=metric, image=range(len(vals)),
                                               value=vals.double().cpu().numpy(), seed=seed)))
    return curve_rows, summary_rows


def concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate result frames (skipping empty ones)."""
    frames = [f for f in frames if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ----------------------------------------------------------------------------- notebook 03
def evaluation_indices(ds: ImageSet, n: int, seed: int) -> torch.Tensor:
    """The first ``n`` of a seeded permutation of ``ds``: every method sees the same images."""
    g = torch.Generator().manual_seed(10_007 + seed)
    return torch.randperm(len(ds), generator=g)[: min(n, len(ds))]


def cached_shapley_references(suite: Suite, backbone: str, task: str, x: torch.Tensor, heads: list[nn.Module],
                              kinds: Sequence[str], targets: list[torch.Tensor]) -> list[ShapleyReference]:
    """`shapley_references` of the first ``n_shapley`` evaluation images, cached in the suite's
    checkpoints (notebooks 03 and 03b share them; ``2^n`` backbone calls per image)."""
    ev = suite.profile.eval
    n = min(ev.n_shapley, len(x))
    groups = player_groups(suite.backbone(backbone).grid, tuple(ev.shapley_groups)).to(x.device)
    key = digest(suite.profile.digest("img_size", "backbones", "backbone_train", "head_train", "mean", "std",
                                      "removal_value"), backbone, task, n, tuple(ev.shapley_groups),
                 tuple(kinds), suite.seed, float(x[:n].double().sum()))

    def build() -> list[ShapleyReference]:
        return shapley_references(suite.backbone(backbone), heads, x[:n], groups, [t[:n] for t in targets],
                                  ev.masked_batch_size, ev.shapley_topk)

    def restore(vals: dict) -> list[ShapleyReference]:
        return [ShapleyReference(vals[k].to(x.device), groups, ev.shapley_topk) for k in kinds]

    return cached(suite.ckpt_dir / f"shapley_{backbone}_{file_safe(task)}_{key}.pt", build, restore,
                  "exact Shapley values", dump=lambda refs: {k: r.values.cpu() for k, r in zip(kinds, refs)})


@dataclass
class TaskResult:
    """Everything notebook 03 shows for one backbone × task."""

    curves: pd.DataFrame
    summary: pd.DataFrame
    timing: pd.DataFrame  # backbone, task, method, budget, seconds, n_images, n_heads
    amortized: pd.DataFrame  # backbone, task, head, epoch, loss, fid_plus_auc
    per_image: pd.DataFrame  # PER_IMAGE_KEYS + value, image_id (index in the task's test split)
    gallery: dict[str, torch.Tensor] = field(default_factory=dict)  # label -> [n_gallery, G, G] (linear head)
    raw: torch.Tensor | None = None  # [n_gallery, C, S, S] raw images of the gallery
    masks: torch.Tensor | None = None


def run_task(suite: Suite, backbone: str, task: str, methods: Sequence[str] | None = None,
             kinds: Sequence[str] = HEAD_KINDS, progress: bool = True) -> TaskResult:
    """Explain and score every method on one backbone × task for each head kind.

    Images: ``n_fidelity`` test images (`evaluation_indices`); sampling methods run each budget
    on the first ``budget_images[i]`` of them; exact Shapley on the first ``n_shapley``
    (``shapley_groups`` players); region metrics when the task has known regions. Methods that
    can share model calls across the heads do (`tve_lib.explainers.explain_heads`).
    """
    ev = suite.profile.eval
    bb = suite.backbone(backbone)
    idx, raw, masks, x, heads, targets = fidelity_inputs(suite, backbone, task, kinds)
    methods = [m for m in (methods or EXPLAINERS) if supports(m, bb)]
    say = print if progress else (lambda *a, **k: None)

    t0 = time.time()
    refs = cached_shapley_references(suite, backbone, task, x, heads, kinds, targets)
    say(f"[{backbone}/{task}] exact Shapley ({len(refs[0].groups)} groups, {len(refs[0].values)} images): "
        f"{time.time() - t0:.1f} s")
    runs, timing, amort = fidelity_maps(suite, backbone, task, methods, kinds, x, heads, targets, say)
    gallery = {method_label(m, bud): maps[0][: ev.n_gallery].detach().cpu() for m, bud, _, maps in runs}

    t0 = time.time()
    curves, summary, per_image, bases = [], [], [], {}
    for m, bud, n, maps in runs:
        if n not in bases:  # the full and fully removed images of x[:n], for every method and head
            bases[n] = M.curve_base(bb, x[:n], ev.masked_batch_size)
        for k, h, tg, a, ref in zip(kinds, heads, targets, maps, refs):
            sh = ShapleyReference(ref.values[:n], ref.groups, ref.topk_frac)
            c, s_ = evaluate_maps(bb, h, x[:n], {m: a}, tg[:n], None if masks is None else masks[:n], ev,
                                  budget=bud, shapley=sh, meta=dict(backbone=backbone, task=task, head=k),
                                  seed=suite.seed, per_image=per_image, base=bases[n])
            curves.append(c)
            summary.append(s_)
    pi = concat(per_image)
    pi["image_id"] = idx.cpu().numpy()[pi.image.to_numpy()]  # numpy indexing: pandas arrays are read-only
    say(f"[{backbone}/{task}] metrics: {time.time() - t0:.1f} s")
    ng = min(ev.n_gallery, len(x))
    return TaskResult(concat(curves), concat(summary), pd.DataFrame(timing), amort, pi, gallery,
                      raw[:ng].cpu(), None if masks is None else masks[:ng].cpu())


def fidelity_inputs(suite: Suite, backbone: str, task: str, kinds: Sequence[str] = HEAD_KINDS
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, list[nn.Module],
                               list[torch.Tensor]]:
    """Notebook 03's images of one backbone × task: ``(test indices, raw, region masks or None,
    normalised x, heads, targets)``; targets are each head's class predicted on the full image."""
    ev = suite.profile.eval
    bb = suite.backbone(backbone)
    t = suite.task(task, backbone)
    idx = evaluation_indices(t.test, ev.n_fidelity, suite.seed)
    raw, _, masks = t.test.get(idx)
    x = bb.normalize(raw.to(suite.device))
    masks = masks.to(suite.device) if masks is not None else None
    heads = [suite.head(backbone, task, k) for k in kinds]
    with torch.no_grad():
        emb = bb.embed_batched(x, ev.masked_batch_size)
        targets = [head_logits(h, emb).argmax(-1) for h in heads]
    return idx, raw, masks, x, heads, targets


def fidelity_maps(suite: Suite, backbone: str, task: str, methods: Sequence[str], kinds: Sequence[str],
                  x: torch.Tensor, heads: list[nn.Module], targets: list[torch.Tensor],
                  say: Callable[..., None] = print
                  ) -> tuple[list[tuple[str, int, int, list[torch.Tensor]]], list[dict], pd.DataFrame]:
    """`_explain_all`, cached in the suite's checkpoints with the seconds measured when the maps were
    made: notebook 03 computes them, the operator study (03c) and a resumed run read them back."""
    prof = {k: v for k, v in suite.profile.to_dict().items() if k != "operators"}  # maps are made before them
    key = digest(prof, backbone, task, tuple(methods), tuple(kinds), suite.seed,
                 float(x.double().sum()), len(x))

    def build():
        return _explain_all(suite, backbone, task, methods, kinds, x, heads, targets, say)

    def dump(res):
        runs, timing, amort = res
        return {"runs": [(m, b, n, [a.detach().cpu() for a in maps]) for m, b, n, maps in runs],
                "timing": timing, "amort": amort.to_dict("records")}

    def restore(p: dict):
        say(f"[{backbone}/{task}] maps of {len(p['runs'])} method runs read from the cache")
        runs = [(m, b, n, [a.to(x.device) for a in maps]) for m, b, n, maps in p["runs"]]
        return runs, p["timing"], pd.DataFrame(p["amort"])

    return cached(suite.ckpt_dir / f"maps_{backbone}_{file_safe(task)}_{key}.pt", build, restore,
                  "attribution maps", dump=dump)


def _explain_all(suite: Suite, backbone: str, task: str, methods: Sequence[str], kinds: Sequence[str],
                 x: torch.Tensor, heads: list[nn.Module], targets: list[torch.Tensor], say: Callable[..., None]
                 ) -> tuple[list[tuple[str, int, int, list[torch.Tensor]]], list[dict], pd.DataFrame]:
    """Maps of every method (each budget of a sampling method) for every head, with their timing.

    Returns ``runs`` (method, budget, n_images, maps per head), timing rows and the amortised
    explainers' training history (FastSHAP: trained per task and head, then explained).
    """
    ev = suite.profile.eval
    timing, amort, runs = [], pd.DataFrame(), []
    for m in methods:
        sampling = explainer_class(m).sampling
        for bud, n in (list(zip(ev.budgets, ev.budget_images)) if sampling else [(0, len(x))]):
            n = min(n, len(x))
            t0 = time.time()
            if explainer_class(m).training == "task":
                n_eval = min(ev.fastshap_eval_images, len(x))
                ex = obtain_amortized(suite, backbone, task, tuple(kinds), x[:n_eval])
                t1 = time.time()
                maps = [ex[k].explain(x, h, tg) for k, h, tg in zip(kinds, heads, targets)]
                secs_train, secs = t1 - t0, time.time() - t1
                amort = pd.DataFrame([dict(backbone=backbone, task=task, head=k, **r)
                                      for k in kinds for r in ex[k].history])
                say(f"[{backbone}/{task}] {m}: trained/loaded in {secs_train:.1f} s")
            else:
                ex = suite.make_explainer(m, backbone, **({"budget": bud} if sampling else {}))
                maps = explain_heads(ex, x[:n], heads, [tg[:n] for tg in targets], ev.batch_size)
                secs = time.time() - t0
            timing.append(dict(backbone=backbone, task=task, method=m, budget=bud, seconds=secs, n_images=n,
                               n_heads=len(heads)))
            say(f"[{backbone}/{task}] {method_label(m, bud)}: {n} images x {len(heads)} heads in {secs:.1f} s")
            runs.append((m, bud, n, maps))
    return runs, timing, amort
