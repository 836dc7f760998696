"""The scaling study of TVE pre-training: quality against compute, measured (notebook 03b).

Each budget is one pre-trained explainer (``TVEConfig``: sampler, arch, images, epochs, windows per
image), scored on a reduced set of test images per task, both heads, against the exact window
quantity it amortises: median Spearman and top-10 % overlap (notebook 02's transfer error), and
its Fidelity⁺ AUC over that of exact window occlusion on the same images (notebook 03's
amortisation factor). ``pretrain_seconds`` is training plus the cost of the stored targets the
budget uses, so dense and online samplers compare on total compute. A continued budget trains the profile's
explainer further (`Suite.continued_explainer`); its steps, targets and seconds count the profile's too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .. import metrics as M
from ..config import Profile, TVEConfig
from ..explainers.tve import exact_window_embeddings, transfer_rule
from ..explainers.tve_targets import backbone_digest
from ..heads import HEAD_KINDS, head_logits
from ..precision import dtype_name
from ..schema import SCALING_COLUMNS
from .fidelity import evaluation_indices
from .transfer import trivial_ratio

if TYPE_CHECKING:
    from ..explainers.base import Explainer
    from .suite import Suite


def budget_config(base: TVEConfig, **kw) -> TVEConfig:
    """``base`` with one budget's fields replaced (sampler, arch, n_images, epochs, ...)."""
    return dataclasses.replace(base, **kw)


class ScalingProbe:
    """Test images, heads and exact maps of one backbone, computed once for every budget."""

    def __init__(self, suite, backbone: str, n_images: int, tasks: Sequence[str] | None = None,
                 kinds: Sequence[str] = HEAD_KINDS):
        self.suite, self.backbone, self.kinds = suite, backbone, tuple(kinds)
        self.bb = bb = suite.backbone(backbone)
        # which trained instance: the cpu backbones' weights depend on the thread count and the CPU
        self.weights = backbone_digest(bb)
        ev = suite.profile.eval
        self.data = {}
        for t in tasks or suite.profile.tasks:
            task = suite.task(t, backbone)
            idx = evaluation_indices(task.test, ev.n_fidelity, suite.seed)[:n_images]
            x = bb.normalize(task.test.get(idx)[0].to(suite.device))
            heads = [suite.head(backbone, t, k) for k in kinds]
            with torch.no_grad():
                emb = bb.embed_batched(x, ev.masked_batch_size)
                ys = [head_logits(h, emb).argmax(-1) for h in heads]
            self.data[t] = {"x": x, "heads": heads, "targets": ys, "exact": {}, "occl_fid": {},
                            "base": M.curve_base(bb, x, ev.masked_batch_size)}
        self.n_images = min(len(d["x"]) for d in self.data.values())

    def _exact(self, t: str, radius: int) -> list[torch.Tensor]:
        d = self.data[t]
        if radius not in d["exact"]:
            ek, er = exact_window_embeddings(self.bb, d["x"], radius, self.suite.profile.eval.masked_batch_size)
            g = self.bb.grid
            d["exact"][radius] = [transfer_rule(ek, er, h, y).view(-1, g, g) for h, y in zip(d["heads"], d["targets"])]
            d["occl_fid"][radius] = [self._fid_plus(h, d["x"], a, y, d["base"])
                                     for h, a, y in zip(d["heads"], d["exact"][radius], d["targets"])]
        return d["exact"][radius]

    def _fid_plus(self, head, x, a, y, base: M.CurveBase) -> float:
        ev = self.suite.profile.eval
        xs, curve = M.perturbation_curves(self.bb, head, x, a, y, ev.sparsities, batch_size=ev.masked_batch_size,
                                          which=("fid_plus",), base=base)["fid_plus"]
        return M.auc(xs, curve).mean().item()

    @torch.no_grad()
    def score(self, explainer) -> pd.DataFrame:
        """Per task and head: median Spearman, mean top-10 % overlap, Fid⁺ AUC ratio to occlusion."""
        rows = []
        for t, d in self.data.items():
            exact = self._exact(t, explainer.radius)
            maps = explainer.explain_tasks(d["x"], d["heads"], d["targets"])
            for k, h, y, a, e, occ in zip(self.kinds, d["heads"], d["targets"], maps, exact,
                                          d["occl_fid"][explainer.radius]):
                rows.append({"task": t, "head": k, "spearman": M.spearman(a, e).median().item(),
                             "topk_overlap": M.topk_overlap(a, e, 0.1).mean().item(),
                             "fid_plus_ratio_to_occlusion": self._fid_plus(h, d["x"], a, y, d["base"]) / occ})
        return pd.DataFrame(rows)


