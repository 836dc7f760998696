"""TVE ablations (notebook 03b): which design choices make the zero-shot maps faithful.

Factors (METHOD.md §1 choices): window radius r; transfer rule (keep-only λ⁻=0 as in the official
demo, remove-only λ⁺=0, both); pooled vs raw map; whole head vs last layer only; shared vs two
trunks; explainer depth; pre-training set size (25 %, 50 %, 100 %); and the reduced ablation
pre-training budget against the profile's full one.

Every pre-trained variant uses the same reduced budget (``eval.ablation_epochs`` epochs of
``eval.ablation_images`` images; the reference explainer is the profile's TVEConfig at that
budget), so variants differ in one factor only. Set-size variants draw a *fixed* subset of the
upstream set and train proportionally more epochs (same number of optimiser steps), so they
measure how much data is needed, not how much compute. Transfer variants reuse the reference
explainer (no training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from . import metrics as M
from .config import Profile, TVEConfig
from .fidelity import SUMMARY_COLUMNS, cached_shapley_references, concat, evaluate_maps, evaluation_indices
from .heads import HEAD_KINDS
from .io import CorruptCheckpoint
from .masking import default_radius


@dataclass(frozen=True)
class Variant:
    """One TVE variant: its pre-training config, upstream fraction and transfer settings."""

    ablation: str  # the factor it belongs to (one figure panel)
    variant: str  # its label
    cfg: TVEConfig | None  # None: the profile's full pre-training (suite.explainer)
    subset: float = 1.0  # fraction of the ablation pre-training images, as a fixed subset
    transfer: dict = field(default_factory=dict)  # lam_plus, lam_minus, pool, last_layer_only


def reference_config(profile: Profile) -> TVEConfig:
    """The profile's TVEConfig at the reduced ablation pre-training budget."""
    ev = profile.eval
    return dataclasses.replace(profile.tve, epochs=ev.ablation_epochs, n_images=ev.ablation_images)


