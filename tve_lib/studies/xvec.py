"""Notebook 06, the explainability vector (docs/method.md §4): trainings, τ, the λ sweeps.

The method (self-explaining model, explanation loss, training, task arithmetic) is
`tve_lib.explainers.xvec`; the evaluation at λ* and the cost rows are `tve_lib.studies.xvec_eval`;
the claim rules are `tve_lib.report.claims`. This study's **suite choices**:

* Explanation supervision: KernelSHAP values of the source prediction-only model for *all* its
  classes, cached with their settings (`cached_supervision`).
* Trainings (a) source prediction-only, (b) source prediction + explanation, (c) target
  prediction-only and (d) target prediction + explanation (the upper bound) start from one
  initialisation (the backbone, and the explanation head drawn from the seed) and use the same
  seed, batch order generator and step count. Prediction-only trainings leave ``E`` untouched.
* ``τ = θ_b − θ_a``; the target keeps its own classification head from (c):
  ``θ_target(λ) = θ_c + λ τ``; λ is chosen on source validation data only (`select_lambda`).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import nn

from ..backbones import Backbone
from ..cache import cached, digest, file_safe
from ..config import XVecConfig
from ..explainers.xvec import (
    SUPERVISION_ESTIMATOR,
    SelfExplainingModel,
    apply_vector,
    build_model,
    kernelshap_supervision,
    model_payload,
    restore_model,
    state_digest,
    task_vector,
    train_model,
)
from ..imagesets import ImageSet
from ..schema import MODEL_NAMES, SELF_HEAD, SWEEP_COLUMNS, SWEEP_EXTRA
from ..shapley import ShapleyReference, player_groups, shapley_references
from . import xvec_eval
from .fidelity import evaluate_maps
from .xvec_eval import SELECT_METRICS, accuracy, predict_and_explain, select_lambda, with_gap

if TYPE_CHECKING:
    from .suite import Suite


def cached_supervision(path: str | Path, model: SelfExplainingModel, data: ImageSet, idx: torch.Tensor,
                       budget: int, seed: int, progress: bool = False, batch_size: int = 1024
                       ) -> tuple[torch.Tensor, dict]:
    """`kernelshap_supervision`, cached at ``path`` with its settings; recomputed when they differ.

    The settings record the estimator, budget, seed, grid, the image set and indices, and a
    digest of the explained model's weights. Returns ``(phi [N, C, P], settings)``.
    """
    idx = torch.as_tensor(idx, dtype=torch.long)
    settings = {"estimator": SUPERVISION_ESTIMATOR, "budget": budget, "seed": seed,
                "grid": model.grid, "data": data.name, "n_images": len(idx),
                "indices": hashlib.sha1(idx.numpy().tobytes()).hexdigest()[:12],
                "model": state_digest(model)}

    def build() -> dict:
        return {"settings": settings, "phi": kernelshap_supervision(model, data, idx, budget, seed,
                                                                           batch_size=batch_size, progress=progress)}

    def restore(s: dict) -> tuple[torch.Tensor, dict]:
        if s["settings"] != settings:  # a stale file: `cached` deletes it and computes it again
            raise ValueError("it was computed with other settings")
        return s["phi"], settings

    return cached(path, build, restore, what="KernelSHAP supervision")


def source_indices(n_train: int, n_val: int, cfg: XVecConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The documented source subsets: ``n_source`` upstream-train and ``n_source_val`` upstream-val
    positions, drawn with ``seed`` (sorted). Downstream test images are never among them."""
    g = torch.Generator().manual_seed(seed + 606)
    tr = torch.randperm(n_train, generator=g)[:cfg.n_source].sort().values
    va = torch.randperm(n_val, generator=g)[:cfg.n_source_val].sort().values
    return tr, va


