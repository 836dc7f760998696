"""Notebook 03's verdicts, from the per-image table (``fidelity/per_image.csv``) only."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..schema import method_label


def _settings(per_image: pd.DataFrame, metric: str):
    """Per backbone × task × head: ``(key, {method label: per-image values indexed by image})``."""
    d = per_image[per_image.metric == metric].copy()
    d["label"] = [method_label(m, b) for m, b in zip(d.method, d.budget.fillna(0))]
    for key, g in d.groupby(["backbone", "task", "head"]):
        yield key, {lab: gm.set_index("image").value for lab, gm in g.groupby("label")}


def _paired_means(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """Means of ``a`` and ``b`` over their common images (large budgets run on a subset)."""
    common = a.index.intersection(b.index)
    return a.loc[common].mean(), b.loc[common].mean(), len(common)


def tve_verdict(per_image: pd.DataFrame, metric: str, must_beat: Sequence[str], ratio: float) -> pd.DataFrame:
    """The acceptance check of notebook 03, from per-image values (``fidelity/per_image.csv``); the
    thresholds (``must_beat`` = `WEAK_BASELINES`, ``ratio`` = `COMPETITIVE`) are `tve_lib.report.claims`'.

    Per backbone × task × head, TVE is compared with every other method *on that method's images*
    (sampling methods at large budgets run on a subset): TVE passes against method m when
    ``mean TVE ≥ ratio · mean m`` over the same images (a margin, robust to means near 0).
    Columns: tve (TVE's mean on all its images); worst_method (the method with the smallest margin
    ``TVE − ratio · m``), worst_value, tve_same_images, ratio (TVE / m, for reading) and n_images
    of that comparison; beats (TVE above every method in ``must_beat`` present); ok (beats, and
    the margin ≥ 0 against every method).
    """
    rows = []
    for (b, t, h), by in _settings(per_image, metric):
        tve = by.get("tve")
        if tve is None or not len(tve):
            continue
        cmp = [(lab, *_paired_means(tve, vm)) for lab, vm in by.items() if lab != "tve"]
        if not cmp:
            continue
        beats = all(mt > mm for lab, mt, mm, _ in cmp if lab in must_beat)
        lab, mt, mm, n = min(cmp, key=lambda c: c[1] - ratio * c[2])
        rows.append(dict(backbone=b, task=t, head=h, tve=tve.mean(), worst_method=lab, worst_value=mm,
                         tve_same_images=mt, ratio=mt / mm if mm != 0 else float("nan"), n_images=n,
                         beats=beats, ok=bool(beats and mt >= ratio * mm)))
    return pd.DataFrame(rows)


def amortisation_ceiling(per_image: pd.DataFrame, metric: str = "fid_plus_auc",
                         target: str = "occlusion") -> pd.DataFrame:
    """Splits TVE's gap to the best method into *amortisation* and *target* parts.

    TVE amortises exact window occlusion (docs/method.md §1: ``f(x⊙W_i) − f(x⊙(1−W_i))``), so its
    Fidelity⁺ AUC is bounded, up to amortisation error, by that of ``target``. Per backbone × task ×
    head, all three on the SAME images (those TVE, the target and ``best_method`` share: a sampling
    method at a large budget runs on a subset), so ``tve_over_best = tve_over_target ×
    target_over_best`` is TVE / best on those images: ``tve_over_target`` (how well TVE amortises
    its target), ``target_over_best`` (how good the target quantity itself is against the best
    other method). ``tve_over_target_all``: TVE / the target on every image both were scored on
    (``n_images_target``), the issue's paired amortisation ratio on more images than the three-way split.
    """
    rows = []
    for (b, t, h), by in _settings(per_image, metric):
        if "tve" not in by or target not in by:
            continue
        best = None  # (target / method, method, images common to TVE, the target and the method)
        for lab, vm in by.items():
            if lab in ("tve", target):
                continue
            common = by["tve"].index.intersection(by[target].index).intersection(vm.index)
            mo, mm = by[target].loc[common].mean(), vm.loc[common].mean()
            r = mo / mm if mm != 0 else float("nan")
            if best is None or r < best[0]:
                best = (r, lab, common)
        if best is None:
            continue
        r, lab, common = best
        mt, mo = by["tve"].loc[common].mean(), by[target].loc[common].mean()
        both = by["tve"].index.intersection(by[target].index)  # every image both were scored on
        rows.append(dict(backbone=b, task=t, head=h, tve_over_target=mt / mo, best_method=lab,
                         target_over_best=r, tve_over_best=mt / mo * r, n_images=len(common),
                         tve_over_target_all=by["tve"].loc[both].mean() / by[target].loc[both].mean(),
                         n_images_target=len(both)))
    return pd.DataFrame(rows)
