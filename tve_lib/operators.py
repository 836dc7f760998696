"""Removal operators: what a removed player's pixels become (docs/method.md §2, removal operators).

The suite removes a player one way by default: its pixels set to the removal value in normalised
space (``mean``: the dataset mean colour). The evaluation literature warns that this choice can
decide a ranking of attribution methods (Blücher et al. 2024), so metrics may switch operator:

* ``mean``  : the removal value (the default; every explainer and TVE's targets use it);
* ``blur``  : the same pixels of a Gaussian-blurred copy of the image (sigma: one patch, a suite choice);
* ``other`` : the same pixels of another image of the same split, chosen per image by seed (from the
  image's bytes, so the choice never depends on the batch) and never the image itself.

An operator is applied through `tve_lib.backbones.Backbone.removal` (a context manager), so the one
masking formula (`tve_lib.masking.apply_mask`) stays the one place removal happens; soft masks blend
toward the operator's fill.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .seeds import image_seeds

OPERATORS = ("mean", "blur", "other")


class RemovalOperator:
    """What removed pixels become: ``fill(x)`` is ``[B, C, S, S]`` for normalised images ``x``, or
    None for the backbone's scalar removal value."""

    name = ""

    def fill(self, x: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """Identifies the operator and its settings (checkpoints built under it key on this)."""
        return self.name


class MeanFill(RemovalOperator):
    """The default: the backbone's removal value (0 in normalised space: the dataset mean colour)."""

    name = "mean"

    def fill(self, x: torch.Tensor) -> None:
        return None


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, S, S]`` with edge replication (the kernel sums to 1, so
    blurring commutes with the per-channel normalisation)."""
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    r = min(math.ceil(3 * sigma), x.shape[-1] - 1)
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (r, r, 0, 0), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="replicate")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class BlurFill(RemovalOperator):
    """Removed pixels take the value of a Gaussian-blurred copy of the image (``sigma`` in pixels)."""

    name = "blur"

    def __init__(self, sigma: float):
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0 pixels, got {sigma}")
        self.sigma = float(sigma)

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, self.sigma)

    @property
    def key(self) -> str:
        return f"blur{self.sigma:g}"


class OtherFill(RemovalOperator):
    """Removed pixels take the same pixels of another image of ``pool`` (normalised ``[N, C, S, S]``).

    Image b's donor is ``pool[h_b mod N]``, ``h_b`` its per-image seed (`tve_lib.seeds.image_seeds`);
    when that donor equals the image itself, the next pool image that differs is taken.
    """

    name = "other"

    def __init__(self, pool: torch.Tensor, seed: int):
        if pool.ndim != 4 or len(pool) < 2:
            raise ValueError(f"the 'other' operator needs a pool of >= 2 normalised images [N, C, S, S], "
                             f"got {tuple(pool.shape)}")
        self.pool, self.seed = pool, int(seed)

    def donors(self, x: torch.Tensor) -> torch.Tensor:
        """Index into the pool of each image's donor ``[B]``."""
        if x.shape[1:] != self.pool.shape[1:]:
            raise ValueError(f"images {tuple(x.shape[1:])} do not match the pool's {tuple(self.pool.shape[1:])}")
        n, out = len(self.pool), []
        pool = self.pool.to(x.device)
        for img, h in zip(x, image_seeds(x, self.seed)):
            j = h % n
            for step in range(n):
                if not torch.equal(pool[(j + step) % n], img):
                    out.append((j + step) % n)
                    break
            else:
                raise ValueError("every image of the 'other' operator's pool equals the image: no donor")
        return torch.tensor(out, device=x.device, dtype=torch.long)

    def fill(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool.to(x.device, x.dtype)[self.donors(x)]

    @property
    def key(self) -> str:
        return f"other{self.seed}_{len(self.pool)}"


def make_operator(name: str, *, patch: int = 1, sigma: float = 0.0, pool: torch.Tensor | None = None,
                  seed: int = 0) -> RemovalOperator:
    """The operator ``name`` (one of `OPERATORS`). ``blur``: ``sigma`` pixels (0: one patch, ``patch``);
    ``other``: ``pool`` of normalised images of the split and the ``seed`` of the donor choice."""
    if name == "mean":
        return MeanFill()
    if name == "blur":
        return BlurFill(sigma or patch)
    if name == "other":
        if pool is None:
            raise ValueError("the 'other' operator needs a pool of images of the same split")
        return OtherFill(pool, seed)
    raise KeyError(f"unknown removal operator {name!r}; expected one of: {', '.join(OPERATORS)}")
