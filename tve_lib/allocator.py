"""The C heap's settings in the suite's processes: tensors of a few MiB reused from the heap, not mapped afresh.

glibc serves an allocation above its mmap threshold (128 KiB at start, raised as such blocks are freed) with a
fresh mapping of its own, and gives the top of the heap back to the OS above its trim threshold. A forward pass of
the cpu profile's backbones allocates and frees activations of a few MiB at every op, so with the defaults many
of them land on new pages that the kernel must fault in and zero. `tune_allocator` raises both thresholds, so freed
blocks are reused from the heap. On the cpu profile's ViT and DeiT, bf16 inference at batch 256 went from 56-70 to
42-45 ms (2 threads, AMX; Swin, whose activations are smaller, did not move; docs/benchmarks.md, "The C heap's
thresholds"). The cost is a resident set that stays at its peak instead of shrinking between steps.

`Suite` calls it, so every notebook and command-line study runs with it; ``TVE_MALLOC=default`` keeps glibc's own
settings (to measure the difference). `allocator_info` is what `run.json` records.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

ENV = "TVE_MALLOC"
# glibc's ceiling for the threshold it adapts itself on 64-bit systems; blocks above it are still mapped singly
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30  # keep up to 1 GiB of freed heap resident instead of handing it back after every step
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>

_state: dict[str, Any] = {"allocator": "default"}


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_allocator() -> dict[str, Any]:
    """Raise glibc's mmap and trim thresholds for this process (once; later calls change nothing).

    Returns `allocator_info`. Without glibc (macOS, musl) or with ``TVE_MALLOC=default`` nothing is changed.
    """
    if _state["allocator"] != "default" or os.environ.get(ENV, "").strip().lower() == "default":
        return allocator_info()
    libc = _libc()
    if libc is None:
        return allocator_info()
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        raise RuntimeError("glibc's mallopt refused the suite's heap thresholds; set TVE_MALLOC=default to run "
                           "with glibc's own settings")
    _state.update(allocator="glibc tuned", mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD)
    return allocator_info()


def allocator_info() -> dict[str, Any]:
    """The heap settings of this process: ``{"allocator": "default"}`` or the thresholds set by `tune_allocator`."""
    return dict(_state)
