"""Loader throughput (notebook 04): how many images per second the paper loader delivers, beside how
many one TVE pre-training step consumes at paper size, so a user can read how many workers a device needs.

`loader_rows`: images/s of reading generated ImageNet-like JPEGs (`tve_lib.synthetic`) through the
paper path (`tve_lib.loader`: decode, resize, centre crop at 224 px) with 0, 1, 2, ... workers, over one
whole pass (starting the workers included; ``first_batch_seconds`` says how much of it was the wait for the
first batch). `step_row`: the images/s of one
online TVE pre-training step of the paper profile (random weights, K = 1) on this device.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from ..config import TVEConfig, get_profile
from ..explainers.tve_model import build_explainer
from ..explainers.tve_train import step_seconds
from ..imagefolder import scan_imagefolder
from ..imagesets import FolderImageSet, TensorImageSet
from ..loader import load_batches
from ..memory import peak_memory
from ..precision import dtype_name
from ..seeds import seeded
from ..synthetic import write_jpeg_folder
from .throughput import paper_backbone, random_heads

LOADER_COLUMNS = ["device", "threads", "workers", "batch_size", "img_size", "n_images", "images_per_s", "seconds",
                  "first_batch_seconds", "source"]


def loader_rows(folder: str | Path, n_images: int, workers: Sequence[int], batch_size: int = 32,
                img_size: int = 224, seed: int = 0, repeats: int = 1) -> pd.DataFrame:
    """Images/s of reading ``n_images`` generated JPEGs under ``folder`` with each worker count
    (the best of ``repeats`` passes), one row per count."""
    n_classes = 4
    root = write_jpeg_folder(folder, -(-n_images // n_classes), [f"c{i}" for i in range(n_classes)], seed)
    ds = FolderImageSet("loader_bench", scan_imagefolder(root, check=False), img_size)
    idx = torch.arange(min(n_images, len(ds)))
    batches = list(idx.split(batch_size))
    rows = []
    for w in workers:
        best, first = float("inf"), float("nan")
        for _ in range(repeats):
            t0, n, t_first = time.perf_counter(), 0, None
            for x, _, _ in load_batches(ds, batches, workers=w):
                n += len(x)
                t_first = t_first if t_first is not None else time.perf_counter() - t0
            secs = time.perf_counter() - t0
            if secs < best:
                best, first = secs, t_first
        rows.append(dict(device="cpu", threads=torch.get_num_threads(), workers=w, batch_size=batch_size,
                         img_size=img_size, n_images=n, images_per_s=n / best, seconds=best, first_batch_seconds=first,
                         source="ImageFolder of generated JPEGs (decode + resize + centre crop)"))
    return pd.DataFrame(rows, columns=LOADER_COLUMNS)


def step_row(device: str | torch.device, backbone: str = "vit", batch_size: int = 8, steps: int = 1,
             cfg: TVEConfig | None = None, seed: int = 0, precision: str | None = None) -> dict:
    """The images/s one TVE pre-training step of the paper profile consumes (random weights, random
    images: pixel values do not change the cost), median over ``steps`` after a warm-up step.
    ``precision``: the running profile's (None: the paper profile's), as in `paper_backbone`."""
    paper = get_profile("paper")
    cfg = dataclasses.replace(cfg or paper.tve, batch_size=batch_size)
    bb = paper_backbone(backbone, device, precision).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    imgs = TensorImageSet("random", torch.rand(batch_size, 3, bb.img_size, bb.img_size, generator=gen),
                          torch.zeros(batch_size, dtype=torch.long), ["x"])
    with seeded(seed), peak_memory(device) as mem:  # the warm-up step included: it allocates the optimiser's state
        secs = sorted(step_seconds(build_explainer(bb, cfg), bb, imgs, cfg, steps, seed))
    s = secs[len(secs) // 2]
    return dict(device=torch.device(device).type, threads=torch.get_num_threads(), backbone=backbone,
                batch_size=batch_size, sampler=cfg.sampler, windows_per_image=cfg.windows_per_image,
                arch=cfg.arch, seconds_per_step=s, images_per_s=batch_size / s,
                # the dtype of the backbone's passes (the step's targets and tokens), and of the explainer's own
                # forward and backward (`Backbone.training_autocast`)
                dtype=dtype_name(bb.compute_dtype), train_dtype=dtype_name(bb.train_dtype or torch.float32), **mem)


def fidelity_batch_row(device: str | torch.device, backbone: str = "vit", batch_size: int = 32, n_classes: int = 10,
                       seed: int = 0, precision: str | None = None) -> dict:
    """Seconds and peak memory of one fidelity batch at paper size: ``batch_size`` images with a random half
    of their players removed, through the backbone (random weights) and a linear head, as every perturbation
    metric evaluates them (no gradients). ``precision``: as in `step_row`."""
    bb = paper_backbone(backbone, device, precision).eval().requires_grad_(False)
    head = random_heads(bb.embed_dim, [n_classes], device, seed)[0]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, bb.img_size, bb.img_size, generator=gen).to(device)
    keep = (torch.rand(batch_size, bb.n_players, generator=gen) < 0.5).to(device)
    with torch.inference_mode():
        head(bb.embed(bb.mask(x[:1], keep[:1])))  # warm-up: first-call allocations are not the batch's
        with peak_memory(device) as mem:
            t0 = time.perf_counter()
            head(bb.embed(bb.mask(x, keep))).float().cpu()
            secs = time.perf_counter() - t0
    return dict(device=torch.device(device).type, threads=torch.get_num_threads(), backbone=backbone,
                batch_size=batch_size, seconds=secs, images_per_s=batch_size / secs,
                dtype=dtype_name(bb.compute_dtype), **mem)
