"""Run profiles: `smoke` (tests), `cpu` (offline default), `paper` (ViT-B/DeiT-B/Swin-B, GPU).

One code path serves all three; a profile only sets sizes and data/weight sources. Every
notebook reads its sizes from here, so no size literal lives in a notebook. Override any field
with dotted keys, each checked against its field's type: ``get_profile("cpu", {"tve.epochs": 2})``.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import types
import typing
from typing import Any

import numpy as np

from .settings import (  # noqa: F401  (re-exported: the profiles' parts are imported from here)
    PRECISIONS,
    BackboneSpec,
    BackboneTrain,
    BenchConfig,
    EvalConfig,
    HeadTrain,
    LTXConfig,
    OperatorConfig,
    Profile,
    ScalingConfig,
    TVEConfig,
    WalkConfig,
    XVecConfig,
)

FASHION_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_STD = (0.3530, 0.3530, 0.3530)


def _tiny_backbones(dim: int, depth: int, swin_dim: int) -> tuple[BackboneSpec, ...]:
    heads = max(1, dim // 32)
    return (
        BackboneSpec("vit", "vit_tiny_patch16_224",
                     dict(img_size=32, patch_size=4, embed_dim=dim, depth=depth, num_heads=heads)),
        BackboneSpec("deit", "deit_tiny_distilled_patch16_224",
                     dict(img_size=32, patch_size=4, embed_dim=dim, depth=depth, num_heads=heads)),
        BackboneSpec("swin", "swin_tiny_patch4_window7_224",
                     dict(img_size=32, patch_size=4, window_size=4, embed_dim=swin_dim,
                          depths=(2, 2), num_heads=(heads, 2 * heads))),
    )


CPU_TASKS = ("fashion_binary", "digits", "fashion_mosaic")

PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu", img_size=32, upstream="fashion_mnist", tasks=CPU_TASKS,
        backbones=_tiny_backbones(64, 4, 48), mean=FASHION_MEAN, std=FASHION_STD,
        # on a CPU with bf16 instructions, the backbone's passes without gradients (target stores, tokens,
        # metrics) in bf16, 1.6-2.1x faster there, and the training steps of the backbones and the explainer,
        # 21-34 % faster with unfused attention; the probe's Spearman within one retraining's noise
        # (docs/benchmarks.md, "bf16 inference on this CPU", "bf16 training steps on this CPU"); fp32 elsewhere
        precision="native",
        # dense budgets from the start up to the profile's (3000 images x 80 epochs), 1/94 of its steps up; above it,
        # the profile's explainer trained further on 4000 images x 20 epochs (1.33x its steps in all): a third of
        # what 4000 x 80 from the start costs the run, for less than half its median gain on the probe (more in the
        # worst setting)
        # (docs/benchmarks.md, "The scaling study's budget above the profile's"); the curve further out, from the
        # start, is `scaling_extended`'s, which the whole run's hour cannot hold; online (K = 1) from 1,000
        # image-steps to 32x that
        scaling=ScalingConfig(dense=((125, 20), (250, 30), (500, 60), (1000, 90), (3000, 80)), continued=((4000, 20),),
                              online=((1000, 1, 1), (2000, 1, 1), (2000, 4, 1), (2000, 8, 1), (2000, 16, 1))),
    ),
    "smoke": Profile(
        name="smoke", img_size=32, upstream="fashion_mnist", tasks=CPU_TASKS,
        backbones=_tiny_backbones(32, 2, 32), mean=FASHION_MEAN, std=FASHION_STD,
        precision="native",  # as cpu: the notebooks' test runs the cpu profile's path
        n_upstream_val=256,
        backbone_train=BackboneTrain(epochs=1, n_images=2048, batch_size=128),
        head_train=HeadTrain(epochs=10),
        tve=TVEConfig(depth=1, embed_dim=32, mix_hidden=64, epochs=2, n_images=256,
                      batch_size=64, n_heldout=64),
        scaling=ScalingConfig(n_test_images=4, dense=((32, 1), (64, 1), (64, 2), (128, 2), (256, 2)),
                              continued=((256, 1),),
                              online=((64, 1, 1), (128, 1, 1), (256, 1, 1), (256, 2, 1), (256, 4, 1))),
        eval=EvalConfig(n_transfer=4, n_fidelity=8, n_shapley=2, budgets=(32, 64),
                        sparsities=(0.0, 0.3, 0.6, 0.9), n_gallery=2, bootstrap=50, masked_batch_size=256,
                        shapley_groups=(2, 3),
                        perturbation_steps=(0.0, 0.3, 0.6, 0.9), deletion_steps=4, budget_images=(8, 4),
                        ig_steps=4, fastshap_images=64, fastshap_samples=8, fastshap_epochs=2,
                        fastshap_depth=1, fastshap_batch=32, fastshap_eval_images=4,
                        ablation_epochs=1, ablation_images=256, ablation_n_images=8),
        bench=BenchConfig(batch_sizes=(1, 4), budgets=(16, 32), task_batch_size=4, max_measure_s=1.0,
                          time_budget_s=20.0, paper_backbones=("vit",), paper_batch_sizes_cpu=(1,),
                          paper_repeats_cpu=1, paper_max_measure_s_cpu=3.0, paper_time_budget_s_cpu=15.0,
                          loader_images=16, loader_batch_size=8, loader_step_batch=1, fidelity_batch=2),
        xvec=XVecConfig(expl_hidden=16, steps=4, batch_size=16, n_source=32, n_source_val=16, n_target_sup=8,
                        shap_budget=160, lambdas=(0.0, 1.0), n_eval=8, n_shapley=2, shapley_groups=(2, 2),
                        n_accuracy=200, bench_batch_size=4, bench_repeats=1),
        ltx=LTXConfig(n_train=64, epochs=1, n_explain=4, ft_steps=3, ft_batch=4, time_repeats=1),
        walk=WalkConfig(n_images=4, batch_size=2, steps=4),
        operators=OperatorConfig(n_images=4, pool_size=32),
    ),
    "paper": Profile(
        name="paper", img_size=224, upstream="imagefolder", preprocess="backbone",
        # bf16 wherever the hardware computes it (a GPU; a CPU with AVX512-BF16 or AMX, where the dry run then
        # computes what a GPU run does, about twice as fast as fp32); exact references stay fp32
        precision="native",
        tasks=("pets_binary", "imagenette", "cifar10"),
        backbones=(
            BackboneSpec("vit", "vit_base_patch16_224", pretrained=True),
            BackboneSpec("deit", "deit_base_distilled_patch16_224", pretrained=True),
            BackboneSpec("swin", "swin_base_patch4_window7_224", pretrained=True),
        ),
        n_upstream_val=5000,
        head_train=HeadTrain(epochs=30),
        # ImageNet is too large to store every window: the official online sampler (K=1), no augmentation
        tve=TVEConfig(arch="tapped_global", depth=4, embed_dim=768, num_heads=12, mix_hidden=1024, sampler="online",
                      windows_per_image=1, centred_weight=1.0, augment="none", epochs=10, n_images=1_281_167,
                      batch_size=64, lr=1e-4, n_heldout=2048, target_batch_size=512),
        scaling=ScalingConfig(n_test_images=100, online=((100_000, 1, 1), (200_000, 1, 1), (400_000, 1, 1),
                                                         (800_000, 1, 1), (1_281_167, 1, 1))),
        eval=EvalConfig(n_transfer=200, n_fidelity=1000, n_shapley=16, batch_size=128, masked_batch_size=256,
                        budget_images=(1000, 200), fastshap_images=10000, fastshap_epochs=20,
                        fastshap_depth=6, fastshap_eval_images=200, ablation_epochs=2,
                        ablation_images=100_000, ablation_n_images=500),
        bench=BenchConfig(paper_size=False, max_measure_s=60.0, time_budget_s=0.0,  # profile size is paper size
                          fidelity_batch=256),  # eval.masked_batch_size: the batch the metrics run on a GPU
        xvec=XVecConfig(backbones=("vit", "deit", "swin"), train_blocks=4, expl_hidden=768, steps=3000,
                        lr=1e-5, head_lr=1e-3, n_source=4000, n_source_val=1000, n_target_sup=1000,
                        shap_budget=1024, lambdas=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5), n_eval=500,
                        n_shapley=8, unrelated_tasks=()),
        # official LTX loss for ViT-B (λ = 50 on BCEWithLogits of the sigmoided mask)
        ltx=LTXConfig(mask_penalty="bce", lambda_mask=50.0, n_train=1000, epochs=30, n_explain=200, ft_batch=8),
        walk=WalkConfig(n_images=4, batch_size=2, steps=10),  # each step: 2 images x 2·G² ViT-B passes
        operators=OperatorConfig(n_images=200, pool_size=1000),
    ),
}


def dry_run_profile(paper: Profile, name: str = "paper-dry", backbones: tuple[BackboneSpec, ...] | None = None,
                    img_size: int | None = None, players: int = 196) -> Profile:
    """``paper`` at its true model sizes with random weights (the suite trains each backbone for one tiny
    epoch instead of loading weights) on generated data (`tve_lib.synthetic.write_dry_data`), every image
    count and step cut to a handful: ``./run_all.sh --profile paper --dry-run`` proves the whole path and
    measures nothing. ``backbones`` / ``img_size`` swap in tiny models (the test of the same code); ``players``
    (G², 196 for ViT-B/16 at 224 px) sizes KernelSHAP's supervision, which needs more than 2·G² calls per image:
    one source and one target image are supervised (each ≈ 400 ViT-B passes at true size)."""
    R = dataclasses.replace
    ev = R(paper.eval, n_transfer=1, n_fidelity=1, n_shapley=1, shapley_groups=(2, 2), budgets=(16, 32),
           budget_images=(2, 1), sparsities=(0.0, 0.5), perturbation_steps=(0.0, 0.5), deletion_steps=2,
           bootstrap=20, n_gallery=1, ig_steps=2, batch_size=32, masked_batch_size=64, fastshap_images=8,
           fastshap_samples=4, fastshap_epochs=1, fastshap_depth=1, fastshap_batch=4, fastshap_eval_images=1,
           ablation_epochs=1, ablation_images=2, ablation_n_images=1, ablation_radii=(0, 1))
    return R(paper, name=name, img_size=img_size or paper.img_size, pairs="diagonal",
             backbones=tuple(R(b, pretrained=False) for b in (backbones or paper.backbones)),
             # one optimiser step per backbone (a paper-size training step costs about 12 s here)
             n_upstream_val=8, backbone_train=BackboneTrain(epochs=1, n_images=8, batch_size=8),
             head_train=HeadTrain(epochs=2),
             tve=R(paper.tve, n_images=16, epochs=1, batch_size=8, n_heldout=4, target_batch_size=64),
             # five online budgets spanning 16x, as the scaling study asks, from one image-step up
             scaling=ScalingConfig(n_test_images=1, online=((1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 1, 1), (16, 1, 1))),
             eval=ev,
             bench=R(paper.bench, batch_sizes=(1,), repeats=1, budgets=(16, 32), n_tasks=2, task_batch_size=1,
                     max_measure_s=10.0, time_budget_s=30.0, loader_images=32, loader_batch_size=8,
                     loader_step_batch=1, fidelity_batch=4),
             xvec=R(paper.xvec, backbones=paper.xvec.backbones[:1], train_blocks=1, expl_hidden=16, steps=2,
                    batch_size=2, n_source=1, n_source_val=2, n_target_sup=1, shap_budget=2 * players + 8,
                    lambdas=(0.0, 1.0), n_eval=1, n_accuracy=4, n_shapley=1, shapley_groups=(2, 2), compare_budget=16,
                    bench_batch_size=1, bench_repeats=1),
             ltx=R(paper.ltx, n_train=4, epochs=1, batch_size=2, n_explain=1, ft_steps=2, ft_batch=1,
                   time_repeats=1),
             walk=WalkConfig(n_images=1, batch_size=1, steps=1, windows=4),
             operators=OperatorConfig(n_images=1, pool_size=4))


PROFILES["paper-dry"] = dry_run_profile(PROFILES["paper"])
#: the same dry run on tiny models at 32 px: what the test suite runs (tests/test_dryrun.py)
PROFILES["paper-dry-tiny"] = dry_run_profile(PROFILES["paper"], "paper-dry-tiny", _tiny_backbones(32, 2, 32), 32,
                                             players=64)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(conforms, value)``: whether ``value`` fits the field type ``hint``, and the value as the field holds it
    (lists, as JSON and YAML give them, become tuples; an integer for a float field becomes a float, so a profile
    overridden with ``3`` or ``3.0`` caches under one key)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False, value
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return False, value
        pairs = [_coerce(v, a) for v, a in zip(value, items)]
        return all(ok for ok, _ in pairs), tuple(v for _, v in pairs)
    if hint is bool:
        ok = isinstance(value, (bool, np.bool_))
        return ok, bool(value) if ok else value
    if hint in (int, float):  # numpy's numbers too (a sweep read from a table), held as Python's
        kind = numbers.Integral if hint is int else numbers.Real
        ok = isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
        return ok, hint(value) if ok else value
    if isinstance(origin or hint, type):
        return isinstance(value, origin or hint), value
    return True, value


def _literal(text: str) -> Any:
    """What a command-line ``text`` most likely means: None, a flag, an integer, a number, a comma list, or itself."""
    t = text.strip()
    if "," in t:
        return [_literal(part) for part in t.split(",")]
    low = t.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def parse_field(cls: type, name: str, text: str) -> Any:
    """The value of dataclass ``cls``'s field ``name`` from command-line ``text``, typed by the field's annotation
    as a profile override is (`get_profile`): ``"none"`` for an optional field, ``true``/``false`` for a flag,
    ``"a,b"`` for a tuple; a clear error for an unknown field or text the field cannot hold."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise ValueError(f"unknown {cls.__name__} field {name!r}; expected one of: {', '.join(hints)}")
    for candidate in (_literal(text), text):  # the text itself last: a str field holds "none" or "1" too
        ok, value = _coerce(candidate, hints[name])
        if ok:
            return value
    raise ValueError(f"{cls.__name__} field {name!r} takes {_type_name(hints[name])}, got {text!r}")