def ablation_variants(profile: Profile, grid: int) -> list[Variant]:
    """All variants; the reference appears once per factor (marked "(ref)")."""
    ref = reference_config(profile)
    r0 = ref.radius or default_radius(grid)
    d0 = ref.depth
    other_arch = "two" if ref.arch == "shared" else "shared"
    v = [Variant("radius", f"r={r}" + (" (ref)" if r == r0 else ""), dataclasses.replace(ref, radius=r))
         for r in sorted({max(1, r0 - 1), r0, r0 + 1, r0 + 2}) if r < grid]
    v += [Variant("transfer rule", "both (ref)", ref),
          Variant("transfer rule", "keep-only (λ⁻=0)", ref, transfer={"lam_minus": 0.0}),
          Variant("transfer rule", "remove-only (λ⁺=0)", ref, transfer={"lam_plus": 0.0}),
          Variant("map", "raw (ref)", ref),
          Variant("map", "pooled", ref, transfer={"pool": True}),
          Variant("head", "whole head (ref)", ref),
          Variant("head", "last layer only", ref, transfer={"last_layer_only": True}),
          Variant("trunks", f"{ref.arch} (ref)", ref),
          Variant("trunks", other_arch, dataclasses.replace(ref, arch=other_arch))]
    v += [Variant("depth", f"depth {d}" + (" (ref)" if d == d0 else ""), dataclasses.replace(ref, depth=d))
          for d in sorted({max(1, d0 // 2), d0, 2 * d0})]
    v += [Variant("pre-training set", f"{round(100 * f)} %" + (" (ref)" if f == 1 else ""), ref, subset=f)
          for f in (0.25, 0.5, 1.0)]
    v += [Variant("budget", "reduced (ref)", ref), Variant("budget", "full profile", None)]
    return v


def _radius(cfg: TVEConfig, grid: int) -> int:
    return cfg.radius or default_radius(grid)


def ablation_explainer(suite, backbone: str, variant: Variant):
    """The pre-trained (cached) TVE explainer of a variant, with its transfer settings."""
    from . import tve

    if variant.cfg is None:
        return suite.explainer(backbone, **variant.transfer)
    bb = suite.backbone(backbone)
    cfg, train = variant.cfg, suite.upstream[0]
    if variant.subset < 1.0:
        g = torch.Generator().manual_seed(20_011 + suite.seed)
        n = int(variant.subset * min(cfg.n_images, len(train)))
        train = train.subset(torch.randperm(len(train), generator=g)[:n])
        # same optimiser steps as the reference: fewer images, proportionally more epochs
        cfg = dataclasses.replace(cfg, n_images=n, epochs=max(1, round(cfg.epochs / variant.subset)))
    key = hashlib.sha1(repr((cfg, variant.subset, suite.tve_checkpoint(backbone, cfg).name)).encode()).hexdigest()[:10]
    ckpt = suite.ckpt_dir / f"tve_ablation_{backbone}_{key}.pt"
    radius = _radius(cfg, bb.grid)
    if ckpt.exists():
        try:
            model, s = tve.load_explainer(ckpt, bb, cfg)
            return tve.TVE(bb, model, s["radius"], **variant.transfer)
        except (CorruptCheckpoint, KeyError, RuntimeError) as e:
            print(f"warning: {e}; pre-training the variant again")
            ckpt.unlink()
    torch.manual_seed(suite.seed)
    model = tve.build_explainer(bb, cfg)
    tve.pretrain(model, bb, train, suite.upstream[1], cfg, ckpt, suite.seed, radius, progress=False)
    return tve.TVE(bb, model, radius, **variant.transfer)


def run_ablations(suite, backbone: str, variants: Sequence[Variant], tasks: Sequence[str] | None = None,
                  kinds: Sequence[str] = HEAD_KINDS, progress: bool = True) -> pd.DataFrame:
    """Summary rows (the fidelity summary columns plus ``variant``, ``ablation``, ``seconds``) of
    every variant on ``ablation_n_images`` test images of each task and head.

    Besides the fidelity metrics, ``transfer_spearman`` is the mean per-image Spearman correlation of
    the variant's map with the exact window quantity it amortises at its own radius (notebook 02's
    transfer error), on the first ``eval.n_transfer`` of those images: it shows how the amortisation
    error moves with each factor (e.g. pre-training budget), separately from fidelity.

    Distinct explainers are built and evaluated once; the reference's rows are repeated under
    each factor. ``seconds`` is the variant's pre-training (or loading) time.
    """
    ev = suite.profile.eval
    tasks = list(tasks or suite.profile.tasks)
    bb = suite.backbone(backbone)
    say = print if progress else (lambda *a, **k: None)
    data = {}
    for t in tasks:
        task = suite.task(t)
        idx = evaluation_indices(task.test, ev.n_fidelity, suite.seed)[: ev.ablation_n_images]
        raw, _, masks = task.test.get(idx)
        x = bb.normalize(raw.to(suite.device))
        heads = [suite.head(backbone, t, k) for k in kinds]
        with torch.no_grad():
            emb = bb.embed_batched(x, ev.masked_batch_size)
        targets = [h(emb).argmax(-1) for h in heads]
        refs = cached_shapley_references(suite, backbone, t, x, heads, kinds, targets)
        data[t] = (x, None if masks is None else masks.to(suite.device), heads, targets, refs)

    exact: dict[tuple[str, int], list[torch.Tensor]] = {}

    def transfer_rows(t: str, k: str, i: int, a: torch.Tensor, radius: int) -> pd.DataFrame:
        from .tve import window_occlusion

        x, _, heads, targets, _ = data[t]
        n = min(ev.n_transfer, len(x))
        if (t, radius) not in exact:
            with torch.no_grad():
                exact[(t, radius)] = [window_occlusion(bb, h, x[:n], tg[:n], radius, ev.masked_batch_size)
                                      for h, tg in zip(heads, targets)]
        sp = M.spearman(a[:n], exact[(t, radius)][i])
        mean, lo, hi, m = M.bootstrap_ci(sp, ev.bootstrap, seed=suite.seed * 7919 + 101)
        row = dict(backbone=backbone, task=t, head=k, method="tve", budget=0, metric="transfer_spearman",
                   value=mean, ci_low=lo, ci_high=hi, n_images=m, seed=suite.seed)
        return pd.DataFrame([row])[SUMMARY_COLUMNS]

    done: dict[str, pd.DataFrame] = {}
    rows = []
    for v in variants:
        ident = repr((v.cfg, v.subset, sorted(v.transfer.items())))
        if ident not in done:
            t0 = time.time()
            expl = ablation_explainer(suite, backbone, v)
            secs = time.time() - t0
            parts = []
            for t, (x, masks, heads, targets, refs) in data.items():
                maps = expl.explain_tasks(x, heads, targets)
                for i, (k, h, tg, a, ref) in enumerate(zip(kinds, heads, targets, maps, refs)):
                    _, s = evaluate_maps(bb, h, x, {"tve": a}, tg, masks, ev, shapley=ref,
                                         meta=dict(backbone=backbone, task=t, head=k), seed=suite.seed)
                    parts += [s, transfer_rows(t, k, i, a, expl.radius)]
            done[ident] = concat(parts).assign(seconds=secs)
            say(f"[{backbone}] {v.ablation}: {v.variant}: ready in {secs:.1f} s, evaluated in "
                f"{time.time() - t0 - secs:.1f} s")
        rows.append(done[ident].assign(variant=v.variant, ablation=v.ablation))
    return concat(rows)
