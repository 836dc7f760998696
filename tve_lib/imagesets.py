"""Image sets: what every study reads images through, and a downstream task's two splits.

An `ImageSet` hands out raw float images in [0, 1], ``[N, C, S, S]``, with labels (and, for the cpu
mosaics, region masks); file-backed sets decode on access in loader workers (`tve_lib.loader`). The
sources that build them (Fashion-MNIST, digits, the paper's datasets, a user's folder) are in
`tve_lib.data`.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .imagefolder import FolderScan, load_image
from .loader import load_batches
from .preprocess import Preprocess, as_preprocess


class ImageSet:
    """A finite set of images with labels (and optionally region masks) of one size."""

    name: str
    classes: list[str]
    _labels: torch.Tensor  # the labels of a set that stores them (subsets derive theirs)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    @property
    def has_masks(self) -> bool:
        return False

    def get(self, idx: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images ``[n, C, S, S]`` in [0, 1], labels ``[n]``, masks ``[n, S, S]`` or None."""
        raise NotImplementedError

    #: True for sets that decode files (read through `tve_lib.loader`'s worker processes)
    file_backed = False
    #: decoding processes of a file-backed set (-1: the cores available; 0: in the calling process)
    workers = -1

    def item(self, i: int) -> tuple[torch.Tensor, int]:
        """One decoded image ``[C, S, S]`` and its label (file-backed sets; what a loader worker runs)."""
        x, y, _ = self.get(torch.tensor([i]))
        return x[0], int(y[0])

    def item_uint8(self, i: int) -> tuple[torch.Tensor, int]:
        """`item` as uint8 pixels (x 255; ``item`` is exactly these / 255): what a loader worker sends."""
        x, y = self.item(i)
        return (x * 255).round().to(torch.uint8), y

    def subset(self, idx: torch.Tensor | Sequence[int]) -> ImageSet:
        return SubsetImageSet(self, torch.as_tensor(idx, dtype=torch.long))

    def with_preprocess(self, preprocess: Preprocess) -> ImageSet:
        """This set decoded with ``preprocess`` (a backbone's own transform); in-memory sets are already
        at their size and return themselves."""
        return self


class TensorImageSet(ImageSet):
    """An in-memory image set."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 masks: torch.Tensor | None = None):
        if images.ndim != 4:
            raise ValueError(f"{name}: images must be [N, C, H, W], got {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError(f"{name}: image set is empty")
        self.name, self.images, self._labels, self.classes, self.masks = (
            name, images, labels.long(), classes, masks)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    def get(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        m = self.masks[idx] if self.masks is not None else None
        return self.images[idx], self._labels[idx], m


class SubsetImageSet(ImageSet):
    def __init__(self, base: ImageSet, idx: torch.Tensor):
        self.base, self.idx = base, idx
        self.name, self.classes = base.name, base.classes

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def labels(self) -> torch.Tensor:
        return self.base.labels[self.idx]

    @property
    def has_masks(self) -> bool:
        return self.base.has_masks

    def get(self, idx):
        return self.base.get(self.idx[torch.as_tensor(idx, dtype=torch.long)])

    @property
    def file_backed(self) -> bool:
        return self.base.file_backed

    @property
    def workers(self) -> int:
        return self.base.workers

    def item(self, i: int) -> tuple[torch.Tensor, int]:
        return self.base.item(int(self.idx[i]))

    def item_uint8(self, i: int) -> tuple[torch.Tensor, int]:
        return self.base.item_uint8(int(self.idx[i]))

    def with_preprocess(self, preprocess: Preprocess) -> ImageSet:
        base = self.base.with_preprocess(preprocess)
        return self if base is self.base else SubsetImageSet(base, self.idx)

    @property
    def fingerprint(self) -> str | None:
        """The base set's fingerprint and this subset's indices (None when the base has none)."""
        fp = getattr(self.base, "fingerprint", None)
        return None if fp is None else fp + hashlib.sha1(self.idx.numpy().tobytes()).hexdigest()[:8]


class DecodedImageSet(ImageSet):
    """A set whose images are files decoded on access by its `Preprocess` (read by loader workers)."""

    file_backed = True
    preprocess: Preprocess

    def with_preprocess(self, preprocess: Preprocess) -> ImageSet:
        if preprocess == self.preprocess:
            return self
        out = copy.copy(self)
        out.preprocess = preprocess
        return out

    def item_uint8(self, i: int) -> tuple[torch.Tensor, int]:
        return self.item(i, as_uint8=True)

    def get(self, idx):
        idx = torch.as_tensor(idx, dtype=torch.long)
        return torch.stack([self.item(i)[0] for i in idx.tolist()]), self._labels[idx], None


class VisionDatasetImageSet(DecodedImageSet):
    """A torchvision dataset (PIL images) decoded on access by ``size``'s transform (a bare size: resized
    and centre-cropped to it; a `Preprocess`: a backbone's own)."""

    def __init__(self, name: str, dataset, labels: Sequence[int], classes: list[str], size: int | Preprocess):
        if len(dataset) == 0:
            raise ValueError(f"{name}: image set is empty")
        self.name, self.dataset, self.classes = name, dataset, classes
        self._labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.preprocess = as_preprocess(size)

    def item(self, i: int, as_uint8: bool = False) -> tuple[torch.Tensor, int]:
        img = self.dataset[int(i)][0]
        img = img.convert("RGB") if hasattr(img, "convert") else img
        return self.preprocess(img, as_uint8), int(self._labels[i])