def budget_steps(cfg: TVEConfig, n_images: int | None = None) -> int:
    """Optimiser steps of a budget's pre-training on ``n_images`` upstream images (default its own count)."""
    n = cfg.n_images if n_images is None else n_images
    return cfg.epochs * -(-n // cfg.batch_size)


def scaling_row(probe: ScalingProbe, cfg: TVEConfig, continues: TVEConfig | None = None) -> tuple[dict, pd.DataFrame]:
    """Pre-train (or load) the explainer of one budget and score it: the row of ``scaling.csv``
    (medians over the task x head settings; the worst setting in ``transfer_spearman_min``) and the
    per-setting scores. ``continues``: the config of the explainer this budget trains further (None: from the
    start); ``steps`` and ``targets_seen`` then count its training too, ``continued_from_*`` name it."""
    suite, b = probe.suite, probe.backbone
    t0 = time.time()
    expl = suite.explainer(b, cfg) if continues is None else suite.continued_explainer(b, cfg, continues)
    hist = suite.tve_history(b, cfg, continues)
    ratio = trivial_ratio(pd.DataFrame([{"backbone": b, **h} for h in hist])).ratio.iloc[0]
    per = probe.score(expl)
    up = len(suite.upstream[0])
    n, n0 = min(cfg.n_images, up), 0 if continues is None else min(continues.n_images, up)
    k = probe.bb.n_players if cfg.sampler == "dense" else min(cfg.windows_per_image, probe.bb.n_players)
    e0 = 0 if continues is None else continues.epochs
    row = dict(backbone=b, sampler=cfg.sampler, arch=cfg.arch, n_images=n, epochs=cfg.epochs,
               windows_per_image=k, steps=budget_steps(cfg, n) + (budget_steps(continues, n0) if n0 else 0),
               targets_seen=(n * cfg.epochs + n0 * e0) * k * 2,
               pretrain_seconds=hist[-1]["seconds"], heldout_ratio=ratio,
               transfer_spearman=per.spearman.median(), topk_overlap=per.topk_overlap.mean(),
               fid_plus_ratio_to_occlusion=per.fid_plus_ratio_to_occlusion.median(), seed=suite.seed,
               transfer_spearman_min=per.spearman.min(), target_seconds=hist[-1].get("target_seconds", 0.0),
               depth=cfg.depth, embed_dim=cfg.embed_dim, n_test_images=probe.n_images, augment=cfg.augment,
               backbone_weights=probe.weights, dtype=dtype_name(probe.bb.compute_dtype),  # of the targets' passes
               train_dtype=dtype_name(probe.bb.train_dtype or torch.float32),  # of the training steps
               continued_from_images=n0, continued_from_epochs=e0, wall_seconds=time.time() - t0)
    return row, per.assign(backbone=b, sampler=cfg.sampler, arch=cfg.arch, n_images=n, epochs=cfg.epochs,
                           augment=cfg.augment, continued_from_images=n0, continued_from_epochs=e0)


def scaling_budgets(profile: Profile) -> list[TVEConfig]:
    """Every budget of ``profile.scaling`` as a TVEConfig (dense first, then online)."""
    sc, base = profile.scaling, profile.tve
    out = [budget_config(base, sampler="dense", n_images=n, epochs=e) for n, e in sc.dense]
    # the online sampler sees K drawn windows, not an image's every window: the plain MSE (centred weight 1)
    out += [budget_config(base, sampler="online", n_images=n, epochs=e, windows_per_image=k, centred_weight=1.0)
            for n, e, k in sc.online]
    return out


def continued_budgets(profile: Profile) -> list[TVEConfig]:
    """Every budget of ``profile.scaling.continued``: the profile's TVEConfig with its images and epochs, each
    trained further from the profile's own explainer."""
    return [budget_config(profile.tve, n_images=n, epochs=e) for n, e in profile.scaling.continued]


def run_scaling(suite: Suite, backbone: str, budgets: Sequence[TVEConfig], continued: Sequence[TVEConfig] = (),
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of ``tve/scaling.csv`` for ``backbone`` (one per budget, ``SCALING_COLUMNS`` first) and
    the per-setting scores behind them; ``continued`` budgets train the profile's explainer further."""
    probe = ScalingProbe(suite, backbone, suite.profile.scaling.n_test_images, suite.tasks_of(backbone))
    rows, per = [], []
    for cfg, base in [(c, None) for c in budgets] + [(c, suite.profile.tve) for c in continued]:
        row, p = scaling_row(probe, cfg, base)
        rows.append(row)
        per.append(p)
        if progress:
            after = "" if base is None else f" after {base.n_images} x {base.epochs}"
            print(f"[{backbone}] {cfg.sampler} {cfg.arch} {row['n_images']} images x {cfg.epochs} epochs{after}: "
                  f"{row['pretrain_seconds']:.0f} s, Spearman {row['transfer_spearman']:.3f} "
                  f"(worst {row['transfer_spearman_min']:.3f})", flush=True)
    df = pd.DataFrame(rows)
    return df[SCALING_COLUMNS + [c for c in df.columns if c not in SCALING_COLUMNS]], pd.concat(per)


def _seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _bench_batch(suite, backbone: str, batch_size: int):
    """The backbone, ``batch_size`` normalised test images of the profile's first task, and its linear head."""
    bb = suite.backbone(backbone)
    task = suite.task(suite.profile.tasks[0], backbone)
    x = bb.normalize(task.test.get(torch.arange(min(batch_size, len(task.test))))[0].to(suite.device))
    return bb, x, suite.head(backbone, suite.profile.tasks[0], "linear")


@torch.no_grad()
def explain_ratio(suite: Suite, backbone: str, explainer: Explainer, batch_size: int, repeats: int = 5) -> float:
    """Explanation throughput over one backbone inference (head included) on a batch of ``batch_size`` test
    images of the profile's first task (median of ``repeats`` timings each)."""
    bb, x, head = _bench_batch(suite, backbone, batch_size)
    t_inf = _seconds(lambda: head(bb.embed(x)), repeats)
    return t_inf / _seconds(lambda: explainer.explain(x, head), repeats)


@torch.no_grad()
def shape_front(suite: Suite, backbones: Sequence[str], ablations: pd.DataFrame, batch_size: int = 32,
                repeats: int = 5) -> pd.DataFrame:
    """Per backbone and explainer shape (the ablation factor "explainer"): mean transfer Spearman
    and Fid⁺ AUC from ``ablations``, and explanation throughput over one backbone inference on a
    batch of ``batch_size`` test images (median of ``repeats``)."""
    from .ablations import ablation_explainer, ablation_variants

    rows = []
    for b in backbones:
        bb, x, head = _bench_batch(suite, b, batch_size)
        t_inf = _seconds(lambda bb=bb, x=x, head=head: head(bb.embed(x)), repeats)
        for v in ablation_variants(suite.profile, bb.grid):
            if v.ablation != "explainer":
                continue
            expl = ablation_explainer(suite, b, v)
            t = _seconds(lambda e=expl, x=x, head=head: e.explain(x, head), repeats)
            sel = ablations[(ablations.backbone == b) & (ablations.variant == v.variant)]
            rows.append(dict(backbone=b, arch=v.cfg.arch, variant=v.variant, batch_size=len(x),
                             ms_per_image=1000 * t / len(x), ratio_to_inference=t_inf / t,
                             transfer_spearman=sel[sel.metric == "transfer_spearman"].value.mean(),
                             fid_plus_auc=sel[sel.metric == "fid_plus_auc"].value.mean(), seed=suite.seed))
    return pd.DataFrame(rows)