def _set_dotted(obj: Any, key: str, value: Any, full: str = "") -> Any:
    head, _, rest = key.partition(".")
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise KeyError(f"unknown profile field {(full or key)!r}")
    if rest:
        value = _set_dotted(getattr(obj, head), rest, value, full or key)
    else:
        hint = typing.get_type_hints(type(obj))[head]
        ok, held = _coerce(value, hint)
        if not ok:
            raise TypeError(f"profile field {(full or key)!r} takes {_type_name(hint)}, got {value!r}")
        value = held
    return dataclasses.replace(obj, **{head: value})


#: environment variables the runner sets (``--precision``, ``--compile``) and every notebook's Suite applies
PRECISION_ENV, COMPILE_ENV = "TVE_PRECISION", "TVE_COMPILE"


def env_overrides() -> dict[str, Any]:
    """Profile overrides from the environment: ``TVE_PRECISION`` -> ``precision``, ``TVE_COMPILE`` -> ``compile``."""
    env = {PRECISION_ENV: "precision", COMPILE_ENV: "compile"}
    return {field: os.environ[var] for var, field in env.items() if os.environ.get(var) is not None}


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """The named profile with dotted-key ``overrides`` applied (e.g. ``{"tve.epochs": 1}``)."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; expected one of: {', '.join(PROFILES)}")
    prof = PROFILES[name]
    for k, v in (overrides or {}).items():
        prof = _set_dotted(prof, k, v)
    return prof
