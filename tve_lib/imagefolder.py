"""A user's ImageFolder, validated once and up front: ``root/<class>/*.png|jpg|...``.

* **What counts.** Class folders are the visible sub-folders of ``root`` (a hidden one such as
  JupyterLab's ``.ipynb_checkpoints/`` is ignored, as are hidden files); images are the files with
  an image extension, at any depth below their class folder.
* **Every file is opened and checked** before anything is trained or cached: PIL must recognise
  it and its data must be complete (``verify()``; a JPEG must end with its end-of-image marker,
  which catches truncated files ``verify`` lets through). Unreadable files are skipped and listed
  (`FolderScan.skipped`, with the reason), never a crash later; a class left without a readable
  image is an error naming it. The checks are cached by the folder's fingerprint.
* **The fingerprint** hashes every image's relative path, size and modification time: caches of
  heads and embeddings are keyed on it, so changing, adding or removing an image recomputes them,
  and copies of one folder at two paths share them. Tasks are named ``folder:<name>@<fingerprint>``
  in every CSV and figure (portable: the full path only goes to ``run.json``).
* **Decoding** converts what PIL reads to RGB the way a viewer shows it: EXIF orientation applied,
  palette and alpha images composited on white, CMYK converted, 16-bit and float images scaled.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .preprocess import Preprocess, as_preprocess

if TYPE_CHECKING:
    from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class FolderScan:
    """The readable images of a folder, its classes, the files skipped and the folder's fingerprint."""

    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[int]
    fingerprint: str
    skipped: list[dict] = field(default_factory=list)  # {"file": relative path, "reason": ...}


def _hidden(path: Path, root: Path) -> bool:
    return any(p.startswith(".") for p in path.relative_to(root).parts)


def _candidates(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    """The classes, the image files with their labels, and the other (non-hidden) files of the class folders."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} is not a usable ImageFolder: it has no class sub-folders (expected one "
                                "sub-folder of images per class)")
    out, others = [], []
    for y, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if not f.is_file() or _hidden(f, root):
                continue
            if f.suffix.lower() in IMG_EXTENSIONS:
                out.append((f, y))
            else:
                others.append(f)
    return classes, out, others


def fingerprint(root: Path, files: list[Path]) -> str:
    """A short hash of every file's relative path, size and modification time."""
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def check_image(path: Path) -> str | None:
    """None when ``path`` is a complete image PIL can read, else the reason it is not."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            fmt = img.format
            img.verify()
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 1024))
                if b"\xff\xd9" not in fh.read():
                    return "truncated JPEG (no end-of-image marker)"
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except Exception as e:  # truncated PNG chunks, bad headers, ...
        return f"unreadable ({type(e).__name__}: {e})"
    return None


SAMPLE_CHECKED = 256  # files of an unchecked (huge) folder decoded up front, a seeded sample


def _check_sample(root: Path, files: list[Path], n: int = SAMPLE_CHECKED) -> None:
    """Decode a seeded sample of ``files`` up front: an unreadable one fails now, naming it, not hours later."""
    import random

    sample = random.Random(0).sample(files, min(n, len(files)))
    with ThreadPoolExecutor(8) as pool:
        bad = [(f, r) for f, r in zip(sample, pool.map(check_image, sample)) if r is not None]
    if bad:
        raise ValueError(f"{root}: unreadable image(s) in a sample of {len(sample)} files: "
                         + "; ".join(f"{f} ({r})" for f, r in bad[:5])
                         + ". Remove or replace them (the whole folder is not checked file by file).")


def scan_imagefolder(root: str | Path, cache_dir: str | Path | None = None, check: bool = True) -> FolderScan:
    """Validate ``root``: the readable images and their labels, what was skipped and why.

    ``cache_dir`` keeps the per-file checks of a fingerprint (``folder_<fingerprint>.json``), so a
    folder is checked once; ``check=False`` keeps every image file unopened (a huge upstream set).
    Raises with the class's name when a class has no readable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist (expected an ImageFolder: one sub-folder of images "
                                "per class)")
    classes, cands, others = _candidates(root)
    fp = fingerprint(root, [f for f, _ in cands])
    cache = Path(cache_dir) / f"folder_{fp}.json" if cache_dir is not None else None
    rel = [f.relative_to(root).as_posix() for f, _ in cands]
    reasons: dict[str, str | None] | None = None
    if cache is not None and cache.exists():
        try:
            reasons = json.loads(cache.read_text())
        except ValueError:
            reasons = None
    if not check:
        reasons = dict.fromkeys(rel)
        _check_sample(root, [f for f, _ in cands])
    elif reasons is None or set(reasons) != set(rel):
        with ThreadPoolExecutor(8) as pool:
            reasons = dict(zip(rel, pool.map(check_image, [f for f, _ in cands])))
        if cache is not None:
            from .io import write_json

            write_json(reasons, cache)
    files = [f for (f, _), r in zip(cands, rel) if reasons[r] is None]
    labels = [y for (_, y), r in zip(cands, rel) if reasons[r] is None]
    skipped = [{"file": r, "reason": reasons[r]} for r in rel if reasons[r] is not None]
    # A .heic or .txt in a class folder is not read either: list it, so a user sees why a class is short.
    expected = ", ".join(IMG_EXTENSIONS)
    skipped += [{"file": f.relative_to(root).as_posix(),
                 "reason": f"extension {f.suffix or '(none)'!r} is not read (expected one of {expected})"}
                for f in others]
    present = set(labels)  # once: a large folder has a million labels and a thousand classes
    empty = [c for y, c in enumerate(classes) if y not in present]
    if empty:
        theirs = [s for s in skipped if s["file"].split("/")[0] in empty]
        raise ValueError(f"{root}: class folder(s) {', '.join(repr(c) for c in empty)} have no readable image"
                         + (f" (skipped: {'; '.join(s['file'] + ': ' + s['reason'] for s in theirs[:3])})"
                            if theirs else ""))
    if skipped:
        names = ", ".join(s["file"] for s in skipped[:5])
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable or non-image file(s): {names}"
                      f"{', ...' if len(skipped) > 5 else ''}", stacklevel=2)
    return FolderScan(root, classes, files, labels, fp, skipped)


def to_rgb(img: Image.Image) -> Image.Image:
    """A PIL image as RGB, as a viewer shows it (EXIF orientation, alpha on white, CMYK, 16-bit, float)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and arr.max() <= 1.0 else 65535.0 if img.mode.startswith("I") else arr.max()
        img = Image.fromarray(np.clip(arr / max(top, 1e-12) * 255.0, 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def load_image(path: Path, size: int | Preprocess, as_uint8: bool = False) -> torch.Tensor:
    """``[3, S, S]`` in [0, 1]: `to_rgb`, then ``size``'s transform (a bare size: shorter side resized to it,
    centre-cropped; a `Preprocess`: a backbone's own). ``as_uint8``: the same pixels as uint8 (x 255), a
    quarter of the bytes for a loader worker to send."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = to_rgb(img)
    return as_preprocess(size)(rgb, as_uint8)
