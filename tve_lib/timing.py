"""Honest timing of callables and explainers: warm-up, repeated timed runs, medians and spreads.

* `time_call` times a callable: ``warmup`` untimed runs, then ``repeats`` timed ones, with
  ``torch.cuda.synchronize`` before and after each timed run on GPU (kernels run asynchronously,
  so a timer without it measures the launch, not the work). Threads, device and dtype are recorded.
* `record_model_calls` logs every backbone call an explainer makes (batch size, whether autograd
  runs through it); `time_model_calls` replays those calls alone, so an explainer's own overhead is
  its time over the replay's. With ``stand_in=True`` the backbone is swapped for a near-free linear
  map: `dry_run` uses it to get the call count and the explainer's own time of a method too
  expensive to run (KernelSHAP-1000 at ViT-B size on CPU).

`machine_speed` times a fixed reference workload, recorded in ``run.json`` before and after every notebook.

Generic measurement tools (callables, backbones, heads): no Suite, no CSV. The throughput study
(`tve_lib.studies.throughput`) and notebooks 05/06 time with them.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .backbones import Backbone

# backward through the model costs about two forwards (the usual rule of thumb), so a call with
# autograd is charged three forwards when a cost is estimated from inference time
GRAD_FACTOR = 3.0


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work on ``device`` (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Timed repeats of one call that processes ``n_images`` images."""

    times_s: tuple[float, ...]
    n_images: int
    warmup: int
    device: str
    threads: int
    dtype: str

    @property
    def repeats(self) -> int:
        return len(self.times_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def iqr_s(self) -> float:
        q25, q75 = np.percentile(self.times_s, [25, 75])
        return float(q75 - q25)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.median_s

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.median_s / self.n_images

    @property
    def ms_per_image_iqr(self) -> float:
        return 1000.0 * self.iqr_s / self.n_images

    def summary(self) -> dict:
        return dict(images_per_s=self.images_per_s, ms_per_image=self.ms_per_image,
                    ms_per_image_iqr=self.ms_per_image_iqr, repeats=self.repeats, warmup=self.warmup,
                    device=self.device, threads=self.threads, dtype=self.dtype)


def time_call(fn: Callable[[], object], n_images: int, device: str | torch.device = "cpu", repeats: int = 5,
              warmup: int = 1, dtype: torch.dtype | str = torch.float32,
              clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (median and IQR reported).

    ``n_images`` is how many images one call processes (for images/s and ms/image). On a CUDA
    device every timed run is bracketed by ``torch.cuda.synchronize``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = clock()
        fn()
        synchronize(device)
        times.append(clock() - t0)
    return Timing(tuple(times), n_images, warmup, str(torch.device(device)), torch.get_num_threads(),
                  str(dtype).removeprefix("torch."))


# ----------------------------------------------------------------------------- the machine's speed
def machine_speed(device: str | torch.device = "cpu", repeats: int = 7,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, float | int | str]:
    """The median milliseconds of two fixed workloads on ``device``, so that runs on a machine whose speed drifts
    (by 15-25 % within hours on the 2-core reference machine, docs/benchmarks.md) can be read against each other:
    ``matmul_ms``, an fp32 product of two 1024 x 1024 matrices; ``block_step_ms``, a forward and backward of one
    transformer block in fp32 at the cpu profile's shapes (width 64, 65 tokens, batch 64). About a second on CPU."""
    from timm.models.vision_transformer import Block

    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 1024, generator=gen).to(device)
    with torch.random.fork_rng(devices=[]):  # the same block every time; the caller's random stream untouched
        torch.manual_seed(0)
        block = Block(64, 4).to(device)
    x = torch.randn(64, 65, 64, generator=gen).to(device).requires_grad_(True)

    def step() -> None:
        block.zero_grad(set_to_none=True)
        block(x).square().mean().backward()

    mm = time_call(lambda: a @ a, 1, device, repeats, warmup=2, clock=clock)
    st = time_call(step, 1, device, repeats, warmup=2, clock=clock)
    return {"matmul_ms": round(1000 * mm.median_s, 2), "block_step_ms": round(1000 * st.median_s, 2),
            "threads": torch.get_num_threads(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ----------------------------------------------------------------------------- model calls
@dataclass
class CallLog:
    """Backbone calls made by an explainer: batch size and whether autograd ran through each."""

    sizes: list[int] = field(default_factory=list)
    grad: list[bool] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return sum(self.sizes)

    @property
    def n_calls(self) -> int:
        return len(self.sizes)

    def cost_ms(self, inference_ms: dict[int, float], grad_factor: float = GRAD_FACTOR) -> float:
        """Estimated time of these calls from inference ms/image measured at some batch sizes."""
        return sum(s * nearest(inference_ms, s) * (grad_factor if g else 1.0)
                   for s, g in zip(self.sizes, self.grad))


def nearest(curve: dict[int, float], size: int) -> float:
    """The value of ``curve`` (batch size -> value) at the batch size nearest ``size`` (log scale)."""
    if not curve:
        raise ValueError("empty curve: time the backbone's inference first")
    return curve[min(curve, key=lambda b: (abs(math.log(b) - math.log(max(size, 1))), -b))]


@contextmanager
def record_model_calls(backbone: Backbone, stand_in: bool = False) -> Iterator[CallLog]:
    """Log every ``backbone.embed`` / ``backbone(x)`` call made inside the block.

    ``stand_in=True`` also replaces the network by a fixed linear map of the mean colour
    (``[B, 3] -> [B, D]``, differentiable), so the block costs what the explainer itself costs.
    """
    if "embed" in vars(backbone):
        raise RuntimeError(f"backbone {backbone.name} is already being recorded")
    log = CallLog()
    if stand_in:
        gen = torch.Generator().manual_seed(0)
        proj = (torch.randn(3, backbone.embed_dim, generator=gen) / math.sqrt(3)).to(backbone.mean.device)

        def net(x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) @ proj.to(x.dtype)
    else:
        net = backbone.embed

    def embed(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        log.sizes.append(int(x.shape[0]))
        log.grad.append(bool(out.requires_grad))
        return out

    # instance attributes shadow the class's methods; nn.Module.__call__ looks up self.forward
    backbone.embed = embed
    backbone.forward = embed
    try:
        yield log
    finally:
        del backbone.embed
        del backbone.forward


def time_model_calls(backbone: Backbone, head: nn.Module, log: CallLog, n_images: int,
                     device: str | torch.device, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time the recorded calls alone: ``h(g(x))`` on random batches of the recorded sizes.

    A transformer's cost does not depend on pixel values, so random inputs stand for the masked
    images; calls that ran under autograd are replayed with a backward pass. ``n_images`` is the
    number of explained images the calls served (ms per *explained* image).
    """
    if not log.sizes:
        raise ValueError("no model calls were recorded: nothing to replay")
    s = backbone.img_size
    x = torch.randn(max(log.sizes), 3, s, s, device=device)

    def replay() -> None:
        for n, g in zip(log.sizes, log.grad):
            if g:
                xi = x[:n].clone().requires_grad_(True)
                head(backbone.embed(xi)).sum().backward()
            else:
                with torch.no_grad():
                    head(backbone.embed(x[:n]))

    return time_call(replay, n_images, device, repeats, warmup)


@dataclass(frozen=True)
class DryRun:
    """One explanation with the stand-in backbone: the call log and the explainer's own time."""

    log: CallLog
    seconds: float
    n_images: int

    def estimate_ms(self, inference_ms: dict[int, float]) -> tuple[float, float]:
        """(own ms, model-call ms) per explained image, the latter from measured inference time."""
        return 1000.0 * self.seconds / self.n_images, self.log.cost_ms(inference_ms) / self.n_images


def dry_run(explain: Callable[[], object], backbone: Backbone, n_images: int,
            device: str | torch.device) -> DryRun:
    """Run ``explain`` twice with the stand-in backbone; keeps the faster run (the first warms up)."""
    best, log = math.inf, CallLog()
    for _ in range(2):
        with record_model_calls(backbone, stand_in=True) as cur:
            synchronize(device)
            t0 = time.perf_counter()
            explain()
            synchronize(device)
            dt = time.perf_counter() - t0
        if dt < best:
            best, log = dt, cur
    return DryRun(log, best, n_images)