class XVecStudy:
    """Notebook 06 for one backbone: the four trainings (cached), τ, the λ sweeps and the comparison.

    ``kind`` of a model: ``"pred"`` (prediction only) or ``"expl"`` (prediction + explanation);
    ``task`` None is the source (the upstream set's classes). So (a) = ("pred", None),
    (b) = ("expl", None), (c) = ("pred", task), (d) = ("expl", task).
    """

    def __init__(self, suite: Suite, backbone: str, progress: bool = True):
        self.suite, self.name, self.progress = suite, backbone, progress
        self.cfg, self.eval_cfg, self.seed = suite.profile.xvec, suite.profile.eval, suite.seed
        if self.cfg.select_metric not in SELECT_METRICS:
            raise KeyError(f"xvec.select_metric {self.cfg.select_metric!r}: expected one of {SELECT_METRICS}")
        self.backbone = suite.backbone(backbone)
        self.source_train, self.source_val = suite.upstream_for(backbone)
        self.source_idx, self.val_idx = source_indices(len(self.source_train), len(self.source_val),
                                                       self.cfg, self.seed)
        prof = suite.profile.digest("img_size", "backbones", "backbone_train", "upstream", "n_upstream_val",
                                    "mean", "std")
        self.key = digest(self.cfg, prof, self.seed)
        self._models: dict[tuple[str, str | None], SelfExplainingModel] = {}
        self.histories: dict[tuple[str, str | None], list[dict]] = {}
        self.settings: dict[str | None, dict] = {}
        self._refs: dict[tuple, ShapleyReference] = {}
        self._scores: dict[tuple, pd.DataFrame] = {}

    # ------------------------------------------------------------------ data
    @property
    def source_name(self) -> str:
        return self.suite.profile.upstream

    def _train_set(self, task: str | None) -> tuple[ImageSet, torch.Tensor, int]:
        if task is None:
            return self.source_train, self.source_idx, len(self.source_train.classes)
        t = self.suite.task(task, self.name)
        return t.train, torch.arange(len(t.train)), t.num_classes

    def _ckpt(self, stem: str) -> Path:
        return self.suite.ckpt_dir / f"xvec_{self.name}_{self.key}_{file_safe(stem)}.pt"

    def eval_set(self, task: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Normalised images, labels and region masks: the first ``n_eval`` target-test images, or
        the source-validation subset (``task`` None)."""
        if task is None:
            raw, y, m = self.source_val.get(self.val_idx)
        else:
            test = self.suite.task(task, self.name).test
            raw, y, m = test.get(torch.arange(min(self.cfg.n_eval, len(test))))
        return self.backbone.normalize(raw.to(self.suite.device)), y, m

    def accuracy_indices(self, task: str) -> torch.Tensor:
        """The target-test images accuracy is measured on: the first ``n_accuracy`` (None: all)."""
        n = len(self.suite.task(task).test)
        return torch.arange(min(n, self.cfg.n_accuracy or n))

    # ------------------------------------------------------------------ models
    def supervision(self, task: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """KernelSHAP supervision of the prediction-only model of ``task`` (None: the source), cached.

        Source: every source-training image (positions None). Target (upper bound): the first
        ``n_target_sup`` images of a seeded permutation of the target training set, returned
        with their positions in it.
        """
        ds, idx, _ = self._train_set(task)
        pos = None
        if task is not None:
            g = torch.Generator().manual_seed(self.seed + 707)
            pos = torch.randperm(len(idx), generator=g)[:self.cfg.n_target_sup].sort().values
        model = self.model("pred", task)
        phi, settings = cached_supervision(self._ckpt(f"supervision_{task or 'source'}"), model, ds,
                                           idx if pos is None else idx[pos], self.cfg.shap_budget, self.seed,
                                           self.progress, self.suite.profile.eval.masked_batch_size)
        self.settings[task] = settings
        return phi, pos

    def model(self, kind: str, task: str | None = None) -> SelfExplainingModel:
        """Model (a)-(d): trained once from the shared initialisation, cached in memory and on disk."""
        if kind not in ("pred", "expl"):
            raise KeyError(f"unknown model kind {kind!r}; expected 'pred' or 'expl'")
        key = (kind, task)
        if key not in self._models:
            fresh: list[SelfExplainingModel] = []  # the model `build` trained, returned as is (not rebuilt)

            def build() -> dict:
                m, payload = self._train(kind, task)
                fresh.append(m)
                return payload

            self._models[key] = cached(self._ckpt(f"{kind}_{task or 'source'}"), build,
                                       lambda s: self._restore(s, key, fresh[0] if fresh else None),
                                       what="self-explaining model")
        return self._models[key]

    def _train(self, kind: str, task: str | None) -> tuple[SelfExplainingModel, dict]:
        """Model (``kind``, ``task``) trained from the shared initialisation, and its `model_payload`."""
        ds, idx, n_cls = self._train_set(task)
        phi, pos = self.supervision(task) if kind == "expl" else (None, None)
        m = build_model(self.backbone, n_cls, self.cfg, self.seed)
        hist = train_model(m, ds, self.cfg, self.seed, idx, phi, pos, progress=self.progress)
        return m, model_payload(m, history=hist, supervision=self.settings.get(task) if kind == "expl" else None)

    def _restore(self, payload: dict, key: tuple[str, str | None], trained: SelfExplainingModel | None
                 ) -> SelfExplainingModel:
        """``trained`` (just built) or the model of a cached payload; records its history and settings."""
        m, extra = (trained, payload) if trained is not None else restore_model(payload, self.backbone, self.cfg,
                                                                                  self.seed)
        self.histories[key] = extra.get("history", [])
        if extra.get("supervision"):
            self.settings[key[1]] = extra["supervision"]
        return m

    def history(self) -> pd.DataFrame:
        """Training rows of every model built so far: ``model, task, step, ce, expl, acc``."""
        return pd.DataFrame([{"model": MODEL_NAMES[(k, t is None)], "task": t or self.source_name, **h}
                             for (k, t), hist in self.histories.items() for h in hist])

    @cached_property
    def tau(self) -> dict[str, torch.Tensor]:
        """``τ = θ_b − θ_a`` over the shared parameters."""
        return task_vector(self.model("expl"), self.model("pred"))

    def at_lambda(self, lam: float, task: str | None = None) -> SelfExplainingModel:
        """``θ_c + λ τ`` for ``task`` (None: ``θ_a + λ τ`` on the source)."""
        return apply_vector(self.model("pred", task), self.tau, lam)

    # ------------------------------------------------------------------ scoring
    def score(self, ref_key: tuple, backbone: Backbone, head: nn.Module, x: torch.Tensor,
              maps: dict[str, torch.Tensor], target: torch.Tensor, masks: torch.Tensor | None,
              meta: dict, n_shapley: int, budget: dict[str, int] | None = None) -> pd.DataFrame:
        """Summary rows of ``maps`` on the model ``head ∘ backbone`` (exact Shapley on the first
        ``n_shapley`` images, computed once per ``ref_key``), with ``fid_gap`` rows added."""
        ref = None
        if n_shapley > 0:
            k = (*ref_key, n_shapley)
            if k not in self._refs:
                groups = player_groups(backbone.grid, tuple(self.cfg.shapley_groups or self.eval_cfg.shapley_groups))
                self._refs[k] = shapley_references(backbone, [head], x[:n_shapley], groups.to(x.device),
                                                   [target[:n_shapley]], self.eval_cfg.batch_size,
                                                   self.eval_cfg.shapley_topk)[0]
            ref = self._refs[k]
        _, summary = evaluate_maps(backbone, head, x, maps, target, masks, self.eval_cfg, budget=budget or 0,
                                   shapley=ref, meta=meta, seed=self.seed)
        return with_gap(summary)

    def evaluate_lambda(self, lam: float, task: str | None = None) -> pd.DataFrame:
        """Summary rows (plus ``accuracy``) of ``θ(λ)``'s own maps on the evaluation set of ``task``."""
        key = (task, float(lam))
        if key in self._scores:
            return self._scores[key]
        m = self.at_lambda(lam, task)
        x, _, masks = self.eval_set(task)
        logits, maps = predict_and_explain(m, x, self.eval_cfg.batch_size)
        meta = {"backbone": self.name, "task": task or self.source_name, "head": SELF_HEAD}
        n_shap = self.cfg.n_shapley if task is not None else 0
        s = self.score(("lambda", task, float(lam)), m.backbone, m.cls_head, x, {"xvec": maps},
                       logits.argmax(1), masks, meta, n_shap)
        if task is None:
            acc, n_acc = accuracy(m, self.source_val, self.eval_cfg.batch_size, self.val_idx), len(self.val_idx)
        else:
            acc_idx = self.accuracy_indices(task)
            test = self.suite.task(task, self.name).test
            acc, n_acc = accuracy(m, test, self.eval_cfg.batch_size, acc_idx), len(acc_idx)
        s = pd.concat([s, pd.DataFrame([dict(meta, method="xvec", budget=0, metric="accuracy", value=acc,
                                             n_images=n_acc, seed=self.seed)])], ignore_index=True)
        s["lambda"] = float(lam)
        self._scores[key] = s
        return s

    def sweep(self, task: str | None = None) -> pd.DataFrame:
        """``lambda_sweep.csv`` rows of ``task`` (None: the source-validation sweep that chooses λ)."""
        rows = pd.concat([self.evaluate_lambda(lam, task) for lam in self.cfg.lambdas], ignore_index=True)
        rows["split"] = "source_val" if task is None else "test"
        return rows[SWEEP_COLUMNS + SWEEP_EXTRA].reset_index(drop=True)

    def select_lambda(self) -> tuple[float, pd.DataFrame]:
        """λ* from the source-validation sweep only, and that sweep's rows."""
        src = self.sweep(None)
        return select_lambda(src, self.cfg.select_metric, self.cfg.max_acc_drop), src

    def compare(self, task: str, lam: float) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
        """The comparison at λ* (`tve_lib.studies.xvec_eval.compare`): rows and gallery maps."""
        return xvec_eval.compare(self, task, lam)

    def throughput(self, task: str, lam: float) -> pd.DataFrame:
        """Cost per explanation at the profile's size (`tve_lib.studies.xvec_eval.throughput`)."""
        return xvec_eval.throughput(self, task, lam)
