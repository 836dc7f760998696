"""Dense meta-attribution targets: computed once per image, stored, reused over many epochs.

The backbone is frozen, so ``g(x ⊙ W_i)`` and ``g(x ⊙ (1 − W_i))`` for every player ``i`` are a
fixed function of the image. `TargetStore` keeps them (and ``g(x)``, and for the tapped explainer
the backbone's player tokens) for the first images of a seeded order of the upstream set, in
shards written atomically under ``results/<profile>/checkpoints/``. The folder name is a digest of
the backbone's weights, the radius, the upstream set's content and the order's seed; every shard
also carries its image ids, checked on load. An interrupted build resumes at the first missing
shard, and a store built for N images serves any n <= N (a prefix of the same order).

Two batch sources feed the one training loop of `tve.pretrain`: `DenseSource` (every window of
every image, from the store) and `OnlineSource` (K windows drawn per image per step and computed
on the fly: the official sampler, for upstream sets too large to store, such as ImageNet).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..backbones import Backbone
from ..cache import UNUSABLE
from ..config import TVEConfig
from ..imagesets import ImageSet, content_digest
from ..io import load_torch, save_torch, write_json
from ..loader import load_batches
from ..masking import MASKED_BATCH, window_radius, windows
from ..precision import dtype_name


@torch.no_grad()
def window_targets(backbone: Backbone, x: torch.Tensor, centres: torch.Tensor, radius: int,
                   chunk: int = MASKED_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """``g(x ⊙ W_c)`` and ``g(x ⊙ (1 − W_c))`` for centres ``[B, K]``: two ``[B, K, D]`` tensors."""
    win = windows(backbone.grid, window_radius(radius, backbone.grid), x.device)[centres]  # [B, K, P]
    b, k = centres.shape
    keep = backbone.mask(x, win).flatten(0, 1)  # [B*K, 3, S, S]
    rem = backbone.mask(x, ~win).flatten(0, 1)
    both = torch.cat([keep, rem])
    e = torch.cat([backbone.embed(both[s:s + chunk]) for s in range(0, len(both), chunk)])
    return e[: b * k].view(b, k, -1), e[b * k:].view(b, k, -1)


@torch.no_grad()
def all_window_embeddings(backbone: Backbone, x: torch.Tensor, radius: int,
                          chunk: int = MASKED_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``Φ``: window-kept and window-removed embeddings for every player, ``[B, G², D]`` x 2.

    2·G² backbone passes per image; shared by every head, so one call serves all heads.
    """
    p = backbone.n_players
    centres = torch.arange(p, device=x.device).expand(len(x), p)
    return window_targets(backbone, x, centres, radius, chunk)


