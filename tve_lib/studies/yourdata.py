"""Bring your own dataset (notebook 09): write a small ImageFolder from held-out data, so the walkthrough
always runs, and the sizes it uses.

A user points ``TASK = "folder:/path/to/imagefolder"`` at their images (one sub-folder per class, or
``train/`` and ``test/`` sub-folders with one sub-folder per class each; `tve_lib.data.load_task`
reads it). When ``TASK`` is empty, `demo_imagefolder` writes such a folder itself: the first
``n_classes`` classes of a profile task the explainer never saw during pre-training (`demo_source`:
the profile's less-related domain, digits in cpu/smoke), train images from that task's train split
and test images from its test split, as PNG files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Profile
from ..imagesets import ImageSet

N_CLASSES = 3  # classes of the demo folder: a new, smaller label space than its source task


def demo_source(profile: Profile) -> str:
    """The task the demo folder is cut from: the profile's less-related domain, else its last task."""
    unrelated = [t for t in profile.xvec.unrelated_tasks if t in profile.tasks]
    return unrelated[0] if unrelated else profile.tasks[-1]


def demo_sizes(profile: Profile, n_classes: int = N_CLASSES) -> tuple[int, int]:
    """Images per class ``(train, test)``: ``n_fidelity`` to train the head, and enough test images per class
    for ``n_fidelity`` evaluation images in all (capped later by what the source has)."""
    n = profile.eval.n_fidelity
    return n, math.ceil(n / n_classes)


def write_imagefolder(images: torch.Tensor, labels: torch.Tensor, classes: list[str], root: str | Path) -> Path:
    """Write raw images ``[N, C, S, S]`` in [0, 1] as ``root/<class>/<i>.png`` (grayscale when C = 1)."""
    from PIL import Image

    root = Path(root)
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    # the files' time is a function of their content: a folder's fingerprint reads modification times, so the
    # same images written by two runs give the same task name (and the same CSVs), other images another one
    h = hashlib.sha1(arr.tobytes() + labels.cpu().numpy().astype(np.int64).tobytes() + repr(classes).encode())
    t_ns = (1_000_000_000 + int(h.hexdigest()[:8], 16) % 700_000_000) * 10**9
    for i, (img, y) in enumerate(zip(arr, labels.tolist())):
        d = root / _safe(classes[y])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)).save(d / f"{i:05d}.png")
        os.utime(d / f"{i:05d}.png", ns=(t_ns, t_ns))
    return root


def _safe(name: str) -> str:
    """A class name usable as a folder name (``/`` would nest folders)."""
    return name.replace("/", "-").replace("\\", "-") or "_"


def _pick(ds: ImageSet, classes: list[int], per_class: int, seed: int) -> torch.Tensor:
    """Up to ``per_class`` indices of each of ``classes``, drawn with ``seed``, in class order."""
    g = torch.Generator().manual_seed(seed)
    labels = ds.labels
    out = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=g)[:per_class]].sort().values)
    return torch.cat(out)


def demo_imagefolder(suite: Any, root: str | Path, source: str | None = None, n_classes: int = N_CLASSES) -> Path:
    """Write (once) the demo ImageFolder ``root/train/<class>/*.png`` and ``root/test/<class>/*.png``.

    ``source`` defaults to `demo_source`; its first ``n_classes`` classes are kept, with `demo_sizes`
    images per class (fewer where the source has fewer). A ``demo.json`` records the settings; a
    folder written with other settings is replaced. Returns ``root``.
    """
    root = Path(root)
    source = source or demo_source(suite.profile)
    task = suite.task(source)
    n_classes = min(n_classes, task.num_classes)
    n_train, n_test = demo_sizes(suite.profile, n_classes)
    settings = {"source": source, "classes": task.classes[:n_classes], "train_per_class": n_train,
                "test_per_class": n_test, "img_size": suite.profile.img_size, "seed": suite.seed}
    stamp = root / "demo.json"
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return root
    for split in ("train", "test"):
        shutil.rmtree(root / split, ignore_errors=True)
    classes = list(range(n_classes))
    for split, ds, per in (("train", task.train, n_train), ("test", task.test, n_test)):
        raw, labels, _ = ds.get(_pick(ds, classes, per, suite.seed))
        write_imagefolder(raw, labels, task.classes, root / split)
    stamp.write_text(json.dumps(settings, indent=2))
    return root
