"""Data sources: the upstream (pre-training) set and three downstream tasks per profile.

Images leave this module as raw float tensors in [0, 1] at the profile's input size,
``[N, C, S, S]`` (C = 1 or 3); a backbone normalises them (`Backbone.normalize`). Task 3 of the
cpu profile carries a pixel mask of its known relevant region, ``[N, S, S]`` bool.

Sources (offline first):
- Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)
  or ``DATA_DIR/fashion-mnist``, else torchvision's download when online, else a clear error.
- digits: scikit-learn's bundled copy.
- paper: torchvision's Oxford-IIIT Pet, Imagenette and CIFAR-10 under ``DATA_DIR`` (never
  downloaded here), and an ImageFolder upstream set.
- ``folder:/path``: any ImageFolder (with ``train/`` and ``test/`` sub-folders, or split 70/30).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import Profile
from .imagefolder import scan_imagefolder

# the image-set types live in tve_lib.imagesets; importing them from here keeps working
from .imagesets import (  # noqa: F401
    DecodedImageSet,
    FolderImageSet,
    ImageSet,
    SubsetImageSet,
    Task,
    TensorImageSet,
    VisionDatasetImageSet,
    content_digest,
    iter_batches,
)

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
# cpu task 3: the label is the class of the one item from these classes, among "top" distractors
MOSAIC_TARGETS = (1, 8, 9)  # Trouser, Bag, Ankle boot
MOSAIC_DISTRACTORS = (0, 2, 4, 6)  # T-shirt, Pullover, Coat, Shirt
BINARY_CLASSES = (7, 9)  # Sneaker vs Ankle boot: two kinds of one thing, like cats vs dogs


# ----------------------------------------------------------------------------- sources
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_dir(data_dir: str | Path | None = None) -> Path:
    """Where the Fashion-MNIST IDX files are: ``DATA_DIR/fashion-mnist`` or Debian's folder."""
    cands = []
    if data_dir:
        cands += [Path(data_dir) / "fashion-mnist", Path(data_dir)]
    cands.append(DEBIAN_FASHION)
    for c in cands:
        if (c / "train-images-idx3-ubyte.gz").exists():
            return c
    return Path()


