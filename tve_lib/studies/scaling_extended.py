"""Budgets of the scaling study past the profile's, measured on demand (not part of ``run_all.sh``).

Notebook 03b's scaling study stops at twice the profile's pre-training compute, so that a whole run fits
its time. Where a quality target is still missed there, this measures further budgets with the same code
(`scaling_row` on the same `ScalingProbe`: the same test images, heads and exact maps) and upserts them into
``results/<profile>/tve/scaling_extended.csv`` (the columns of ``scaling.csv``, plus where and how they were
measured) and ``scaling_extended_settings.csv`` (the per-setting scores). Notebook 03b reads that file when it
exists and draws its rows beside its own; it never writes it. Pre-trained explainers and target stores are
cached and resumed like every other::

    python -m tve_lib.studies.scaling_extended --profile cpu --dense 12000x40 --dense 3000x40
    python -m tve_lib.studies.scaling_extended --profile cpu --online 48000x1x1 --threads 2
    python -m tve_lib.studies.scaling_extended --profile cpu --backbone swin --dense 3000x40 --augment composite_lowres
    python -m tve_lib.studies.scaling_extended --profile cpu --dense 3000x40 --tve embed_dim=96 --tve mix_hidden=192

``--tve FIELD=VALUE`` changes a field of the profile's ``TVEConfig`` (the explainer's size, say) for every budget
of the call; its rows are kept apart by ``depth``, ``embed_dim`` and ``overrides``. Each row also times the
explainer against one backbone inference (``ratio_to_inference``, batch ``bench.task_batch_size``), so a
smaller explainer's quality is read beside what it saves.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd

from ..augment import AUGMENTS, check_augment
from ..config import TVEConfig, parse_field
from ..io import device_info, git_commit, upsert_csv
from .cli import open_suite, study_parser
from .scaling import ScalingProbe, budget_config, explain_ratio, scaling_row
from .suite import Suite

#: what identifies one budget's row: rerunning a budget replaces it
EXTENDED_KEYS = ["backbone", "sampler", "arch", "n_images", "epochs", "windows_per_image", "augment", "depth",
                 "embed_dim", "overrides", "seed"]


def parse_budget(text: str, parts: int) -> tuple[int, ...]:
    """``"12000x40"`` -> ``(12000, 40)``; a clear error for anything else."""
    try:
        out = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        out = ()
    if len(out) != parts or min(out, default=0) < 1:
        shape = "IMAGESxEPOCHS" if parts == 2 else "IMAGESxEPOCHSxK"
        raise ValueError(f"budget {text!r}: expected {shape} with positive integers, e.g. "
                         f"{'12000x40' if parts == 2 else '48000x1x1'}")
    return out


#: the TVEConfig fields each budget sets itself (`extended_budgets`); ``centred_weight`` only for the online ones
BUDGET_FIELDS = ("sampler", "n_images", "epochs", "windows_per_image")


def parse_overrides(items: list[str]) -> dict:
    """``["embed_dim=96", "augment=none"]`` -> TVEConfig fields, typed by each field's annotation
    (`config.parse_field`); a clear error for an unknown field or a value of the wrong type."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--tve {item!r}: expected FIELD=VALUE with a TVEConfig field")
        if name in BUDGET_FIELDS:  # a budget sets these itself: the row would record a value that did not run
            raise ValueError(f"--tve {item!r}: {name} is set by each budget (--dense / --online), not by --tve")
        try:
            out[name] = parse_field(TVEConfig, name, value)
        except ValueError as e:
            raise ValueError(f"--tve {item!r}: {e}") from None
    return out


def overrides_label(overrides: dict) -> str:
    """How a row names its TVEConfig changes ("" for the profile's explainer)."""
    return " ".join(f"{k}={v}" for k, v in sorted(overrides.items()))


