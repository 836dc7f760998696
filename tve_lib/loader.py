"""Parallel loading of file-backed image sets, as the ecosystem does it: `torch.utils.data.DataLoader`.

Sets that decode files (an ImageFolder, a torchvision dataset: ImageNet, Pets, Imagenette, CIFAR-10)
are read by ``workers`` worker processes with prefetching (and pinned memory on CUDA); workers send uint8
pixels stacked in shared memory, converted to float in this process exactly as ``ToTensor`` does. The
in-memory sets (Fashion-MNIST, digits, mosaics) stay tensors and are sliced directly. Batches keep the order
of the index batches asked for, so what a step sees never depends on the worker count; under torchrun a
rank asks only for its own shard (`tve_lib.explainers.tve_train` slices each global batch per rank).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

if TYPE_CHECKING:
    from .imagesets import ImageSet


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
    """A batch stacked, in a worker straight into shared memory (as ``default_collate`` does): sending
    it then costs no second copy, and the main process maps it."""
    imgs, out = [a for a, _ in items], None
    if get_worker_info() is not None:
        shape = torch.Size((len(imgs), *imgs[0].shape))
        out = torch.empty(0, dtype=imgs[0].dtype).set_(torch.UntypedStorage._new_shared(shape.numel()), 0, shape)
    return torch.stack(imgs, out=out), torch.as_tensor([b for _, b in items], dtype=torch.long), None


def _to_float(x: torch.Tensor, pin_memory: bool = False) -> torch.Tensor:
    """uint8 pixels -> [0, 1] float, exactly as ``ToTensor`` divides (``x.to(float).div(255)``).

    In numpy, on one thread: torch runs it on an OpenMP team which, while the workers keep every core
    busy, spin-waits for a descheduled member and burns the decoders' CPU (docs/benchmarks.md)."""
    dtype = torch.get_default_dtype()
    out = torch.empty(x.shape, dtype=dtype, pin_memory=pin_memory)
    if dtype in (torch.float32, torch.float64):
        np.divide(x.numpy(), 255, out=out.numpy(), dtype=out.numpy().dtype)  # a true division, not * (1/255)
    else:  # half precision: numpy has no twin of torch's rounding
        torch.div(x, 255, out=out)
    return out


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
    pin = pin_memory and torch.accelerator.is_available()  # as DataLoader: no accelerator, nothing to pin
    # its own generator: a DataLoader otherwise draws its workers' base seed from the global stream, so loading
    # would move every later unseeded draw (the workers decode only; they draw nothing)
    dl = DataLoader(_Items(ds), batch_sampler=[b.tolist() for b in batches], num_workers=w,
                    collate_fn=_collate, prefetch_factor=4, generator=torch.Generator())
    for x, y, m in dl:  # pinned after the conversion, not before: the float batch is what a step copies
        yield _to_float(x, pin), y.pin_memory() if pin else y, m
