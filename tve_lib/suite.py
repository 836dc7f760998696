"""`Suite`: one object per notebook run that owns the profile, paths, device and caches.

Every notebook starts with ``suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR,
RESULTS_DIR)``; models, embeddings and heads are computed once, cached under
``results/<profile>/checkpoints`` and reused by every later notebook.
"""

from __future__ import annotations

import random
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from . import backbones as bbs
from . import data as data_mod
from .config import Profile, get_profile
from .heads import HEAD_KINDS, head_accuracy, train_head
from .io import CorruptCheckpoint, load_torch, provenance, save_torch, write_json

if TYPE_CHECKING:
    from .tve import TVE


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a torch Generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; any other string as torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return d


class Suite:
    """Profile, device, results folder and the cached models of one run."""

    def __init__(self, profile: str | Profile = "cpu", seed: int = 0, device: str = "auto",
                 data_dir: str | None = None, weights_dir: str | None = None,
                 results_dir: str = "results", overrides: dict[str, Any] | None = None):
        self.profile = profile if isinstance(profile, Profile) else get_profile(profile, overrides)
        self.seed = seed
        self.device = resolve_device(device)
        self.data_dir = data_dir or None
        self.weights_dir = weights_dir or None
        self.root = Path(results_dir) / self.profile.name
        self.ckpt_dir = self.root / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self._backbones: dict[str, bbs.Backbone] = {}
        self._histories: dict[str, list[dict]] = {}
        self._tasks: dict[str, data_mod.Task] = {}
        self._pretrain_sets: dict[tuple, data_mod.ImageSet] = {}
        seed_everything(seed)

    # ------------------------------------------------------------------ paths
    def path(self, *parts: str) -> Path:
        """``results/<profile>/<parts>``, with its parent folder created."""
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_run_json(self, subdir: str, parameters: dict[str, Any], **extra: Any) -> Path:
        """Provenance for ``results/<profile>/<subdir>/run.json``."""
        p = self.path(subdir, "run.json")
        write_json(provenance(parameters, self.seed, str(self.device), time.time() - self.t0,
                              profile=self.profile.to_dict(), **extra), p)
        return p

    # ------------------------------------------------------------------ data
    @cached_property
    def upstream(self) -> tuple[data_mod.ImageSet, data_mod.ImageSet]:
        """(train, val) of the upstream set; never used for downstream evaluation."""
        return data_mod.load_upstream(self.profile, self.data_dir)

    def task(self, name: str) -> data_mod.Task:
        if name not in self._tasks:
            self._tasks[name] = data_mod.load_task(name, self.profile, self.data_dir)
        return self._tasks[name]

    @property
    def backbone_names(self) -> list[str]:
        return [b.name for b in self.profile.backbones]

    # ------------------------------------------------------------------ models
    def backbone(self, name: str) -> bbs.Backbone:
        """The frozen backbone ``name`` (trained on upstream once in cpu/smoke, then cached)."""
        if name not in self._backbones:
            self.profile.backbone(name)  # clear error on unknown names before any work
            spec = self.profile.backbone(name)
            up = None
            if not spec.pretrained:
                up = self.upstream[0]
            bb, hist = bbs.obtain_backbone(self.profile, name, self.ckpt_dir, self.device, self.seed,
                                           self.weights_dir, up,
                                           num_classes=len(up.classes) if up is not None else 1000)
            self._backbones[name], self._histories[name] = bb, hist
        return self._backbones[name]

    def backbone_history(self, name: str) -> list[dict]:
        self.backbone(name)
        return self._histories[name]

    def _cached(self, key: str, fn):
        p = self.ckpt_dir / f"{key}.pt"
        if p.exists():
            try:
                return load_torch(p)
            except CorruptCheckpoint as e:
                print(f"warning: {e}; recomputing")
        obj = fn()
        save_torch(obj, p)
        return obj

    def _bb_key(self, name: str) -> str:
        return f"{name}_{self.profile.digest('img_size', 'backbones', 'backbone_train')}_s{self.seed}"

    def embeddings(self, backbone: str, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[N, D]`` and labels of a task split (cached)."""
        bb = self.backbone(backbone)
        ds = getattr(self.task(task), split)
        key = (f"emb_{self._bb_key(backbone)}_{task.replace('/', '_').replace(':', '_')}_{split}_"
               f"{data_mod.content_digest(ds)}")

        def compute():
            out, ys = [], []
            with torch.no_grad():
                for raw, y, _ in data_mod.iter_batches(ds, self.profile.eval.batch_size):
                    out.append(bb.embed(bb.normalize(raw.to(self.device))).cpu())
                    ys.append(y)
            return {"emb": torch.cat(out), "labels": torch.cat(ys)}

        d = self._cached(key, compute)
        return d["emb"].to(self.device), d["labels"].to(self.device)

    def head(self, backbone: str, task: str, kind: str = "linear") -> torch.nn.Module:
        """The ``kind`` head of ``task`` on the frozen ``backbone`` (trained once, cached)."""
        if kind not in HEAD_KINDS:
            raise KeyError(f"unknown head kind {kind!r}; expected one of: {', '.join(HEAD_KINDS)}")
        t = self.task(task)
        key = (f"head_{kind}_{self._bb_key(backbone)}_{task.replace('/', '_').replace(':', '_')}_"
               f"{self.profile.digest('head_train')}_{data_mod.content_digest(t.train)}")

        def compute():
            e, y = self.embeddings(backbone, task, "train")
            h, losses = train_head(e, y, kind, t.num_classes, self.profile.head_train, self.seed)
            return {"head": h.cpu(), "losses": losses}

        return self._cached(key, compute)["head"].to(self.device)

    def accuracy_table(self) -> pd.DataFrame:
        """``backbone, task, head, split, accuracy, n_images, seed`` for every backbone and head."""
        rows = []
        test = data_mod.upstream_test(self.profile, self.data_dir)
        for b in self.backbone_names:
            bb = self.backbone(b)
            if bb.num_classes == len(test.classes):
                acc = bbs.evaluate_accuracy(bb, test, self.profile.eval.batch_size, self.device)
                rows.append(dict(backbone=b, task=self.profile.upstream, head="backbone",
                                 split="test", accuracy=acc, n_images=len(test), seed=self.seed))
            for t in self.profile.tasks:
                for kind in HEAD_KINDS:
                    h = self.head(b, t, kind)
                    for split in ("train", "test"):
                        e, y = self.embeddings(b, t, split)
                        rows.append(dict(backbone=b, task=t, head=kind, split=split,
                                         accuracy=head_accuracy(h, e, y), n_images=len(y),
                                         seed=self.seed))
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ TVE
    def tve_radius(self, backbone: str) -> int:
        from .masking import default_radius

        return self.profile.tve.radius or default_radius(self.backbone(backbone).grid)

    def tve_checkpoint(self, backbone: str, cfg=None) -> Path:
        cfg = cfg or self.profile.tve
        import hashlib

        key = hashlib.sha1(repr((cfg, self._bb_key(backbone))).encode()).hexdigest()[:10]
        return self.ckpt_dir / f"tve_{backbone}_{key}.pt"

    def explainer(self, backbone: str, cfg=None, train_subset: float = 1.0, **transfer) -> TVE:
        """The pre-trained TVE explainer of ``backbone`` (pre-trained on upstream once, cached).

        ``cfg`` overrides the profile's TVEConfig (ablations); ``train_subset`` uses that
        fraction of the upstream images; ``transfer`` sets λ⁺, λ⁻, pool, last_layer_only.
        """
        from . import tve

        cfg = cfg or self.profile.tve
        if train_subset < 1.0:
            import dataclasses

            cfg = dataclasses.replace(cfg, n_images=int(train_subset * min(cfg.n_images,
                                                                            len(self.upstream[0]))))
        bb = self.backbone(backbone)
        ckpt = self.tve_checkpoint(backbone, cfg)
        radius = cfg.radius or self.tve_radius(backbone)
        if ckpt.exists():
            try:
                model, s = tve.load_explainer(ckpt, bb, cfg)
                return tve.TVE(bb, model, s["radius"], **transfer)
            except CorruptCheckpoint as e:
                print(f"warning: {e}; pre-training again")
                ckpt.unlink()
        torch.manual_seed(self.seed)
        model = tve.build_explainer(bb, cfg)
        tve.pretrain(model, bb, self.pretrain_set(cfg), self.upstream[1], cfg, ckpt, self.seed, radius,
                     store_dir=self.ckpt_dir)
        return tve.TVE(bb, model, radius, **transfer)

    def pretrain_set(self, cfg=None):
        """The upstream training images TVE pre-trains on, augmented as ``cfg.augment`` says."""
        from .augment import augmented_upstream

        cfg = cfg or self.profile.tve
        key = (cfg.augment, cfg.augment_frac)
        if key not in self._pretrain_sets:
            self._pretrain_sets[key] = augmented_upstream(self.upstream[0], cfg.augment, cfg.augment_frac,
                                                          self.seed)
        return self._pretrain_sets[key]

    def tve_history(self, backbone: str, cfg=None) -> list[dict]:
        """Pre-training rows of the cached explainer of ``backbone``."""
        ckpt = self.tve_checkpoint(backbone, cfg)
        if not ckpt.exists():
            self.explainer(backbone, cfg)
        return load_torch(ckpt)["history"]