def load_fashion_mnist(split: str, data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` ('train' | 'test') as uint8 ``[N, 28, 28]`` and labels."""
    prefix = {"train": "train", "test": "t10k"}[split]
    d = fashion_mnist_dir(data_dir)
    if d != Path():
        x = _read_idx(d / f"{prefix}-images-idx3-ubyte.gz")
        y = _read_idx(d / f"{prefix}-labels-idx1-ubyte.gz")
        return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))
    root = Path(data_dir or "data")
    try:  # online fallback
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(str(root), train=(split == "train"), download=True)
        return ds.data, ds.targets
    except Exception as e:
        raise FileNotFoundError(
            "Fashion-MNIST not found. Expected train-images-idx3-ubyte.gz etc. in "
            f"{DEBIAN_FASHION} (as root on Debian: apt-get install dataset-fashion-mnist) or in "
            f"DATA_DIR/fashion-mnist; the torchvision download into {root} failed too ({e})."
        ) from None


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0).unsqueeze(1)


FASHION_FRAME = 28  # Fashion-MNIST's image size


def _fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[N, C, h, w]`` to ``size``: centre-pad when only slightly smaller, else resample."""
    h = images.shape[-1]
    if h == size:
        return images
    if h < size and size - h <= h // 4:
        p = size - h
        return F.pad(images, (p // 2, p - p // 2, p // 2, p - p // 2))
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=h > size).clamp_(0, 1)


def _split(n: int, n_train: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def load_upstream(profile: Profile, data_dir: str | Path | None = None) -> tuple[ImageSet, ImageSet]:
    """The upstream set's (train, validation) split: backbones and explainers train on it only."""
    if profile.upstream == "fashion_mnist":
        x, y = load_fashion_mnist("train", data_dir)
        full = TensorImageSet("fashion_mnist", _fit(_to_float(x), profile.img_size), y,
                              FASHION_CLASSES)
    elif profile.upstream == "imagefolder":
        # ImageNet's 1.28 M files: extensions and hidden folders only, no per-file decode check
        full = _imagefolder("upstream", _upstream_folder(data_dir), profile.img_size, check=False)
        full.workers = profile.data_workers
    else:
        raise KeyError(f"unknown upstream set {profile.upstream!r}")
    n_val = min(profile.n_upstream_val, len(full) // 5)
    rng = np.random.default_rng(0)
    tr, va = _split(len(full), len(full) - n_val, rng)
    return full.subset(tr), full.subset(va)


def upstream_test(profile: Profile, data_dir: str | Path | None = None) -> ImageSet:
    """The upstream test split (cpu/smoke: Fashion-MNIST test), for backbone accuracy."""
    if profile.upstream != "fashion_mnist":
        return load_upstream(profile, data_dir)[1]
    x, y = load_fashion_mnist("test", data_dir)
    return TensorImageSet("fashion_mnist", _fit(_to_float(x), profile.img_size), y, FASHION_CLASSES)


def _upstream_folder(data_dir: str | Path | None) -> Path:
    base = Path(data_dir or "data")
    for c in (base / "imagenet" / "train", base / "imagenette" / "train", base / "upstream"):
        if c.is_dir():
            return c
    raise FileNotFoundError(
        f"paper profile: no upstream ImageFolder found. Put ImageNet-1k train at {base}/imagenet/train "
        f"(or Imagenette train at {base}/imagenette/train, or any ImageFolder at {base}/upstream).")


def _imagefolder(name: str, root: Path, size: int, cache_dir: Path | None = None,
                 check: bool = True) -> FolderImageSet:
    """A validated ImageFolder (unreadable files skipped and listed on ``.skipped``)."""
    scan = scan_imagefolder(root, cache_dir, check)
    ds = FolderImageSet(name, scan, size)
    ds.skipped = scan.skipped
    return ds


# ----------------------------------------------------------------------------- tasks
def _fashion_pools(data_dir) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fashion-MNIST test split halves: one for the binary task, one for the mosaics."""
    x, y = load_fashion_mnist("test", data_dir)
    return x[:5000], y[:5000], x[5000:], y[5000:]


def make_fashion_binary(profile: Profile, data_dir: str | Path | None = None, seed: int = 0) -> Task:
    """Sneaker vs Ankle boot on held-out Fashion-MNIST images (the cats-vs-dogs analogue)."""
    x, y, _, _ = _fashion_pools(data_dir)
    keep = (y == BINARY_CLASSES[0]) | (y == BINARY_CLASSES[1])
    x, y = _fit(_to_float(x[keep]), profile.img_size), (y[keep] == BINARY_CLASSES[1]).long()
    tr, te = _split(len(x), int(0.6 * len(x)), np.random.default_rng(seed))
    names = [FASHION_CLASSES[c] for c in BINARY_CLASSES]
    return Task("fashion_binary", TensorImageSet("fashion_binary", x[tr], y[tr], names),
                TensorImageSet("fashion_binary", x[te], y[te], names), names)


def make_digits(profile: Profile, data_dir: str | Path | None = None, seed: int = 0) -> Task:
    """scikit-learn's 8x8 handwritten digits, upsampled: a domain the explainer never saw."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().div(16.0).unsqueeze(1)
    # upsampled to Fashion-MNIST's 28-px frame, then fitted exactly like Fashion images (centre-padded
    # at 32 px): stretched to the full 32 px, the Swin backbone's linear probe stays below 80 %
    x = F.interpolate(x, size=(FASHION_FRAME, FASHION_FRAME), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = _fit(x, profile.img_size)
    y = torch.from_numpy(d.target).long()
    tr, te = _split(len(x), 1000, np.random.default_rng(seed))
    names = [str(i) for i in range(10)]
    return Task("digits", TensorImageSet("digits", x[tr], y[tr], names),
                TensorImageSet("digits", x[te], y[te], names), names)


def make_fashion_mosaic(profile: Profile, data_dir: str | Path | None = None, seed: int = 0, n: int = 3000,
                        n_distractors: int = 1) -> Task:
    """2x2 mosaics of held-out items; the label is the class of the one non-top item.

    One quadrant holds a Trouser, Bag or Ankle boot, which decides the label: its quadrant is
    the known relevant region (mask). ``n_distractors`` other quadrants hold tops (T-shirt,
    Pullover, Coat, Shirt), the rest stay empty. One distractor: with three, the tiny cpu ViTs'
    linear probes stay below 70 % (measured), i.e. the heads would explain noise.
    """
    _, _, x, y = _fashion_pools(data_dir)
    rng = np.random.default_rng(seed + 1)
    s = profile.img_size
    q = s // 2
    items = _fit(_to_float(x), q)
    tgt_pool = [np.flatnonzero((y == c).numpy()) for c in MOSAIC_TARGETS]
    dis_pool = np.flatnonzero(np.isin(y.numpy(), MOSAIC_DISTRACTORS))
    labels = rng.integers(0, len(MOSAIC_TARGETS), n)
    where = rng.integers(0, 4, n)
    # rank of each quadrant among the non-target ones, in a random order per image
    order = np.argsort(rng.random((n, 4)) + 2.0 * (np.arange(4)[None] == where[:, None]), axis=1)
    is_dis = np.zeros((n, 4), dtype=bool)
    np.put_along_axis(is_dis, order[:, :n_distractors], True, axis=1)
    imgs = torch.zeros(n, 1, s, s)
    masks = torch.zeros(n, s, s, dtype=torch.bool)
    for k in range(4):
        r, c = divmod(k, 2)
        is_t = where == k
        src = np.where(is_t, [rng.choice(tgt_pool[lab]) for lab in labels],
                       rng.choice(dis_pool, n))
        filled = torch.from_numpy(is_t | is_dis[:, k]).view(-1, 1, 1, 1)
        imgs[:, :, r * q:(r + 1) * q, c * q:(c + 1) * q] = items[torch.from_numpy(src)] * filled
        masks[torch.from_numpy(is_t), r * q:(r + 1) * q, c * q:(c + 1) * q] = True
    y_t = torch.from_numpy(labels).long()
    names = [FASHION_CLASSES[c] for c in MOSAIC_TARGETS]
    tr, te = _split(n, int(0.6 * n), rng)
    return Task("fashion_mosaic",
                TensorImageSet("fashion_mosaic", imgs[tr], y_t[tr], names, masks[tr]),
                TensorImageSet("fashion_mosaic", imgs[te], y_t[te], names, masks[te]), names)


class CifarBatches:
    """CIFAR-10 in its python format (``root/cifar-10-batches-py``), ``ds[i] -> (PIL image, label)``.

    Read here rather than by ``torchvision.datasets.CIFAR10``, which insists on the archive's checksums
    (so a generated copy, as the paper dry run writes, could not be read)."""

    def __init__(self, root: Path, train: bool):
        import pickle

        d = Path(root) / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        missing = [n for n in [*names, "batches.meta"] if not (d / n).is_file()]
        if missing:
            raise RuntimeError(f"{d} lacks {', '.join(missing)}")
        data, self.targets = [], []
        for n in names:
            with open(d / n, "rb") as f:
                e = pickle.load(f, encoding="latin1")
            data.append(np.asarray(e["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            self.targets += list(e.get("labels", e.get("fine_labels", [])))
        self.data = np.concatenate(data).transpose(0, 2, 3, 1)
        with open(d / "batches.meta", "rb") as f:
            self.classes = list(pickle.load(f, encoding="latin1")["label_names"])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.data[i]), self.targets[i]


def _paper_dataset(name: str, root: Path, train: bool):
    from torchvision import datasets

    if name == "cifar10":
        ds = CifarBatches(root, train)
        return ds, ds.targets, list(ds.classes)
    if name == "pets_binary":
        ds = datasets.OxfordIIITPet(str(root), split="trainval" if train else "test",
                                    target_types="binary-category", download=False)
        return ds, ds._bin_labels, ["cat", "dog"]
    if name == "imagenette":
        ds = datasets.Imagenette(str(root), split="train" if train else "val", download=False)
        return ds, [s[1] for s in ds._samples], [c[0] for c in ds.classes]
    raise KeyError(name)


PAPER_HINTS = {
    "cifar10": "torchvision.datasets.CIFAR10(DATA_DIR, download=True) (creates cifar-10-batches-py/)",
    "pets_binary": "torchvision.datasets.OxfordIIITPet(DATA_DIR, download=True) (creates oxford-iiit-pet/)",
    "imagenette": "torchvision.datasets.Imagenette(DATA_DIR, download=True) (creates imagenette2/)",
}


def make_paper_task(name: str, profile: Profile, data_dir: str | Path | None = None, seed: int = 0) -> Task:
    """The paper's task ``name`` from the files under ``data_dir`` (default ``data/``), fitted to the profile's
    image size; a clear error naming what to put where when they are missing."""
    root = Path(data_dir or "data")
    try:
        tr, ytr, classes = _paper_dataset(name, root, True)
        te, yte, _ = _paper_dataset(name, root, False)
    except RuntimeError as e:
        raise FileNotFoundError(f"task {name!r}: dataset not found under {root} ({e}). On a machine "
                                f"with internet run {PAPER_HINTS[name]}, then copy it there.") from None
    sets = [VisionDatasetImageSet(name, d, y, classes, profile.img_size) for d, y in ((tr, ytr), (te, yte))]
    for ds in sets:
        ds.workers = profile.data_workers
    return Task(name, *sets, classes)


def make_folder_task(path: str | Path, profile: Profile, seed: int = 0, cache_dir: Path | None = None) -> Task:
    """A user ImageFolder: ``path/train`` + ``path/test``, or one folder split 70/30 by ``seed``.

    Named ``folder:<folder name>@<fingerprint>`` (portable: the same images give the same name and
    the same CSVs from any checkout); ``Task.skipped`` lists the unreadable files left out.
    """
    path = Path(path)
    if (path / "train").is_dir() != (path / "test").is_dir():
        have, lack = ("train", "test") if (path / "train").is_dir() else ("test", "train")
        others = sorted(p.name + "/" for p in path.iterdir() if p.is_dir() and p.name not in (have, lack))
        raise ValueError(f"{path}: has {have}/ but no {lack}/" + (f" (found: {', '.join(others)})" if others else "")
                         + f"; expected {path}/train/<class>/... and {path}/test/<class>/..., or one folder of "
                         "class sub-folders (split 70/30)")
    if (path / "train").is_dir() and (path / "test").is_dir():
        tr = _imagefolder("folder", path / "train", profile.img_size, cache_dir)
        te = _imagefolder("folder", path / "test", profile.img_size, cache_dir)
        if tr.classes != te.classes:
            raise ValueError(f"{path}: train/ has classes {tr.classes} but test/ has {te.classes}")
        name = f"folder:{path.name}@{hashlib.sha1((tr.fingerprint + te.fingerprint).encode()).hexdigest()[:8]}"
        skipped = [dict(s, file=f"train/{s['file']}") for s in tr.skipped] + \
                  [dict(s, file=f"test/{s['file']}") for s in te.skipped]
        for ds in (tr, te):
            ds.name, ds.workers = name, profile.data_workers
        return _checked_folder_task(path, Task(name, tr, te, tr.classes, skipped))
    full = _imagefolder("folder", path, profile.img_size, cache_dir)
    full.name = name = f"folder:{path.name}@{full.fingerprint[:8]}"
    full.workers = profile.data_workers
    a, b = _split(len(full), int(0.7 * len(full)), np.random.default_rng(seed))
    return _checked_folder_task(path, Task(name, full.subset(a), full.subset(b), full.classes, full.skipped))


SPLIT_NAMES = {"train", "test", "val", "valid", "validation"}


def _checked_folder_task(path: Path, task: Task) -> Task:
    """``task``, or a clear error where a head trained on it could not mean anything: fewer than two classes, class
    folders that are split folders (``train/`` + ``val/``), or a class with no image on one side of the split."""
    if set(task.classes) <= SPLIT_NAMES:
        raise ValueError(f"{path}: its class folders are {task.classes}, split names; expected {path}/train/<class>/"
                         f"... and {path}/test/<class>/..., or one folder of class sub-folders (split 70/30)")
    if len(task.classes) < 2:
        raise ValueError(f"{path}: an ImageFolder task needs at least 2 class sub-folders, found {task.classes}")
    for side, ds in (("train", task.train), ("test", task.test)):
        missing = sorted(set(range(len(task.classes))) - set(ds.labels.tolist()))
        if missing:
            raise ValueError(f"{path}: class(es) {[task.classes[i] for i in missing]} have no image in the {side} "
                             f"split ({len(ds)} images); add images, or give train/ and test/ folders")
    return task


TASKS = {"fashion_binary": make_fashion_binary, "digits": make_digits,
         "fashion_mosaic": make_fashion_mosaic}


def load_task(name: str, profile: Profile, data_dir: str | Path | None = None, seed: int = 0,
              cache_dir: Path | None = None) -> Task:
    """A downstream task by name: a cpu task, a paper task, or ``folder:/path`` (its file checks
    cached in ``cache_dir``)."""
    if name.startswith("folder:"):
        return make_folder_task(os.path.expanduser(name[len("folder:"):]), profile, seed, cache_dir)
    if name in TASKS:
        return TASKS[name](profile, data_dir, seed)
    if name in PAPER_HINTS:
        return make_paper_task(name, profile, data_dir, seed)
    raise KeyError(f"unknown task {name!r}; expected one of: {', '.join([*TASKS, *PAPER_HINTS])} "
                   "or 'folder:/path/to/imagefolder'")