def extended_budgets(suite: Suite, dense: list[str], online: list[str], augment: str = "",
                     overrides: dict | None = None) -> list:
    """The TVEConfigs of the requested budgets, as `scaling_budgets` builds the profile's own (``augment``:
    another upstream augmentation than the profile's, `tve_lib.augment.AUGMENTS`; ``overrides``: other
    TVEConfig fields, `parse_overrides`)."""
    base = dataclasses.replace(suite.profile.tve, **(overrides or {}))
    if augment:  # checked before the probe's exact windows and any training
        base = budget_config(base, augment=check_augment(augment))
    out = [budget_config(base, sampler="dense", n_images=n, epochs=e) for n, e in (parse_budget(d, 2) for d in dense)]
    out += [budget_config(base, sampler="online", n_images=n, epochs=e, windows_per_image=k, centred_weight=1.0)
            for n, e, k in (parse_budget(o, 3) for o in online)]
    n_up = len(suite.upstream[0])
    too_big = [c.n_images for c in out if c.n_images > n_up]
    if too_big:
        raise ValueError(f"budgets of {too_big} images: the {suite.profile.name} profile's upstream set has {n_up}")
    return out


def run_extended(suite: Suite, backbone: str, budgets: list, n_test_images: int | None = None,
                 overrides: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure ``budgets`` on ``backbone`` and upsert their rows (see the module's docstring)."""
    n = n_test_images or suite.profile.scaling.n_test_images
    probe = ScalingProbe(suite, backbone, n, suite.tasks_of(backbone))
    info = device_info(suite.device)
    where = dict(threads=info["threads"], cpu=info["cpu"], device_name=info.get("gpu", info["device"]),
                 git_commit=git_commit())
    rows, per = [], []
    for cfg in budgets:
        row, p = scaling_row(probe, cfg)
        ratio = explain_ratio(suite, backbone, suite.explainer(backbone, cfg), suite.profile.bench.task_batch_size)
        label = overrides_label(overrides or {})
        row = {**row, **where, "overrides": label, "ratio_to_inference": ratio,
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        p = p.assign(overrides=label, depth=cfg.depth, embed_dim=cfg.embed_dim)
        print(f"[{backbone}] {cfg.sampler} {row['n_images']} x {cfg.epochs}: {row['pretrain_seconds']:.0f} s, "
              f"Spearman {row['transfer_spearman']:.3f} (worst {row['transfer_spearman_min']:.3f}), "
              f"overlap {row['topk_overlap']:.3f}, {ratio:.2f}x inference {label}", flush=True)
        rows.append(upsert_csv(pd.DataFrame([row]), suite.path("tve", "scaling_extended.csv"), EXTENDED_KEYS))
        per.append(upsert_csv(p.assign(seed=suite.seed), suite.path("tve", "scaling_extended_settings.csv"),
                              ["backbone", "sampler", "arch", "n_images", "epochs", "augment", "depth",
                               "embed_dim", "overrides", "seed", "task", "head"]))
    return (rows[-1], per[-1]) if rows else (pd.DataFrame(), pd.DataFrame())


def main(argv: list[str] | None = None) -> None:
    ap = study_parser(__doc__)
    ap.add_argument("--dense", action="append", default=[], help="IMAGESxEPOCHS, every window (repeatable)")
    ap.add_argument("--online", action="append", default=[], help="IMAGESxEPOCHSxK, K drawn windows (repeatable)")
    ap.add_argument("--augment", default="", help=f"upstream augmentation, one of {', '.join(AUGMENTS)} "
                                                  "(default: the profile's)")
    ap.add_argument("--tve", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a TVEConfig field for every budget (repeatable), e.g. embed_dim=96")
    a = ap.parse_args(argv)
    if not a.dense and not a.online:
        ap.error("name at least one budget: --dense IMAGESxEPOCHS or --online IMAGESxEPOCHSxK")
    suite = open_suite(ap, a)
    try:
        overrides = parse_overrides(a.tve)
        budgets = extended_budgets(suite, a.dense, a.online, a.augment, overrides)
    except ValueError as e:
        ap.error(str(e))
    run_extended(suite, a.backbone, budgets, a.test_images or None, overrides)


if __name__ == "__main__":
    main()
