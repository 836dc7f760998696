"""The removal-operator study (notebook 03c): do the fidelity verdicts survive another way of removing a player?

Notebook 03's maps (read from its cache, `fidelity_maps`; computed when absent) are scored again on the
first ``operators.n_images`` evaluation images of each task, with each removal operator of
``operators.names`` (`tve_lib.operators`: ``mean``, ``blur``, ``other``) removing the players in the
metrics only. The maps themselves, TVE's pre-training included, stay made with the default operator:
how they fare under the others is the finding. Per-image AUCs of Fidelity⁺/⁻ and deletion/insertion
go to ``fidelity/operators_per_image.csv``; their means to ``fidelity/operators.csv`` (`operator_rows`);
the rankings' agreement and the claims' verdicts per operator are the report's
(`tve_lib.report.operators`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .. import metrics as M
from ..explainers import EXPLAINERS, supports
from ..heads import HEAD_KINDS
from ..operators import RemovalOperator, make_operator
from ..schema import OPERATOR_COLUMNS, OPERATOR_KEYS
from .fidelity import concat, fidelity_inputs, fidelity_maps

if TYPE_CHECKING:
    from .suite import Suite

#: the curves whose AUCs the study reports (``OPERATOR_METRICS`` in the summary's names)
CURVES = ("fid_plus", "fid_minus", "deletion", "insertion")


def operator_pool(suite: Suite, backbone: str, task: str) -> torch.Tensor:
    """The donor images of the ``other`` operator: a seeded sample of ``pool_size`` images of the
    task's test split (the split the evaluated images come from), normalised for ``backbone``."""
    test = suite.task(task, backbone).test
    g = torch.Generator().manual_seed(30_011 + suite.seed)
    idx = torch.randperm(len(test), generator=g)[: suite.profile.operators.pool_size]
    return suite.backbone(backbone).normalize(test.get(idx)[0].to(suite.device))


def study_operators(suite: Suite, backbone: str, task: str) -> list[RemovalOperator]:
    """The profile's operators for one backbone × task (blur sigma one patch unless set)."""
    cfg, bb = suite.profile.operators, suite.backbone(backbone)
    pool = operator_pool(suite, backbone, task) if "other" in cfg.names else None
    return [make_operator(n, patch=bb.img_size // bb.grid, sigma=cfg.blur_sigma, pool=pool, seed=suite.seed)
            for n in cfg.names]


@torch.no_grad()
def run_operator_task(suite: Suite, backbone: str, task: str, methods: Sequence[str] | None = None,
                      kinds: Sequence[str] = HEAD_KINDS, progress: bool = True) -> pd.DataFrame:
    """Per-image AUCs of notebook 03's maps of one backbone × task under every operator.

    Columns: backbone, task, head, method, budget, operator, metric, image (position among the
    evaluation images), image_id (index in the test split), value, seed. A sampling method at a
    large budget covers only its own images (notebook 03's ``budget_images``).
    """
    ev, cfg = suite.profile.eval, suite.profile.operators
    bb = suite.backbone(backbone)
    say = print if progress else (lambda *a, **k: None)
    idx, _, _, x, heads, targets = fidelity_inputs(suite, backbone, task, kinds)
    methods = [m for m in (methods or EXPLAINERS) if supports(m, bb)]
    runs, _, _ = fidelity_maps(suite, backbone, task, methods, kinds, x, heads, targets, say)
    n = min(cfg.n_images, len(x))
    frames = []
    for op in study_operators(suite, backbone, task):
        with bb.removal(op):
            bases: dict[int, M.CurveBase] = {}  # per image count: shared by every method and head
            for m, bud, nm, maps in runs:
                k = min(n, nm)
                if k not in bases:
                    bases[k] = M.curve_base(bb, x[:k], ev.masked_batch_size)
                for kind, h, tg, a in zip(kinds, heads, targets, maps):
                    curves = M.perturbation_curves(bb, h, x[:k], a[:k], tg[:k], ev.sparsities, ev.perturbation_steps,
                                                   ev.deletion_steps, ev.masked_batch_size, which=CURVES,
                                                   base=bases[k])
                    for metric, vals in M.curve_aucs(curves).items():
                        frames.append(pd.DataFrame(dict(
                            backbone=backbone, task=task, head=kind, method=m, budget=int(bud), operator=op.name,
                            metric=metric, image=range(k), image_id=idx[:k].numpy(),
                            value=vals.double().cpu().numpy(), seed=suite.seed)))
        say(f"[{backbone}/{task}] operator {op.key}: {len(runs)} method runs x {len(kinds)} heads on {n} images")
    return concat(frames)


def operator_rows(per_image: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``fidelity/operators.csv``: the mean of each method's per-image values and their count."""
    keys = [c for c in OPERATOR_KEYS if c != "seed"] + ["seed"]
    out = per_image.groupby(keys, sort=False).value.agg(["mean", "size"]).reset_index()
    out = out.rename(columns={"mean": "value", "size": "n_images"})
    return out[OPERATOR_COLUMNS]
