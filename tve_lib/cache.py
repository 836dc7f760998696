"""Caching of computed artefacts (embeddings, heads, trained explainers, references), in one place.

``cached(path, build, restore, what)`` returns ``restore(payload)`` of the payload read from
``path``; when the file is missing, ``build()`` makes the payload, saved atomically. With ``dump``,
``build()`` makes the object itself, which is returned as built (a trained network, not a copy
restored from the file) and saved as ``dump(object)``. One rule for a
file that exists but cannot be used (truncated, not a checkpoint, the wrong keys or shapes): a
warning naming it, the file deleted, the payload built again. Keys are made with `digest` and
`file_safe`, so a change of any setting that shaped the artefact gives another file. `ItemCache`
keeps per-image results found by the image's content (the exact window quantity).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from .io import CorruptCheckpoint, load_torch, save_torch

T = TypeVar("T")

#: what a stale or damaged cache file raises when read or restored
UNUSABLE = (CorruptCheckpoint, KeyError, RuntimeError, ValueError, TypeError, AttributeError)


def file_safe(name: str) -> str:
    """``name`` usable as part of a file name (task names such as ``mosaic/4`` or ``folder:x``)."""
    return name.replace("/", "_").replace(":", "_")


def digest(*parts: Any, n: int = 10) -> str:
    """A short stable hash of ``repr(parts)`` (dataclass configs, names, numbers)."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:n]


def _identity(payload: Any) -> Any:
    return payload


def _load(path: Path, restore: Callable[[Any], T], what: str) -> tuple[bool, T | None]:
    if path.exists():
        try:
            return True, restore(load_torch(path))
        except UNUSABLE as e:
            print(f"warning: cached {what or 'file'} {path} is unusable ({type(e).__name__}: {e}); "
                  "deleting it and computing it again")
            path.unlink(missing_ok=True)
    return False, None


def load_or_train(path: str | Path, restore: Callable[[Any], T], train: Callable[[], T], what: str = "") -> T:
    """``restore`` of the finished checkpoint at ``path``, else ``train()``, which writes ``path``
    itself (trainings checkpoint every epoch and resume, so they own their file); same corrupt-file rule."""
    found, obj = _load(Path(path), restore, what)
    return obj if found else train()


def cached(path: str | Path, build: Callable[[], T], restore: Callable[[Any], T] = _identity,
           what: str = "", *, dump: Callable[[T], Any] | None = None) -> T:
    """The object cached at ``path`` (``restore`` of its payload), built and saved (``dump``) when
    absent or unusable."""
    path = Path(path)
    found, obj = _load(path, restore, what)
    if found:
        return obj
    built = build()
    if dump is None:
        save_torch(built, path)
        return restore(built)
    save_torch(dump(built), path)
    return built


def content_key(x: torch.Tensor) -> str:
    """A hash of one tensor's shape, dtype and bytes (an image as the model sees it)."""
    t = x.detach().to("cpu").contiguous()
    h = hashlib.sha1(f"{tuple(t.shape)}{t.dtype}".encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


class ItemCache:
    """Per-item results of an expensive batched function, one file per item under ``root/<key>/``.

    The items are found by content (`content_key` of each row of the input), so two studies that
    ask for the same image in other batches, orders or companies share one computation: the exact
    window quantity, 2·G² backbone passes per image, is the use. Only the missing rows are computed;
    the rows returned are the function's own outputs, stacked, so the answer is the uncached one
    wherever the function's rows do not depend on their batch (the backbones' passes on CPU do not:
    checked in ``tests/test_window_cache.py``). Files are written atomically; a damaged one is computed again.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def rows(self, key: str, x: torch.Tensor, compute: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
             ) -> tuple[torch.Tensor, ...]:
        """``compute(x)`` row by row from the files of ``key`` (a digest of everything else the
        function's result depends on), computing and saving only the rows not yet stored."""
        folder = self.root / file_safe(key)
        names = [content_key(xi) for xi in x]
        got: dict[int, tuple[torch.Tensor, ...]] = {}
        for i, n in enumerate(names):
            found, row = _load(folder / f"{n}.pt", tuple, "row")
            if found:
                got[i] = row
        missing = [i for i in range(len(x)) if i not in got]
        if missing:
            out = compute(x[missing])
            for j, i in enumerate(missing):
                got[i] = tuple(o[j].detach().to("cpu").clone() for o in out)
                save_torch(got[i], folder / f"{names[i]}.pt")
        if not got:
            return compute(x)  # an empty batch: the function's own empty shapes
        return tuple(torch.stack([got[i][k] for i in range(len(x))]).to(x.device)
                     for k in range(len(got[0])))
