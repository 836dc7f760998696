"""Generated image folders: JPEGs of ImageNet-like sizes, for the loader benchmark and dry runs.

Images are smooth random colour fields with noise (so a JPEG decodes at a realistic cost), written
atomically; the same ``seed`` writes the same files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import atomic_path

#: (width, height) of the generated JPEGs: the common ImageNet shapes
IMAGENET_LIKE_SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (500, 500))


def random_photo(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8: a low-resolution colour field upsampled, plus pixel noise."""
    from PIL import Image

    w, h = size
    base = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-20, 21, (h, w, 3), dtype=np.int16)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def write_jpeg_folder(root: str | Path, n_per_class: int, classes: Sequence[str], seed: int = 0,
                      sizes: Sequence[tuple[int, int]] = IMAGENET_LIKE_SIZES, quality: int = 90) -> Path:
    """An ImageFolder ``root/<class>/<i>.JPEG`` of ``n_per_class`` generated JPEGs per class; files
    already there are kept (an interrupted write resumes)."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            size = sizes[int(rng.integers(len(sizes)))]
            img = random_photo(rng, size)  # drawn even when the file exists: the same seed, the same files
            path = d / f"{c}_{i:05d}.JPEG"
            if path.exists():
                continue
            with atomic_path(path) as tmp:
                Image.fromarray(img).save(tmp, format="JPEG", quality=quality)
    return root


IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888257")


def _write_jpeg(path: Path, img: np.ndarray, quality: int = 90) -> None:
    from PIL import Image

    if path.exists():
        return
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="JPEG", quality=quality)


def write_imagenette(data_dir: str | Path, n_per_class: tuple[int, int], seed: int = 0) -> Path:
    """``imagenette2/{train,val}/<wnid>/*.JPEG`` as torchvision's ``Imagenette`` reads it (10 classes)."""
    root = Path(data_dir) / "imagenette2"
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), n_per_class):
        for w in IMAGENETTE_WNIDS:
            for i in range(n):
                img = random_photo(rng, IMAGENET_LIKE_SIZES[int(rng.integers(len(IMAGENET_LIKE_SIZES)))])
                _write_jpeg(root / split / w / f"{w}_{i:05d}.JPEG", img)
    return root


def write_oxford_pets(data_dir: str | Path, n_per_split: tuple[int, int], seed: int = 0) -> Path:
    """``oxford-iiit-pet/images/*.jpg`` and ``annotations/{trainval,test}.txt`` (``id class species breed``)
    as torchvision's ``OxfordIIITPet`` reads them: two breeds, one cat and one dog."""
    root = Path(data_dir) / "oxford-iiit-pet"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    breeds = (("Abyssinian", 1, 1), ("beagle", 2, 2))  # (name, class id, species: 1 cat, 2 dog)
    k = 0
    for split, n in zip(("trainval", "test"), n_per_split):
        lines = []
        for i in range(n):
            name, cid, species = breeds[i % 2]
            k += 1
            image_id = f"{name}_{k}"
            _write_jpeg(root / "images" / f"{image_id}.jpg",
                        random_photo(rng, IMAGENET_LIKE_SIZES[int(rng.integers(len(IMAGENET_LIKE_SIZES)))]))
            lines.append(f"{image_id} {cid} {species} 1")
        with atomic_path(root / "annotations" / f"{split}.txt") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
    return root


def write_cifar10(data_dir: str | Path, n_per_split: tuple[int, int], seed: int = 0) -> Path:
    """``cifar-10-batches-py/`` in the CIFAR-10 python format (pickled ``data_batch_1..5``, ``test_batch``,
    ``batches.meta``), 32x32 images. torchvision's reader checks the archive's checksums, so the suite
    reads this format itself (`tve_lib.data.CifarBatches`)."""
    import pickle

    root = Path(data_dir) / "cifar-10-batches-py"
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    files = [(f"data_batch_{i}", n_per_split[0] // 5 + (i <= n_per_split[0] % 5)) for i in range(1, 6)]
    for fname, n in files + [("test_batch", n_per_split[1])]:
        imgs = np.stack([random_photo(rng, (32, 32)) for _ in range(n)]) if n else np.zeros((0, 32, 32, 3), np.uint8)
        # the keys as the official (Python 2) pickles read with encoding="latin1"
        batch = {"data": imgs.transpose(0, 3, 1, 2).reshape(n, -1), "labels": [i % 10 for i in range(n)]}
        with atomic_path(root / fname) as tmp:
            tmp.write_bytes(pickle.dumps(batch))
    with atomic_path(root / "batches.meta") as tmp:
        tmp.write_bytes(pickle.dumps({"label_names": names}))
    return root


def write_dry_data(data_dir: str | Path, seed: int = 0) -> Path:
    """Everything the paper profile reads, generated under ``data_dir`` (a handful of images each): the
    upstream ImageFolder at ``upstream/`` and the three downstream sets in torchvision's layouts."""
    data_dir = Path(data_dir)
    write_jpeg_folder(data_dir / "upstream", 12, [f"class{i}" for i in range(4)], seed)
    write_cifar10(data_dir, (40, 20), seed + 1)
    write_oxford_pets(data_dir, (16, 8), seed + 2)
    write_imagenette(data_dir, (2, 1), seed + 3)
    return data_dir
