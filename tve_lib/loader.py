"""Parallel loading of file-backed image sets, as the ecosystem does it: `torch.utils.data.DataLoader`.

Sets that decode files (an ImageFolder, a torchvision dataset: ImageNet, Pets, Imagenette, CIFAR-10)
are read by ``workers`` worker processes with prefetching (and pinned memory on CUDA); the in-memory
sets (Fashion-MNIST, digits, mosaics) stay tensors and are sliced directly. Batches keep the order of
the index batches asked for, so what a step sees never depends on the worker count; under torchrun a
rank asks only for its own shard (`tve_lib.explainers.tve_train` slices each global batch per rank).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from .data import ImageSet


def default_workers() -> int:
    """Worker processes for decoding: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | None) -> int:
    """``workers`` with -1 / None meaning `default_workers`; must be >= -1."""
    if workers is None or workers == -1:
        return default_workers()
    if workers < 0:
        raise ValueError(f"data workers must be >= 0 or -1 (the cores available), got {workers}")
    return int(workers)


class _Items(Dataset):
    """One decoded image and its label per index of a file-backed `ImageSet` (`ImageSet.item`)."""

    def __init__(self, ds: ImageSet):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ds.item_uint8(int(i))  # uint8: a quarter of the bytes to send between processes


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, None]:
    return torch.stack([a for a, _ in items]), torch.as_tensor([b for _, b in items], dtype=torch.long), None


def _to_float(batch: tuple[torch.Tensor, torch.Tensor, None]) -> tuple[torch.Tensor, torch.Tensor, None]:
    """uint8 pixels -> [0, 1] float, exactly as ``ToTensor`` divides (the in-process path's values)."""
    x, y, m = batch
    return x.to(torch.get_default_dtype()).div(255), y, m


def load_batches(ds: ImageSet, batches: Sequence[torch.Tensor], workers: int | None = None,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``ds.get`` of each index batch, in order. A file-backed set decodes in ``workers`` processes
    (None: the set's own ``workers`` setting; 0: in this process), prefetching ahead."""
    batches = [torch.as_tensor(b, dtype=torch.long) for b in batches]
    w = resolve_workers(getattr(ds, "workers", -1) if workers is None else workers)
    if not getattr(ds, "file_backed", False) or w == 0 or not batches:
        for b in batches:
            yield ds.get(b)
        return
    dl = DataLoader(_Items(ds), batch_sampler=[b.tolist() for b in batches], num_workers=w,
                    collate_fn=_collate, pin_memory=pin_memory, prefetch_factor=4)
    for batch in dl:
        yield _to_float(batch)
