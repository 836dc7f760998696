"""Per-image seeds: a stochastic method's draw for an image depends on the seed and that image only."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def image_seeds(images: torch.Tensor, seed: int) -> list[int]:
    """One 63-bit seed per image of ``images`` ``[B, ...]``, from ``seed`` and the image's bytes.

    The same image gets the same seed in any batch, at any position (so maps never depend on the
    batch size or on how a run chunks its images); two different images get different seeds.
    """
    flat = images.detach().to("cpu", torch.float32).contiguous().reshape(len(images), -1).numpy()
    out = []
    for row in flat:
        h = hashlib.blake2b(row.tobytes(), digest_size=8, key=str(int(seed)).encode())
        out.append(int.from_bytes(h.digest(), "little") >> 1)
    return out


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded with ``seed``, then give the caller back its own state.

    A model built in the block (and every draw its training makes from the global generator) depends on ``seed``
    alone, and the caller's random stream is the same after the block as before it: a library call never moves it.
    """
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield
