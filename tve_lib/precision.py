"""Numeric precision of the model passes: which autocast dtype a profile's ``precision`` means on a device,
which ``torch.compile`` backends exist, and the ``dtype`` names the throughput tables record
(`tve_lib.backbones.Backbone` applies them)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .config import PRECISIONS


def amp_dtype_for(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (`tve_lib.config.PRECISIONS`) on ``device``; None: plain fp32.

    ``"auto"`` is bf16 on a CUDA device that supports it and None elsewhere (CPU: today's fp32 path);
    ``"native"`` is bf16 wherever the hardware computes it natively: such a CUDA device, or a CPU with AVX512-BF16
    or AMX (where CPU autocast runs ViT-B about twice as fast as fp32) and None elsewhere (emulated bf16 is
    slower than fp32); ``"bf16"`` is bf16 on any device (CPU autocast included: slower there without bf16
    instructions, but what the tests exercise).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "bf16":
        return torch.bfloat16
    if precision in ("auto", "native") and device.type == "cuda" and _cuda_bf16(device.index):
        return torch.bfloat16
    if precision == "native" and device.type == "cpu" and cpu_bf16():
        return torch.bfloat16
    return None


@functools.cache
def cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles), as torch's CPU dispatch sees them."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(probe()) for probe in probes if probe is not None)


@functools.cache
def _cuda_bf16(index: int | None) -> bool:
    """Whether the CUDA device supports bf16 (asked once per device: every model pass reads it)."""
    with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
        return torch.cuda.is_bf16_supported()


@contextmanager
def unfused_attention(*models: nn.Module) -> Iterator[None]:
    """Inside the block, every timm attention module of ``models`` (a ``fused_attn`` flag) takes its unfused path
    (matmul, softmax, matmul); the flags are restored after. For bf16 training steps on a CPU: there the fused
    kernel's bf16 backward is several times slower than its fp32 one, the unfused path is not (docs/benchmarks.md,
    "bf16 training steps on this CPU")."""
    mods = [m for model in models for m in model.modules() if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, flag in zip(mods, saved):
            m.fused_attn = flag


def check_compile_backend(backend: str) -> str:
    """``backend`` if torch.compile knows it ("" = no compilation); else a clear error naming the known ones."""
    if backend:
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"unknown torch.compile backend {backend!r}; expected '' (off) or one of: "
                             f"{', '.join(known)}")
    return backend


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the ``dtype`` column of the throughput tables)."""
    return str(dtype).removeprefix("torch.")


def to_float32(out: Any) -> Any:
    """Floating tensors of a pass's output (a tensor, or a tuple / list of them) as float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(to_float32(o) for o in out)
    return out
