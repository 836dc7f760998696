"""Shapley ground truth and the two sampling estimators, on generic batched games.

A *game* here is a tensor of values: ``v[b, m]`` = the score of image ``b`` with coalition
``z_m`` of players kept (the rest removed by the shared operator). Coalitions are one tensor
``[M, n]`` shared by every image of a batch, so each estimator needs one batched model call per
chunk and, because the coalitions do not depend on the head, one set of embeddings serves every
head of a task (`tve_lib.metrics.masked_embeddings` + `class_prob`).

* `exact_shapley`: enumeration of all ``2^n`` coalitions (n ≤ 16; the suite uses a coarse
  grouping of the grid, `player_groups`, 3×4 = 12 groups by default) as one linear map ``v @ W``.
* `kernel_shap`: KernelSHAP as the constrained weighted least-squares problem of Covert & Lee
  (2021): coalition sizes drawn from the Shapley kernel (so all weights are equal), paired
  (antithetic) sampling, and the efficiency constraint ``Σφ = v(1) − v(0)`` imposed exactly by a
  Lagrange multiplier. Written by hand because Captum's `KernelShap` runs one image at a time,
  draws fresh coalitions per image and only approximates efficiency; the tests check it against
  Captum on the same game.
* `lime`: LIME as in ``lime_image``: Bernoulli(½) coalitions with the all-ones row first, an
  exponential kernel on the cosine distance to the full image (width 0.25), weighted ridge
  (α = 1, unpenalised intercept) on all players. One shared design matrix means one solve for the
  whole batch (Captum's `Lime` refits per image).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .heads import head_logits

if TYPE_CHECKING:
    from torch import nn

    from .backbones import Backbone


# ----------------------------------------------------------------------------- players
def player_groups(grid: int, shape: tuple[int, int]) -> torch.Tensor:
    """``[R*C, G*G]`` bool: a partition of the ``G×G`` grid into ``R×C`` rectangular blocks.

    Rows and columns are split into near-equal bands (8 rows into 3 bands: 3, 3, 2), so every
    player belongs to exactly one group; groups are numbered in reading order.
    """
    r, c = shape
    if not (1 <= r <= grid and 1 <= c <= grid):
        raise ValueError(f"group shape {shape} must lie within the {grid}x{grid} grid")
    band = lambda n: torch.arange(grid) * n // grid  # noqa: E731 - band index of each row/col
    gid = (band(r)[:, None] * c + band(c)[None, :]).flatten()
    return gid[None, :] == torch.arange(r * c)[:, None]


def group_sum(attr: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Sum a player map ``[B, G, G]`` (or ``[B, P]``) within each group -> ``[B, n_groups]``."""
    a = attr.flatten(1)
    return a @ groups.to(a.device, a.dtype).T


