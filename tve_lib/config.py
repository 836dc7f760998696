"""Run profiles: `smoke` (tests), `cpu` (offline default), `paper` (ViT-B/DeiT-B/Swin-B, GPU).

One code path serves all three; a profile only sets sizes and data/weight sources. Every
notebook reads its sizes from here, so no size literal lives in a notebook. Override any field
with dotted keys: ``get_profile("cpu", {"tve.epochs": 2})``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BackboneSpec:
    """A timm architecture and how the suite obtains its weights."""

    name: str  # short name used in results: vit, deit, swin
    timm_name: str
    kwargs: dict = field(default_factory=dict)
    pretrained: bool = False  # paper: load pretrained weights (offline); else train on upstream


@dataclass(frozen=True)
class BackboneTrain:
    epochs: int = 3
    n_images: int = 60000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05


@dataclass(frozen=True)
class HeadTrain:
    epochs: int = 60
    batch_size: int = 256
    lr: float = 3e-3
    mlp_hidden: int | None = None  # None: the embedding size


@dataclass(frozen=True)
class TVEConfig:
    arch: str = "shared"  # "shared" trunk with two heads, or "two" independent trunks (official)
    depth: int = 4
    embed_dim: int = 64
    num_heads: int = 2
    mix_hidden: int = 256
    init_from_backbone: bool = True
    radius: int | None = None  # None: scales with the grid, r = round(2 G / 14) (r=2 at 14x14)
    windows_per_image: int = 4  # K; K=1 is the official setting
    epochs: int = 4
    n_images: int = 60000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    n_heldout: int = 512


@dataclass(frozen=True)
class EvalConfig:
    n_transfer: int = 100
    n_fidelity: int = 200
    n_shapley: int = 8
    shapley_groups: tuple[int, int] = (3, 4)
    sparsities: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    budgets: tuple[int, ...] = (150, 1000)
    batch_size: int = 256
    n_gallery: int = 4
    bootstrap: int = 1000


@dataclass(frozen=True)
class LTXConfig:
    """LTX / pLTX (METHOD.md §3): pre-training per task, then per-image fine-tuning."""

    mode: str = "predicted"  # CE target: "predicted" (class on the full image) or "target" (label)
    mask_penalty: str = "mean"  # "mean": λ·mean(m); "bce": λ·BCEWithLogits(m, 0) as the official code
    lambda_mask: float = 1.0
    upsample: str = "bilinear"  # G×G mask -> pixels: "bilinear" (official) or "nearest" (player grid)
    n_train: int = 512  # training images of the task used for pre-training (pLTX)
    epochs: int = 8
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.2
    n_explain: int = 32  # test images per task explained (fine-tuned) by LTX
    ft_steps: int = 25  # single-image fine-tuning steps from pLTX (step 0 is pLTX itself)
    ft_lr: float = 2e-3
    ft_batch: int = 32  # images fine-tuned at once (one vectorised explainer copy per image)
    stop_pos_auc: float = 6.0  # test_metric selection: stop once POS-AUC (0..90 scale) is below this


@dataclass(frozen=True)
class XVecConfig:
    """The explainability vector (METHOD.md §4): self-explaining models and task arithmetic."""

    backbones: tuple[str, ...] = ("vit",)  # the profile's backbones notebook 06 runs on
    train_blocks: int = 2  # last backbone blocks fine-tuned (plus the final norm); -1: all
    expl_hidden: int = 128  # width of the explanation head's per-token MLP
    steps: int = 150  # optimiser steps of every training (a)-(d): same steps, seed, data order
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    expl_weight: float = 1.0  # weight of the explanation loss in (b) and (d)
    n_source: int = 256  # upstream-train images with KernelSHAP supervision: the source training set
    n_source_val: int = 128  # upstream-val images on which λ is chosen
    n_target_sup: int = 96  # target-train images with KernelSHAP supervision (upper bound (d))
    shap_budget: int = 512  # KernelSHAP model calls per supervised image
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5)
    select_metric: str = "fid_gap"  # source-val criterion for λ: fid_gap | neg_fid_minus | accuracy
    max_acc_drop: float = 0.02  # λ may cost at most this much source-val accuracy
    n_eval: int = 64  # target-test images per model for explanation quality
    n_shapley: int = 4  # of those, how many get exact Shapley values on the coarse grid
    compare_budget: int = 150  # KernelSHAP calls of the paper's comparison


@dataclass(frozen=True)
class Profile:
    name: str
    img_size: int
    upstream: str
    tasks: tuple[str, ...]
    backbones: tuple[BackboneSpec, ...]
    max_grid: int = 16  # explanation grid: the finest token stride whose grid is <= this
    removal_value: float = 0.0  # in normalised space: 0 is the dataset mean colour
    mean: tuple[float, ...] | None = None  # None: the backbone's pretrained_cfg
    std: tuple[float, ...] | None = None
    n_upstream_val: int = 5000
    backbone_train: BackboneTrain = BackboneTrain()
    head_train: HeadTrain = HeadTrain()
    tve: TVEConfig = TVEConfig()
    eval: EvalConfig = EvalConfig()
    xvec: XVecConfig = XVecConfig()
    ltx: LTXConfig = LTXConfig()

    def backbone(self, name: str) -> BackboneSpec:
        """The spec of backbone ``name``; a clear error for an unknown name."""
        for b in self.backbones:
            if b.name == name:
                return b
        known = ", ".join(b.name for b in self.backbones)
        raise KeyError(f"unknown backbone {name!r} for profile {self.name!r}; expected one of: {known}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, *sections: str) -> str:
        """A short hash of the named sections (all when none): checkpoints key on it."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


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
    ),
    "smoke": Profile(
        name="smoke", img_size=32, upstream="fashion_mnist", tasks=CPU_TASKS,
        backbones=_tiny_backbones(32, 2, 32), mean=FASHION_MEAN, std=FASHION_STD,
        n_upstream_val=256,
        backbone_train=BackboneTrain(epochs=1, n_images=2048, batch_size=128),
        head_train=HeadTrain(epochs=10),
        tve=TVEConfig(depth=1, embed_dim=32, mix_hidden=64, epochs=1, n_images=512,
                      batch_size=64, n_heldout=64),
        eval=EvalConfig(n_transfer=4, n_fidelity=8, n_shapley=2, budgets=(32, 64),
                        sparsities=(0.0, 0.3, 0.6, 0.9), n_gallery=2, bootstrap=50),
    ),
    "paper": Profile(
        name="paper", img_size=224, upstream="imagefolder",
        tasks=("pets_binary", "imagenette", "cifar10"),
        backbones=(
            BackboneSpec("vit", "vit_base_patch16_224", pretrained=True),
            BackboneSpec("deit", "deit_base_distilled_patch16_224", pretrained=True),
            BackboneSpec("swin", "swin_base_patch4_window7_224", pretrained=True),
        ),
        n_upstream_val=5000,
        head_train=HeadTrain(epochs=30),
        tve=TVEConfig(arch="two", depth=12, embed_dim=768, num_heads=12, mix_hidden=1024,
                      windows_per_image=1, epochs=10, n_images=1_281_167, batch_size=64,
                      lr=1e-4, n_heldout=2048),
        eval=EvalConfig(n_transfer=200, n_fidelity=1000, n_shapley=16, batch_size=128),
    ),
}


def _set_dotted(obj: Any, key: str, value: Any, full: str = "") -> Any:
    head, _, rest = key.partition(".")
    if not dataclasses.is_dataclass(obj) or head not in {f.name for f in dataclasses.fields(obj)}:
        raise KeyError(f"unknown profile field {(full or key)!r}")
    if rest:
        value = _set_dotted(getattr(obj, head), rest, value, full or key)
    elif isinstance(getattr(obj, head), tuple) and isinstance(value, list):
        value = tuple(value)
    return dataclasses.replace(obj, **{head: value})


def get_profile(name: str, overrides: dict[str, Any] | None = None) -> Profile:
    """The named profile with dotted-key ``overrides`` applied (e.g. ``{"tve.epochs": 1}``)."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; expected one of: {', '.join(PROFILES)}")
    prof = PROFILES[name]
    for k, v in (overrides or {}).items():
        prof = _set_dotted(prof, k, v)
    return prof
