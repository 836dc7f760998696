"""Peak memory of a block of work: what a paper-size TVE step or fidelity batch needs on a device.

On CUDA the allocator's own peak (``torch.cuda.max_memory_allocated``, reset when the block starts). On a CPU
the process's peak resident set (Linux ``VmHWM``, reset to the current resident set through
``/proc/self/clear_refs`` when the block starts), reported both as the peak and as the growth over the resident
set at the start (the block's own working memory: model weights already loaded are not counted twice; freed
heap pages are handed back to the OS first, so memory reused from an earlier step is counted).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

_MIB = 2**20


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    _trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _trim() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``): memory an earlier step freed but kept
    resident would otherwise be reused unseen, and the block's growth would read near zero."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the growth may then be an underestimate
        pass


@contextmanager
def peak_memory(device: str | torch.device) -> Iterator[dict]:
    """Measure the block's peak memory on ``device``; the yielded dict is filled when the block ends with
    ``peak_memory_mib``, ``memory_growth_mib`` (peak minus the memory in use at the start) and
    ``memory_kind`` ("cuda allocated" or "cpu resident set"; NaN values where the platform cannot tell)."""
    dev = torch.device(device)
    out: dict = {}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
        yield out
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        out.update(peak_memory_mib=peak / _MIB, memory_growth_mib=(peak - start) / _MIB, memory_kind="cuda allocated")
        return
    ok = _reset_cpu_peak()
    start = _status_kib("VmRSS")
    yield out
    peak = _status_kib("VmHWM") if ok else None
    nan = float("nan")
    out.update(peak_memory_mib=peak / 1024 if peak is not None else nan,
               memory_growth_mib=(peak - start) / 1024 if peak is not None and start is not None else nan,
               memory_kind="cpu resident set")