def expand_groups(z: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Group coalitions ``[..., n]`` -> player masks ``[..., P]`` (a player is kept with its group)."""
    return (z.to(torch.float32) @ groups.to(z.device, torch.float32)) > 0.5


# ----------------------------------------------------------------------------- exact
def all_coalitions(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[2^n, n]`` bool: coalition ``m`` contains player ``i`` iff bit ``i`` of ``m`` is set."""
    if not 1 <= n <= 16:
        raise ValueError(f"exact enumeration needs 1 <= n <= 16 players, got {n}")
    m = torch.arange(2 ** n, device=device)
    return (m[:, None] >> torch.arange(n, device=device)) & 1 == 1


def shapley_matrix(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``W [2^n, n]`` (float64) with ``φ = v @ W`` for values ``v`` over `all_coalitions` order.

    ``φ_i = Σ_{S∌i} w(|S|) (v(S∪i) − v(S))`` with ``w(s) = s!(n−s−1)!/n!``: each coalition T
    enters with ``+w(|T|−1)`` if ``i ∈ T`` and ``−w(|T|)`` otherwise.
    """
    z = all_coalitions(n, device)
    size = z.sum(1)
    w = torch.tensor([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)],
                     dtype=torch.float64, device=device)
    plus = w[(size - 1).clamp_min(0)][:, None].expand(-1, n)
    minus = w[size.clamp_max(n - 1)][:, None].expand(-1, n)
    return torch.where(z, plus, -minus)


def exact_shapley(values: torch.Tensor) -> torch.Tensor:
    """Exact Shapley values ``[B, n]`` from the values ``[B, 2^n]`` of every coalition."""
    n = round(math.log2(values.shape[-1]))
    if 2 ** n != values.shape[-1]:
        raise ValueError(f"need the values of all 2^n coalitions, got {values.shape[-1]}")
    return (values.double() @ shapley_matrix(n, values.device)).to(values.dtype)


@dataclass
class ShapleyReference:
    """Exact Shapley values of one head on the first ``len(values)`` images of an evaluation set.

    ``values``: ``[B_s, n_groups]``; ``groups``: ``[n_groups, G*G]`` bool (`player_groups`).
    A player map is compared after summing it within each group (`group_sum`).
    """

    values: torch.Tensor
    groups: torch.Tensor
    topk_frac: float = 0.25


# ----------------------------------------------------------------------------- KernelSHAP
def kernel_coalitions(n: int, n_samples: int, generator: torch.Generator,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """``[M, n]`` bool, ``M = n_samples`` rounded down to even: paired draws from the Shapley kernel.

    Sizes ``s ∈ 1..n−1`` with ``p(s) ∝ (n−1)/(s(n−s))``, then a uniform subset of that size; each
    draw is followed by its complement (antithetic pairs).
    """
    if n < 2:
        raise ValueError(f"KernelSHAP needs >= 2 players, got {n}")
    half = n_samples // 2
    if half < 1:
        raise ValueError(f"KernelSHAP needs >= 2 coalition samples, got {n_samples}")
    s = torch.arange(1, n, dtype=torch.float64)
    p = (n - 1) / (s * (n - s))
    size = torch.multinomial(p / p.sum(), half, replacement=True, generator=generator) + 1
    ranks = torch.rand(half, n, generator=generator).argsort(1).argsort(1)
    z = ranks < size[:, None]
    return torch.stack([z, ~z], 1).flatten(0, 1).to(device)


def kernel_shap(z: torch.Tensor, v: torch.Tensor, v_empty: torch.Tensor, v_full: torch.Tensor) -> torch.Tensor:
    """Constrained least-squares KernelSHAP from kernel-distributed coalitions (all weights equal).

    ``z``: ``[M, n]`` coalitions shared by the batch; ``v``: ``[B, M]`` (or ``[B, M, C]``) values;
    ``v_empty``, ``v_full``: ``[B]`` (or ``[B, C]``). Returns ``[B, n]`` (or ``[B, n, C]``) with
    ``Σ_i φ_i = v_full − v_empty`` exactly:
    ``φ = A⁻¹(b − 1 (1ᵀA⁻¹b − (v_full − v_empty)) / 1ᵀA⁻¹1)``, ``A = E[z zᵀ]``, ``b = E[z (v − v_empty)]``.
    """
    zf = z.to(v.device, torch.float64)
    m, n = zf.shape
    cls = v.ndim == 3
    vv = v.double() if cls else v.double().unsqueeze(-1)  # [B, M, C]
    v0 = (v_empty.double() if cls else v_empty.double().unsqueeze(-1)).unsqueeze(1)  # [B, 1, C]
    v1 = (v_full.double() if cls else v_full.double().unsqueeze(-1))  # [B, C]
    a = zf.T @ zf / m
    b = torch.einsum("mn,bmc->bnc", zf, vv - v0) / m  # [B, n, C]
    # pseudo-inverse: equals A⁻¹ when A has full rank, and gives the least-norm solution (still
    # exactly efficient) when the budget is below the number of players
    ainv = torch.linalg.pinv(a, hermitian=True)
    ones = torch.ones(n, dtype=torch.float64, device=v.device)
    ainv_b = torch.einsum("ij,bjc->bic", ainv, b)
    ainv_1 = ainv @ ones
    lam = (ainv_b.sum(1) - (v1 - v0.squeeze(1))) / (ones @ ainv_1)  # [B, C]
    phi = ainv_b - ainv_1[None, :, None] * lam[:, None, :]
    phi = phi if cls else phi.squeeze(-1)
    return phi.to(v.dtype)


# ----------------------------------------------------------------------------- LIME
def lime_coalitions(n: int, n_samples: int, generator: torch.Generator,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """``[M, n]`` bool: the all-ones coalition, then ``M − 1`` Bernoulli(½) draws (``lime_image``)."""
    if n_samples < 2:
        raise ValueError(f"LIME needs >= 2 samples, got {n_samples}")
    z = torch.rand(n_samples, n, generator=generator) < 0.5
    z[0] = True
    return z.to(device)


def lime(z: torch.Tensor, v: torch.Tensor, kernel_width: float = 0.25, alpha: float = 1.0) -> torch.Tensor:
    """LIME coefficients ``[B, n]`` from shared coalitions ``z [M, n]`` and values ``v [B, M]``.

    Sample weights ``sqrt(exp(−d²/width²))`` with ``d`` the cosine distance of ``z_m`` to the
    all-ones vector (exactly ``lime_image``'s kernel); weighted ridge (sklearn's objective
    ``Σ w_m r_m² + α|β|²``) with an unpenalised intercept, on all players.
    """
    zf = z.to(v.device, torch.float64)
    n = zf.shape[1]
    cos = zf.sum(1) / (zf.norm(dim=1).clamp_min(1e-12) * math.sqrt(n))
    w = torch.sqrt(torch.exp(-((1 - cos) ** 2) / kernel_width ** 2))
    wn = w / w.sum()
    zc = zf - (wn @ zf)  # weighted centring = fitting the intercept without penalty
    vv = v.double()
    vc = vv - (vv @ wn)[:, None]
    gram = zc.T @ (w[:, None] * zc) + alpha * torch.eye(n, dtype=torch.float64, device=v.device)
    rhs = (vc * w) @ zc  # [B, n]
    return torch.linalg.solve(gram, rhs.T).T.to(v.dtype)


# ----------------------------------------------------------------------------- model games
@torch.inference_mode()
def shapley_references(backbone: Backbone, heads: list[nn.Module], images: torch.Tensor, groups: torch.Tensor,
                       targets: list[torch.Tensor | None] | None = None, batch_size: int = 256,
                       topk_frac: float = 0.25) -> list[ShapleyReference]:
    """Exact Shapley values of the grouped game for several heads of one backbone.

    The game: ``v(S)`` = softmax probability of the target class (default: predicted on the full
    image) with only the players of the groups in ``S`` kept (shared removal operator). All
    ``2^n`` coalitions are embedded once (``[B, 2^n, D]``) and scored by every head. An exact
    reference: the backbone runs in fp32 whatever the profile's precision (`Backbone.full_precision`).
    """
    from .metrics import class_prob, masked_embeddings

    z = all_coalitions(len(groups), images.device)
    exact = backbone.full_precision() if hasattr(backbone, "full_precision") else contextlib.nullcontext()
    with exact:
        emb = masked_embeddings(backbone, images, expand_groups(z, groups), batch_size)
    targets = targets or [None] * len(heads)
    out = []
    for h, t in zip(heads, targets):
        t = (head_logits(h, emb[:, -1]).argmax(-1) if t is None
             else torch.as_tensor(t, device=images.device).long().expand(len(images)))
        out.append(ShapleyReference(exact_shapley(class_prob(h, emb, t)), groups.to(images.device), topk_frac))
    return out
