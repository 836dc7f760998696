"""TVE ablations (notebook 03b): which design choices make the zero-shot maps faithful.

Factors (docs/method.md §1 choices): window radius r; transfer rule (keep-only λ⁻=0 as in the
official demo, remove-only λ⁺=0, both); pooled vs raw map; whole head vs last layer only; the
explainer's shape (tapped on the backbone's tokens, two trunks as the official code, one shared
trunk); its depth; upstream augmentation (composites); the loss's centred weight (dense); the
tapped explainer's inputs. How much pre-training, and which sampler, is the scaling study's
question (`tve_lib.studies.scaling`), measured as a curve rather than as a factor.

Every pre-trained variant uses the same reduced budget (``eval.ablation_epochs`` epochs of
``eval.ablation_images`` images; the reference explainer is the profile's TVEConfig at that
budget), so variants differ in one factor only. Transfer variants reuse the reference explainer
(no training).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .. import metrics as M
from ..cache import digest
from ..config import Profile, TVEConfig
from ..explainers.tve_model import ARCHS, TAPPED_ARCHS
from ..heads import HEAD_KINDS, check_head, head_logits
from ..masking import window_radius
from ..schema import SUMMARY_COLUMNS
from .fidelity import cached_shapley_references, concat, evaluate_maps, evaluation_indices

if TYPE_CHECKING:
    from ..explainers.tve import TVE
    from .suite import Suite


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
    """All variants; the reference appears once per factor (marked "(ref)").

    How much pre-training (images, epochs) and which sampler are not factors here: the scaling
    study (`tve_lib.studies.scaling`, same notebook) measures them as a curve.
    """
    ref = reference_config(profile)
    r0 = window_radius(ref.radius, grid)
    d0 = ref.depth
    # the reference radius is the reference itself (not radius=r0 spelt out), so it is trained once
    v = [Variant("radius", f"r={r} (ref)", ref) if r == r0 else
         Variant("radius", f"r={r}", dataclasses.replace(ref, radius=r))
         for r in sorted({max(1, r0 + o) for o in profile.eval.ablation_radii}) if r < grid]
    v += [Variant("transfer rule", "both (ref)", ref),
          Variant("transfer rule", "keep-only (λ⁻=0)", ref, transfer={"lam_minus": 0.0}),
          Variant("transfer rule", "remove-only (λ⁺=0)", ref, transfer={"lam_plus": 0.0}),
          Variant("map", "raw (ref)", ref),
          Variant("map", "pooled", ref, transfer={"pool": True}),
          Variant("head", "whole head (ref)", ref),
          Variant("head", "last layer only", ref, transfer={"last_layer_only": True})]
    v += [Variant("explainer", f"{a}" + (" (ref)" if a == ref.arch else ""), dataclasses.replace(ref, arch=a))
          for a in sorted(ARCHS, key=lambda a: a != ref.arch)]  # the reference first, as in every factor
    v += [Variant("depth", f"depth {d}" + (" (ref)" if d == d0 else ""), dataclasses.replace(ref, depth=d))
          for d in sorted({max(1, d0 // 2), d0, 2 * d0})]
    other_aug = "none" if ref.augment != "none" else "composite"
    v += [Variant("upstream augmentation", f"{ref.augment} (ref)", ref),
          Variant("upstream augmentation", other_aug, dataclasses.replace(ref, augment=other_aug))]
    if ref.sampler == "dense":
        other_w = 1.0 if ref.centred_weight != 1.0 else 4.0
        v += [Variant("loss", f"centred weight {ref.centred_weight:g} (ref)", ref),
              Variant("loss", f"centred weight {other_w:g}" + (" (plain MSE)" if other_w == 1 else ""),
                      dataclasses.replace(ref, centred_weight=other_w))]
    other_dims = "whitened" if ref.loss_dims == "plain" else "plain"
    v += [Variant("loss dimensions", f"{ref.loss_dims} (ref)", ref),
          Variant("loss dimensions", other_dims, dataclasses.replace(ref, loss_dims=other_dims))]
    if ref.arch in TAPPED_ARCHS:
        v += [Variant("tapped inputs", "tokens + pixels (ref)" if ref.tap_pixels else "tokens (ref)", ref),
              Variant("tapped inputs", "tokens only" if ref.tap_pixels else "tokens + pixels",
                      dataclasses.replace(ref, tap_pixels=not ref.tap_pixels))]
    return v


def ablation_explainer(suite: Suite, backbone: str, variant: Variant) -> TVE:
    """The pre-trained (cached) TVE explainer of a variant, with its transfer settings."""
    if variant.cfg is None:
        return suite.explainer(backbone, **variant.transfer)
    cfg = variant.cfg
    key = digest(cfg, variant.subset, suite.tve_checkpoint(backbone, cfg).name)
    return suite.pretrained_tve(backbone, cfg, suite.ckpt_dir / f"tve_ablation_{backbone}_{key}.pt",
                                suite.tve_radius(backbone, cfg), variant.transfer, progress=False)


def _ablation_data(suite: Suite, backbone: str, tasks: Sequence[str], kinds: Sequence[str]) -> dict[str, tuple]:
    """Per task: the first ``ablation_n_images`` evaluation images, region masks, heads, targets and
    exact Shapley references (shared with notebook 03's cache)."""
    ev, bb = suite.profile.eval, suite.backbone(backbone)
    data = {}
    for t in tasks:
        task = suite.task(t, backbone)
        idx = evaluation_indices(task.test, ev.n_fidelity, suite.seed)[: ev.ablation_n_images]
        raw, _, masks = task.test.get(idx)
        x = bb.normalize(raw.to(suite.device))
        heads = [suite.head(backbone, t, k) for k in kinds]
        with torch.no_grad():
            emb = bb.embed_batched(x, ev.masked_batch_size)
        targets = [head_logits(h, emb).argmax(-1) for h in heads]
        refs = cached_shapley_references(suite, backbone, t, x, heads, kinds, targets)
        data[t] = (x, None if masks is None else masks.to(suite.device), heads, targets, refs)
    return data


class _TransferRows:
    """``transfer_spearman`` rows: a variant's map against the exact window quantity at its radius
    (computed once per task and radius)."""

    def __init__(self, suite: Suite, backbone: str, data: dict[str, tuple]):
        self.suite, self.backbone, self.data = suite, backbone, data
        self.exact: dict[tuple[str, int], list[torch.Tensor]] = {}

    def __call__(self, t: str, k: str, i: int, a: torch.Tensor, radius: int) -> pd.DataFrame:
        from ..explainers.tve import exact_window_embeddings, transfer_rule

        ev, bb = self.suite.profile.eval, self.suite.backbone(self.backbone)
        x, _, heads, targets, _ = self.data[t]
        n = min(ev.n_transfer, len(x))
        if (t, radius) not in self.exact:
            for h in heads:
                check_head(h, bb.embed_dim)
            # one set of 2·G² window passes serves every head (`window_occlusion` per head would repeat them)
            with torch.no_grad():
                ek, er = exact_window_embeddings(bb, x[:n], radius, ev.masked_batch_size)
                self.exact[(t, radius)] = [transfer_rule(ek, er, h, tg[:n]).view(n, bb.grid, bb.grid)
                                           for h, tg in zip(heads, targets)]
        sp = M.spearman(a[:n], self.exact[(t, radius)][i])
        mean, lo, hi, m = M.bootstrap_ci(sp, ev.bootstrap, seed=self.suite.seed * 7919 + 101)
        row = dict(backbone=self.backbone, task=t, head=k, method="tve", budget=0, metric="transfer_spearman",
                   value=mean, ci_low=lo, ci_high=hi, n_images=m, seed=self.suite.seed)
        return pd.DataFrame([row])[SUMMARY_COLUMNS]


def run_ablations(suite: Suite, backbone: str, variants: Sequence[Variant], tasks: Sequence[str] | None = None,
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
    bb = suite.backbone(backbone)
    say = print if progress else (lambda *a, **k: None)
    data = _ablation_data(suite, backbone, list(tasks or suite.tasks_of(backbone)), kinds)
    transfer_rows = _TransferRows(suite, backbone, data)
    done: dict[str, pd.DataFrame] = {}
    # the full and fully removed images of each task's x, shared by every variant and head
    bases = {t: M.curve_base(bb, d[0], ev.masked_batch_size) for t, d in data.items()}
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
                                         meta=dict(backbone=backbone, task=t, head=k), seed=suite.seed,
                                         base=bases[t])
                    parts += [s, transfer_rows(t, k, i, a, expl.radius)]
            done[ident] = concat(parts).assign(seconds=secs)
            say(f"[{backbone}] {v.ablation}: {v.variant}: ready in {secs:.1f} s, evaluated in "
                f"{time.time() - t0 - secs:.1f} s")
        rows.append(done[ident].assign(variant=v.variant, ablation=v.ablation))
    return concat(rows)
