"""An in-domain ceiling for TVE's transfer (a diagnostic, not the method; not part of ``run_all.sh``).

TVE is pre-trained on upstream images only and explains downstream tasks zero-shot. Where a downstream setting
misses the Spearman target, this asks whether the domain is the reason: the same explainer, the same budget of
optimiser steps, pre-trained instead on the *training* images of one downstream task (never its test images,
which the probe scores), then scored beside the profile's upstream explainer by the scaling study's probe
(`ScalingProbe`: the same test images, heads and exact window maps). Rows are upserted into
``results/<profile>/tve/in_domain.csv`` (`schema.IN_DOMAIN_COLUMNS`, one row per explainer x task x head)::

    python -m tve_lib.studies.in_domain --profile cpu --backbone swin --task digits --threads 1

A setting that reaches the target with the in-domain explainer and misses it zero-shot is limited by what the
upstream images cover, not by the explainer's shape or budget. ``--with-upstream N`` pre-trains instead on N
images of the profile's pre-training set (augmented as the profile says, drawn by seed) and the task's training
images together, shuffled (``trained_on = "<task>+upstream<N>"``): whether one explainer of the same budget
serves both domains when its pre-training images cover them.
"""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import torch

from ..config import TVEConfig
from ..imagesets import ImageSet, TensorImageSet
from ..io import device_info, git_commit, load_torch, upsert_csv
from ..schema import IN_DOMAIN_COLUMNS, IN_DOMAIN_KEYS
from .cli import open_suite, study_parser
from .scaling import ScalingProbe
from .suite import Suite
from .transfer import trivial_ratio

UPSTREAM = "upstream"  # `trained_on` of the profile's own explainer


def in_domain_config(cfg: TVEConfig, n_images: int, n_upstream: int) -> TVEConfig:
    """``cfg`` for ``n_images`` in-domain images at the optimiser steps of ``cfg``'s upstream budget (``cfg.n_images``
    of the ``n_upstream`` upstream images, ``cfg.epochs``), without upstream augmentation."""
    n = min(n_images, cfg.n_images)
    epochs = max(1, round(cfg.epochs * min(cfg.n_images, n_upstream) / n))
    return dataclasses.replace(cfg, n_images=n, epochs=epochs, augment="none")


def in_domain_set(suite: Suite, task: str, backbone: str) -> ImageSet:
    """The training split of ``task``, decoded for ``backbone``: what the in-domain explainer pre-trains on."""
    if task not in suite.tasks_of(backbone):
        raise ValueError(f"unknown task {task!r} for backbone {backbone!r}; expected one of: "
                         f"{', '.join(suite.tasks_of(backbone))}")
    return suite.task(task, backbone).train


def trained_on_label(task: str, with_upstream: int = 0) -> str:
    """The ``trained_on`` of an explainer pre-trained on ``task``'s training images (and ``with_upstream``
    pre-training images beside them): ``"digits"``, ``"digits+upstream2000"``."""
    return f"{task}+upstream{with_upstream}" if with_upstream else task


def mixed_set(suite: Suite, task: str, backbone: str, n_upstream: int) -> ImageSet:
    """``n_upstream`` images of the profile's pre-training set (drawn by the suite's seed) followed by ``task``'s
    training images; labels follow the concatenated classes (TVE's pre-training reads no label)."""
    train, up = in_domain_set(suite, task, backbone), suite.pretrain_set(None, backbone)
    if not 0 < n_upstream <= len(up):
        raise ValueError(f"the mixed set takes 1..{len(up)} upstream images (the pre-training set's size), "
                         f"got {n_upstream}")
    g = torch.Generator().manual_seed(suite.seed)
    pick = torch.randperm(len(up), generator=g)[:n_upstream]
    try:
        xu, yu, _ = up.get(pick)
        xt, yt, _ = train.get(torch.arange(len(train)))
    except (TypeError, AttributeError) as e:  # file-backed sets are not concatenated in memory
        raise ValueError("a mixed set needs in-memory image sets (the cpu and smoke profiles)") from e
    if xu.shape[1:] != xt.shape[1:]:
        raise ValueError(f"upstream images {tuple(xu.shape[1:])} and {task} images {tuple(xt.shape[1:])} differ")
    return TensorImageSet(f"{task}+upstream{n_upstream}s{suite.seed}", torch.cat([xu, xt]),
                          torch.cat([yu, yt + len(up.classes)]), list(up.classes) + list(train.classes))