def exact_window_embeddings(backbone: Backbone, x: torch.Tensor, radius: int,
                            chunk: int = MASKED_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """`all_window_embeddings` of the images a study explains, per image from the backbone's
    ``window_cache`` (an `ItemCache` the Suite attaches; None: computed every time).

    The exact window quantity is the reference of several notebooks on the same images (02's walkthrough
    and transfer rows, 03b's probe and ablation reference); at paper size each image costs 2·G² = 392
    ViT-B passes. Window occlusion as a compared method computes its own: its seconds are measured.
    The key holds the backbone's weights and removal operator (`backbone_digest`), the radius and the
    dtype the passes run in, so a row is reused only where it would be recomputed
    bit for bit. A reference, so fp32 whatever the profile's precision (`Backbone.full_precision`).
    Pre-training's targets keep their own store (`TargetStore`).
    """
    radius = window_radius(radius, backbone.grid)  # before the key: None and the default are one row
    cache = getattr(backbone, "window_cache", None)
    with backbone.full_precision():
        if cache is None:
            return all_window_embeddings(backbone, x, radius, chunk)
        key = (f"windows_{backbone_digest(backbone)}_r{radius}_{dtype_name(backbone.compute_dtype)}"
               f"_{backbone.compile_backend or 'eager'}")
        return cache.rows(key, x, lambda xs: all_window_embeddings(backbone, xs, radius, chunk))


DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def backbone_digest(bb: Backbone) -> str:
    """A short hash of the backbone's weights (and its normalisation and removal value)."""
    parts = (bb.name, bb.img_size, bb.grid, bb.removal_value)
    if bb.operator is not None:  # targets built under another removal operator are other targets
        parts += (bb.operator.key,)
    h = hashlib.sha1(repr(parts).encode())
    for k, v in sorted(bb.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def upstream_order(train: ImageSet, seed: int) -> torch.Tensor:
    """The seeded order of the upstream images; pre-training uses its first ``n_images``."""
    return torch.randperm(len(train), generator=torch.Generator().manual_seed(20_011 + seed))


class TargetStore:
    """Per-image tensors for a prefix of ``ids``, in shards of ``shard_size`` images."""

    def __init__(self, root: Path, kind: str, key: dict, ids: torch.Tensor, shard_size: int = 500):
        self.key, self.ids, self.shard_size = key, ids, shard_size
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.dir = Path(root) / f"{kind}_{key.get('backbone', '')}_{digest}"

    def _shard(self, i: int) -> Path:
        return self.dir / f"shard_{i:05d}.pt"

    def _read(self, i: int) -> dict | None:
        p = self._shard(i)
        if not p.exists():
            return None
        lo, hi = i * self.shard_size, min(len(self.ids), (i + 1) * self.shard_size)
        try:
            s = load_torch(p)
            if not torch.equal(s["ids"], self.ids[lo:hi]):
                raise KeyError("image ids differ")
            return s
        except UNUSABLE as e:
            print(f"warning: target shard {p} is unusable ({e}); computing it again")
            p.unlink()
            return None

    def build(self, n: int, compute, desc: str = "targets", progress: bool = True) -> float:
        """Make sure the first ``n`` images are stored; ``compute(ids) -> dict of [len(ids), ...]``.

        Returns the seconds spent computing (0 when everything was stored already).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.key, self.dir / "key.json")
        shards = range(math.ceil(min(n, len(self.ids)) / self.shard_size))
        todo = [i for i in shards if not self._shard(i).exists() or self._read(i) is None]
        t0 = time.time()
        for i in tqdm(todo, desc=desc, disable=not progress or not todo, leave=False):
            ids = self.ids[i * self.shard_size:(i + 1) * self.shard_size]
            t1 = time.time()
            out = compute(ids)
            # the compute time travels with the shard, so a reused store still reports what it cost
            save_torch({"ids": ids.clone(), "seconds": time.time() - t1,
                        **{k: v.contiguous() for k, v in out.items()}}, self._shard(i))
        return time.time() - t0 if todo else 0.0

    def read(self, n: int) -> tuple[dict[str, torch.Tensor], float]:
        """The stored tensors of the first ``n`` images (each ``[n, ...]``), read once, and the seconds
        it took to compute them (pro rata per shard)."""
        parts, cost = [], 0.0
        for i in range(math.ceil(n / self.shard_size)):
            s = self._read(i)
            if s is None:
                raise FileNotFoundError(f"target shard {self._shard(i)} is missing; build the store first")
            m = len(s["ids"])
            cost += float(s.get("seconds", 0.0)) * min(m, n - i * self.shard_size) / m
            parts.append(s)
        return {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0] if k != "seconds"}, cost

    def load(self, n: int) -> dict[str, torch.Tensor]:
        """The stored tensors of the first ``n`` images (each ``[n, ...]``)."""
        return self.read(n)[0]

    def cost(self, n: int) -> float:
        """Seconds it took to compute the targets of the first ``n`` images (pro rata per shard)."""
        return self.read(n)[1]


def _store_key(bb: Backbone, train: ImageSet, seed: int, **extra) -> dict:
    # targets computed under autocast are other numbers than fp32 ones: the autocast dtype is part of the
    # key, and only then (an fp32 store keeps the key it always had)
    amp = {} if bb.amp_dtype is None else {"amp": dtype_name(bb.amp_dtype)}
    return {"backbone": bb.name, "weights": backbone_digest(bb), "upstream": train.name,
            "content": content_digest(train), "n_upstream": len(train), "order_seed": seed, **amp, **extra}


def window_store(bb: Backbone, train: ImageSet, root: Path, seed: int, radius: int, dtype: str,
                 chunk: int = MASKED_BATCH) -> tuple[TargetStore, callable]:
    """The store of ``keep, remove [P, D]`` and ``base [D]`` per image, with its compute function."""
    store = TargetStore(root, "targets", _store_key(bb, train, seed, radius=radius, dtype=dtype,
                                                    players=bb.n_players, dim=bb.embed_dim),
                        upstream_order(train, seed))
    dev, dt = bb.mean.device, DTYPES[dtype]
    per_call = max(1, chunk // (2 * bb.n_players))

    def compute(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        keep, rem, xs = [], [], []
        for raw, _, _ in load_batches(train, ids.split(per_call)):  # file-backed: decoded by loader workers
            x = bb.normalize(raw.to(dev))
            k, r = all_window_embeddings(bb, x, radius, chunk)
            keep.append(k.to(dt).cpu())
            rem.append(r.to(dt).cpu())
            xs.append(x)
        with torch.no_grad():  # g(x) in batches of `chunk` images, not one call per `per_call` images
            base = bb.embed_batched(torch.cat(xs), chunk).to(dt).cpu()
        return {"keep": torch.cat(keep), "remove": torch.cat(rem), "base": base}

    return store, compute


def token_store(bb: Backbone, train: ImageSet, root: Path, seed: int, cfg: TVEConfig, batch: int = 256
                ) -> tuple[TargetStore, Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """The store of the tapped explainer's inputs ``[P, C]`` (`tve_model.tapped_inputs`)."""
    from .tve_model import tapped_inputs

    key = _store_key(bb, train, seed, tap_layers=cfg.tap_layers, tap_pixels=cfg.tap_pixels, dtype=cfg.target_dtype,
                     **bb.token_key(cfg.tap_layers))
    store = TargetStore(root, "tokens", key, upstream_order(train, seed))
    dev, dt = bb.mean.device, DTYPES[cfg.target_dtype]

    def compute(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        out = []
        for raw, _, _ in load_batches(train, ids.split(batch)):
            out.append(tapped_inputs(bb, bb.normalize(raw.to(dev)), cfg)[0].to(dt).cpu())
        return {"tokens": torch.cat(out)}

    return store, compute