class FolderImageSet(DecodedImageSet):
    """The readable images of a validated ImageFolder (`tve_lib.imagefolder.scan_imagefolder`)."""

    def __init__(self, name: str, scan: FolderScan, size: int | Preprocess):
        self.name, self.classes, self.files = name, scan.classes, scan.files
        self.preprocess = as_preprocess(size)
        self._labels = torch.as_tensor(scan.labels, dtype=torch.long)
        self.scan_fingerprint = scan.fingerprint

    @property
    def fingerprint(self) -> str:
        """What caches of this set are keyed on: its files (not its path) and, when not the plain one,
        its transform."""
        p = self.preprocess
        return self.scan_fingerprint if p.is_plain else f"{self.scan_fingerprint}@{p.key}"

    def item(self, i: int, as_uint8: bool = False) -> tuple[torch.Tensor, int]:
        path = self.files[int(i)]
        try:
            return load_image(path, self.preprocess, as_uint8), int(self._labels[i])
        except Exception as e:  # a file the up-front scan did not decode (ImageNet: only a sample is checked)
            raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e}); remove or replace it") from e


@dataclass
class Task:
    """A downstream task: train and test splits of one label space."""

    name: str
    train: ImageSet
    test: ImageSet
    classes: list[str]
    skipped: list[dict] = field(default_factory=list)  # unreadable files of a folder task, with the reason

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_regions(self) -> bool:
        return self.test.has_masks

    def with_preprocess(self, preprocess: Preprocess) -> Task:
        """The same task decoded with ``preprocess`` (itself when nothing changes)."""
        tr, te = self.train.with_preprocess(preprocess), self.test.with_preprocess(preprocess)
        if tr is self.train and te is self.test:
            return self
        return Task(self.name, tr, te, self.classes, self.skipped)


def iter_batches(ds: ImageSet, batch_size: int, indices: torch.Tensor | None = None,
                 shuffle: bool = False, generator: torch.Generator | None = None,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(images, labels, masks)`` batches of ``ds`` (optionally of ``indices`` only); a
    file-backed set decodes in its ``workers`` processes (`tve_lib.loader.load_batches`)."""
    idx = torch.arange(len(ds)) if indices is None else torch.as_tensor(indices)
    if shuffle:
        if generator is None:  # an order drawn from the global state could not be reproduced from the run's seed
            raise ValueError("iter_batches(shuffle=True) needs a seeded generator")
        idx = idx[torch.randperm(len(idx), generator=generator)]
    yield from load_batches(ds, [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)])


def content_digest(ds: ImageSet, n: int = 16) -> str:
    """A short hash of a set's size, labels and first ``n`` images: cache keys change with the data.

    A folder's images are hashed through its fingerprint (paths relative to the folder, sizes,
    modification times), which covers every image, not only the first ``n``.
    """
    h = hashlib.sha1(str(len(ds)).encode())
    h.update(ds.labels.numpy().tobytes())
    fp = getattr(ds, "fingerprint", None)
    if fp is not None:
        h.update(fp.encode())
        return h.hexdigest()[:8]
    x, _, m = ds.get(torch.arange(min(n, len(ds))))
    h.update(x.numpy().tobytes())
    if m is not None:
        h.update(m.numpy().tobytes())
    return h.hexdigest()[:8]