def _rows(probe: ScalingProbe, explainer, trained_on: str, cfg: TVEConfig, history: list[dict]) -> pd.DataFrame:
    suite, b = probe.suite, probe.backbone
    ratio = trivial_ratio(pd.DataFrame([{"backbone": b, **h} for h in history])).ratio.iloc[0]
    per = probe.score(explainer)
    return per.assign(backbone=b, trained_on=trained_on, n_images=cfg.n_images, epochs=cfg.epochs,
                      pretrain_seconds=history[-1]["seconds"], heldout_ratio=ratio, n_test_images=probe.n_images,
                      seed=suite.seed, backbone_weights=probe.weights)


def run_in_domain(suite: Suite, backbone: str, task: str, n_test_images: int | None = None,
                  with_upstream: int = 0) -> pd.DataFrame:
    """Score the profile's explainer of ``backbone`` and one pre-trained on ``task``'s training images (with
    ``with_upstream`` pre-training images beside them, `mixed_set`; trained once, cached apart from the upstream
    one) on the same probe; upsert and return their rows."""
    # checked before the probe's exact maps and any training
    train = mixed_set(suite, task, backbone, with_upstream) if with_upstream else in_domain_set(suite, task, backbone)
    trained_on = trained_on_label(task, with_upstream)
    base = suite.profile.tve
    cfg = in_domain_config(base, len(train), len(suite.upstream[0]))
    probe = ScalingProbe(suite, backbone, n_test_images or suite.profile.scaling.n_test_images,
                         suite.tasks_of(backbone))
    t0 = time.time()
    frames = [_rows(probe, suite.explainer(backbone), UPSTREAM, dataclasses.replace(
        base, n_images=min(base.n_images, len(suite.upstream[0]))), suite.tve_history(backbone))]
    ckpt = suite.tve_checkpoint(backbone, cfg, trained_on=trained_on)
    expl = suite.pretrained_tve(backbone, cfg, ckpt, suite.tve_radius(backbone, cfg), {}, train_set=train)
    frames.append(_rows(probe, expl, trained_on, cfg, load_torch(ckpt)["history"]))
    info = device_info(suite.device)
    df = pd.concat(frames).assign(threads=info["threads"], cpu=info["cpu"], git_commit=git_commit(),
                                  wall_seconds=time.time() - t0)
    ours = df.trained_on == trained_on  # not the label parsed back: the values it was built from
    df["pretrain_task"] = df.trained_on.where(~ours, task)  # the downstream task in the pre-training set
    df["n_upstream_images"] = ours * with_upstream
    df = df[IN_DOMAIN_COLUMNS + [c for c in df.columns if c not in IN_DOMAIN_COLUMNS]]
    return upsert_csv(df, suite.path("tve", "in_domain.csv"), IN_DOMAIN_KEYS)


def main(argv: list[str] | None = None) -> None:
    ap = study_parser(__doc__)
    ap.add_argument("--task", required=True, help="the downstream task whose training images TVE pre-trains on")
    ap.add_argument("--with-upstream", type=int, default=0, metavar="N",
                    help="pre-train on N images of the profile's pre-training set and the task's images together")
    a = ap.parse_args(argv)
    suite = open_suite(ap, a)
    try:
        if a.with_upstream:
            mixed_set(suite, a.task, a.backbone, a.with_upstream)
        else:
            in_domain_set(suite, a.task, a.backbone)
    except ValueError as e:
        ap.error(str(e))
    df = run_in_domain(suite, a.backbone, a.task, a.test_images or None, a.with_upstream)
    mine = df[(df.backbone == a.backbone) & df.trained_on.isin([UPSTREAM, trained_on_label(a.task, a.with_upstream)])]
    print(mine.pivot_table(index=["task", "head"], columns="trained_on", values="spearman").round(3).to_string())


if __name__ == "__main__":
    main()
