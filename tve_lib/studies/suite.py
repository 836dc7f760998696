"""`Suite`: one object per notebook run that owns the profile, paths, device and caches.

Every notebook starts with ``suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR,
RESULTS_DIR)``; models, embeddings and heads are computed once, cached under
``results/<profile>/checkpoints`` and reused by every later notebook.
"""

from __future__ import annotations

import inspect
import numbers
import random
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .. import backbones as bbs
from .. import data as data_mod
from ..backbone_training import evaluate_accuracy, obtain_backbone
from ..cache import ItemCache, cached, digest, file_safe, load_or_train
from ..config import Profile, env_overrides, get_profile
from ..explainers import explainer_class, make_explainer
from ..explainers.base import Explainer
from ..explainers.tve import check_transfer_settings
from ..explainers.tve_model import TAPPED_ARCHS
from ..heads import HEAD_KINDS, head_accuracy, train_head
from ..io import load_torch, provenance, write_csv, write_json
from ..masking import window_radius
from ..precision import amp_dtype_for, dtype_name
from ..preprocess import Preprocess, backbone_preprocess
from ..seeds import seeded

if TYPE_CHECKING:
    from ..explainers.tve import TVE


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
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        d = None
    if d is None or d.type not in ("cpu", "cuda", "mps"):
        raise RuntimeError(f"DEVICE={device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:<i>' or 'mps'")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"DEVICE={device!r} but CUDA is not available; use 'cpu' or 'auto'")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"DEVICE={device!r} but MPS is not available; use 'cpu' or 'auto'")
    return d


class Suite:
    """Profile, device, results folder and the cached models of one run."""

    def __init__(self, profile: str | Profile = "cpu", seed: int = 0, device: str = "auto",
                 data_dir: str | None = None, weights_dir: str | None = None,
                 results_dir: str = "results", overrides: dict[str, Any] | None = None):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be a whole number (got {seed!r}, a {type(seed).__name__}); e.g. "
                            "Suite('cpu', seed=1), or SEED = 1 in a notebook's parameters cell")
        seed = int(seed)  # a numpy integer too, so provenance and cache names read the same
        self.profile = profile if isinstance(profile, Profile) else get_profile(profile, {**env_overrides(),
                                                                                      **(overrides or {})})
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
        self._tasks: dict[str | tuple[str, str], data_mod.Task] = {}
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
        """(train, val) of the upstream set as the profile decodes it (`upstream_for`: as a backbone
        does); never used for downstream evaluation."""
        return data_mod.load_upstream(self.profile, self.data_dir)

    def upstream_for(self, backbone: str | None) -> tuple[data_mod.ImageSet, data_mod.ImageSet]:
        """`upstream` decoded with ``backbone``'s own transform (`preprocess`)."""
        p = self.preprocess(backbone)
        return self.upstream if p is None else tuple(ds.with_preprocess(p) for ds in self.upstream)

    def preprocess(self, backbone: str | None) -> Preprocess | None:
        """How file-backed sets are decoded for ``backbone``: its timm data config when the profile says
        ``preprocess="backbone"`` (paper), else None (the profile's plain transform)."""
        mode = self.profile.preprocess
        if mode not in ("plain", "backbone"):
            raise ValueError(f"profile {self.profile.name!r}: preprocess={mode!r}; expected 'plain' or 'backbone'")
        if mode == "plain" or backbone is None:
            return None
        return backbone_preprocess(self.profile.backbone(backbone).timm_name, self.profile.img_size)

    def task(self, name: str, backbone: str | None = None) -> data_mod.Task:
        """The downstream task ``name`` (a profile task, a paper task or ``folder:/path``), loaded once;
        with ``backbone``, decoded as that backbone's data config says (`preprocess`; the same task
        where the profile decodes every backbone alike).

        A folder task is validated up front; its unreadable files are skipped, listed in a warning and
        in ``results/<profile>/data/skipped_<task>.csv`` (file, reason).
        """
        if name not in self._tasks:
            t = data_mod.load_task(name, self.profile, self.data_dir, cache_dir=self.ckpt_dir)
            if t.skipped:
                write_csv(pd.DataFrame(t.skipped), self.path("data", f"skipped_{file_safe(t.name)}.csv"))
            self._tasks[name] = t
        p = self.preprocess(backbone)
        if p is None:
            return self._tasks[name]
        if (name, p.key) not in self._tasks:  # one decoding per transform, shared by the backbones that use it
            self._tasks[(name, p.key)] = self._tasks[name].with_preprocess(p)
        return self._tasks[(name, p.key)]

    @property
    def backbone_names(self) -> list[str]:
        return [b.name for b in self.profile.backbones]

    def pairs(self, backbones: list[str] | None = None, tasks: list[str] | None = None) -> list[tuple[str, str]]:
        """The ``(backbone, task)`` settings the evaluation notebooks run (default: the profile's): every
        pair, or with ``profile.pairs == "diagonal"`` backbone i with task i (cycling the shorter list)."""
        bs, ts = list(backbones or self.backbone_names), list(tasks or self.profile.tasks)
        if self.profile.pairs == "all":
            return [(b, t) for b in bs for t in ts]
        if self.profile.pairs == "diagonal":
            return [(bs[i % len(bs)], ts[i % len(ts)]) for i in range(max(len(bs), len(ts)))]
        raise ValueError(f"profile {self.profile.name!r}: pairs={self.profile.pairs!r}; expected 'all' or 'diagonal'")

    def tasks_of(self, backbone: str, tasks: list[str] | None = None) -> list[str]:
        """The tasks `pairs` runs with ``backbone``."""
        return [t for b, t in self.pairs(None, tasks) if b == backbone]

    # ------------------------------------------------------------------ models
    def backbone(self, name: str) -> bbs.Backbone:
        """The frozen backbone ``name`` (trained on upstream once in cpu/smoke, then cached)."""
        if name not in self._backbones:
            self.profile.backbone(name)  # clear error on unknown names before any work
            spec = self.profile.backbone(name)
            up = None
            if not spec.pretrained:
                up = self.upstream_for(name)[0]
            bb, hist = obtain_backbone(self.profile, name, self.ckpt_dir, self.device, self.seed,
                                       self.weights_dir, up,
                                       num_classes=len(up.classes) if up is not None else 1000)
            bb.window_cache = ItemCache(self.ckpt_dir / "windows")  # exact window rows shared by the notebooks
            self._backbones[name], self._histories[name] = bb, hist
        return self._backbones[name]

    def backbone_history(self, name: str) -> list[dict]:
        self.backbone(name)
        return self._histories[name]

    def _cached(self, key: str, fn):
        return cached(self.ckpt_dir / f"{key}.pt", fn, what=key.split("_")[0])

    def _bb_key(self, name: str) -> str:
        # embeddings, heads and explainers computed under autocast are other numbers (fp32 keys unchanged)
        amp = amp_dtype_for(self.profile.precision, self.device)
        # training steps under that autocast too (`Backbone.training_autocast`): the suite's own backbones on any
        # device, the explainers on a CPU (on a GPU they always were), so their keys differ from earlier ones
        trained = not self.profile.backbone(name).pretrained or self.device.type == "cpu"
        return (f"{name}_{self.profile.digest('img_size', 'backbones', 'backbone_train')}_s{self.seed}"
                + ("" if amp is None else f"_{dtype_name(amp)}" + ("_train" if trained else "")))

    def embeddings(self, backbone: str, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[N, D]`` and labels of a task split (cached)."""
        bb = self.backbone(backbone)
        ds = getattr(self.task(task, backbone), split)
        key = (f"emb_{self._bb_key(backbone)}_{file_safe(self.task(task).name)}_{split}_"
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
        t = self.task(task, backbone)
        key = (f"head_{kind}_{self._bb_key(backbone)}_{file_safe(t.name)}_"
               f"{self.profile.digest('head_train')}_{data_mod.content_digest(t.train)}")

        def compute():
            e, y = self.embeddings(backbone, task, "train")
            h, losses = train_head(e, y, kind, t.num_classes, self.profile.head_train, self.seed)
            return {"head": h.cpu(), "losses": losses}

        return self._cached(key, compute)["head"].to(self.device)

    def accuracy_table(self) -> pd.DataFrame:
        """``backbone, task, head, split, accuracy, n_images, seed`` for every backbone and head, on the
        tasks `pairs` runs with it (every task unless the profile pairs the diagonal)."""
        rows = []
        test = data_mod.upstream_test(self.profile, self.data_dir)
        for b in self.backbone_names:
            bb = self.backbone(b)
            if bb.num_classes == len(test.classes):
                p = self.preprocess(b)
                acc = evaluate_accuracy(bb, test if p is None else test.with_preprocess(p),
                                        self.profile.eval.batch_size, self.device)
                rows.append(dict(backbone=b, task=self.profile.upstream, head="backbone",
                                 split="test", accuracy=acc, n_images=len(test), seed=self.seed))
            for t in self.tasks_of(b):
                for kind in HEAD_KINDS:
                    h = self.head(b, t, kind)
                    for split in ("train", "test"):
                        e, y = self.embeddings(b, t, split)
                        rows.append(dict(backbone=b, task=t, head=kind, split=split,
                                         accuracy=head_accuracy(h, e, y), n_images=len(y),
                                         seed=self.seed))
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ TVE
    def tve_radius(self, backbone: str, cfg=None) -> int:
        """The window radius of ``cfg`` (default: the profile's TVEConfig) on ``backbone``'s player grid."""
        return window_radius((cfg or self.profile.tve).radius, self.backbone(backbone).grid)

    def tve_checkpoint(self, backbone: str, cfg=None, trained_on: str = "", continues=None) -> Path:
        """Where the explainer of ``backbone`` and ``cfg`` is cached; ``trained_on`` names another pre-training set
        than the upstream one (`tve_lib.studies.in_domain`), kept apart from it; ``continues``, the TVEConfig of the
        explainer this one trains further (`continued_explainer`)."""
        cfg = cfg or self.profile.tve
        tokens = self.backbone(backbone).token_key(cfg.tap_layers) if cfg.arch in TAPPED_ARCHS else {}
        parts = (cfg, self._bb_key(backbone), *tokens.items())  # no tokens item wherever the key predates the rule
        if trained_on:  # only then: the upstream explainers keep their keys
            parts += (("trained_on", trained_on),)
        if continues is not None:
            parts += (("continues", self.tve_checkpoint(backbone, continues).name),)
        tag = (f"in_{file_safe(trained_on)}_" if trained_on else "") + ("cont_" if continues is not None else "")
        return self.ckpt_dir / f"tve_{backbone}_{tag}{digest(*parts)}.pt"

    def explainer(self, backbone: str, cfg=None, train_subset: float = 1.0, **transfer) -> TVE:
        """The pre-trained TVE explainer of ``backbone`` (pre-trained on upstream once, cached).

        ``cfg`` overrides the profile's TVEConfig (ablations); ``train_subset`` uses that
        fraction of the upstream images; ``transfer`` sets λ⁺, λ⁻, pool, last_layer_only.
        """
        check_transfer_settings(transfer)  # before pre-training, which a typo would otherwise wait for
        cfg = cfg or self.profile.tve
        if train_subset < 1.0:
            import dataclasses

            cfg = dataclasses.replace(cfg, n_images=int(train_subset * min(cfg.n_images,
                                                                            len(self.upstream[0]))))
        return self.pretrained_tve(backbone, cfg, self.tve_checkpoint(backbone, cfg),
                                   self.tve_radius(backbone, cfg), transfer)

    def continued_explainer(self, backbone: str, cfg, base=None) -> TVE:
        """The explainer of ``base`` (default: the profile's) trained further with ``cfg``: its images and epochs,
        from the base's weights, on a fresh warm-up and cosine schedule. Its history's ``seconds`` count the base's
        training too (and the targets of ``cfg``'s images once), so a continued budget compares on total compute."""
        import dataclasses

        base = base or self.profile.tve
        if dataclasses.replace(cfg, n_images=base.n_images, epochs=base.epochs) != base:
            raise ValueError("a continued budget may change only n_images and epochs of the explainer it continues")
        self.explainer(backbone, base)  # trained first when absent
        init = load_torch(self.tve_checkpoint(backbone, base))
        return self.pretrained_tve(backbone, cfg, self.tve_checkpoint(backbone, cfg, continues=base), init["radius"],
                                   {}, init=init)

    def pretrained_tve(self, backbone: str, cfg, ckpt: Path, radius: int, transfer: dict[str, Any],
                       progress: bool = True, train_set: data_mod.ImageSet | None = None,
                       init: dict | None = None) -> TVE:
        """The TVE explainer pre-trained with ``cfg`` whose checkpoint is ``ckpt`` (trained when absent), on
        ``train_set`` when given (a checkpoint of its own, `tve_checkpoint`'s ``trained_on``), else upstream;
        from the weights of the checkpoint ``init`` when given (`continued_explainer`), else from the start."""
        from ..explainers import tve

        bb = self.backbone(backbone)

        def restore(s: dict) -> TVE:
            return make_explainer("tve", bb, model=tve.restore_explainer(s, bb, cfg), radius=s["radius"], **transfer)

        def train() -> TVE:
            with seeded(self.seed):
                model = tve.build_explainer(bb, cfg)
            spent = 0.0
            if init is not None:
                model.load_state_dict(init["model"])
                last = init["history"][-1]  # its targets are counted again with this budget's images
                spent = last["seconds"] - last.get("target_seconds", 0.0)
            # pretrain writes ckpt itself (atomically, resuming from its per-epoch file)
            train_images = self.pretrain_set(cfg, backbone) if train_set is None else train_set
            tve.pretrain(model, bb, train_images, self.upstream_for(backbone)[1], cfg, ckpt,
                         self.seed, radius,
                         progress=progress, store_dir=self.ckpt_dir, init_seconds=spent)
            return make_explainer("tve", bb, model=model, radius=radius, **transfer)

        return load_or_train(ckpt, restore, train, "TVE explainer")

    def make_explainer(self, name: str, backbone: str, task: str | None = None, head: str = "linear",
                       **kw: Any) -> Explainer:
        """Explainer ``name`` on backbone ``backbone``, configured by the profile and trained if it is.

        Untrained methods get the profile's settings where their constructor takes them (``seed``,
        ``radius`` = TVE's window radius, ``n_steps``, the masked-batch size); ``kw`` overrides.
        ``tve``: the backbone's pre-trained explainer (`explainer`); ``fastshap``: the amortised
        explainer of ``task``'s ``head`` kind (`tve_lib.studies.fastshap`), trained once and cached.
        """
        cls = explainer_class(name)
        if cls.training == "pretrain":
            return self.explainer(backbone, **kw)
        if cls.training == "task":
            if name != "fastshap":
                raise ValueError(f"{name} is trained by its own study (notebooks 05/06), not by the suite")
            from .fastshap import obtain_amortized

            if task is None:
                raise TypeError("fastshap needs task= (and head=, the head kind it explains)")
            if set(kw) - {"eval_images"}:
                raise TypeError(f"fastshap takes task=, head=, eval_images=; got {sorted(set(kw) - {'eval_images'})}")
            return obtain_amortized(self, backbone, task, (head,), kw.get("eval_images"))[head]
        params = inspect.signature(cls.__init__).parameters
        ev = self.profile.eval
        # batch_size: masked copies per backbone call, for the sampling methods' coalitions and occlusion's windows
        defaults = {"seed": lambda: self.seed, "radius": lambda: self.tve_radius(backbone),
                    "n_steps": lambda: ev.ig_steps, "internal_batch_size": lambda: ev.masked_batch_size,
                    "batch_size": lambda: ev.masked_batch_size}
        for k, value in defaults.items():
            if k in params and k not in kw:
                kw[k] = value()
        return make_explainer(name, self.backbone(backbone), **kw)

    def pretrain_set(self, cfg=None, backbone: str | None = None):
        """The upstream training images TVE pre-trains on (decoded for ``backbone``, `upstream_for`),
        augmented as ``cfg.augment`` says."""
        from ..augment import augmented_upstream

        cfg = cfg or self.profile.tve
        p = self.preprocess(backbone)
        key = (cfg.augment, cfg.augment_frac, None if p is None else p.key)
        if key not in self._pretrain_sets:
            self._pretrain_sets[key] = augmented_upstream(self.upstream_for(backbone)[0], cfg.augment,
                                                          cfg.augment_frac, self.seed)
        return self._pretrain_sets[key]

    def tve_history(self, backbone: str, cfg=None, continues=None) -> list[dict]:
        """Pre-training rows of the cached explainer of ``backbone`` (``continues``: see `continued_explainer`)."""
        ckpt = self.tve_checkpoint(backbone, cfg, continues=continues)
        if not ckpt.exists():
            self.explainer(backbone, cfg) if continues is None else self.continued_explainer(backbone, cfg, continues)
        return load_torch(ckpt)["history"]
