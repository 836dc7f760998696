"""The settings a run profile is made of: one frozen dataclass per part of the suite.

`tve_lib.config` builds the `smoke`, `cpu` and `paper` profiles from these (and re-exports them, so
``from tve_lib.config import TVEConfig`` keeps working); every field's comment says what it sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BackboneSpec:
    """A timm architecture and how the suite obtains its weights."""

    name: str  # short name used in results: vit, deit, swin
    timm_name: str
    kwargs: dict = field(default_factory=dict)
    pretrained: bool = False  # paper: load pretrained weights (offline); else train on upstream


def check_positive(obj: Any, fields: tuple[str, ...]) -> None:
    """Each of ``obj``'s ``fields`` is a count or size > 0 (or None where the field allows it), or a clear error
    naming it when the profile is made: a head trained for -2 epochs was an untrained head, silently."""
    for f in fields:
        v = getattr(obj, f)
        if v is not None and not v > 0:
            raise ValueError(f"{type(obj).__name__}.{f} must be > 0, got {v!r}")


@dataclass(frozen=True)
class BackboneTrain:
    epochs: int = 5
    n_images: int = 60000
    batch_size: int = 128
    lr: float = 3e-3
    augment: bool = False  # flips and 2-px shifts; off in cpu: 4-5 epochs is too short to profit
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        check_positive(self, ("epochs", "n_images", "batch_size", "lr"))


@dataclass(frozen=True)
class HeadTrain:
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-2
    mlp_hidden: int | None = None  # None: the embedding size
    standardize: bool = True  # train on standardised embeddings, folded into the first layer after

    def __post_init__(self) -> None:
        check_positive(self, ("epochs", "batch_size", "lr", "mlp_hidden"))


@dataclass(frozen=True)
class TVEConfig:
    """TVE pre-training; the defaults are the cpu profile's, chosen by measurement (notebook 03b and
    docs/benchmarks.md): the tapped explainer with g(x) as a token, on dense, stored targets of augmented
    upstream images."""

    # "tapped": a few blocks on the frozen backbone's own tokens (explaining costs ~one inference);
    # "tapped_global": the same blocks also attend to g(x), the full-image embedding, as one more token: at the same
    # cost, 9/18 settings at Spearman >= 0.85 against 7/18 (docs/benchmarks.md, "The cpu run of 2026-12-05");
    # "two": independent ViT trunks (the official shape); "shared": one trunk, two heads
    arch: str = "tapped_global"
    # width 64 (the cpu backbones' own; channel MLP 256 as before) at twice the epochs matched width 128 at
    # 3000 x 40 on the cpu backbones and explains at ~0.4-0.5x inference against ~0.3x (docs/benchmarks.md,
    # "A narrower explainer on all three backbones"); the MLP of 128 lost Swin's binary-MLP Fid+ there
    depth: int = 2
    embed_dim: int = 64
    num_heads: int = 4
    mix_hidden: int = 256
    init_from_backbone: bool = True  # trunk shapes: initialise from the backbone where names/shapes agree
    residual: bool = True  # Φ⁻ = g(x) + Δ: the remove branch predicts the change from the full image
    keep_weight: float = 1.0  # weight of the keep-branch MSE
    radius: int | None = None  # None: scales with the grid, r = round(2 G / 14) (r=2 at 14x14)
    windows_per_image: int = 1  # K of the online sampler; K=1 is the official setting; K >= G²: every window
    # "dense": every window of every image from a stored target set (tve_lib.explainers.tve_targets), reused each epoch;
    # "online": K windows drawn per image per step, targets computed on the fly (upstream sets too big to store)
    sampler: str = "dense"
    target_dtype: str = "float16"  # the target store's precision
    # masked copies per backbone call when computing targets: 128-256 run the tiny cpu backbones ~2x faster
    # than 1024 (cache-resident activations); 256 beat 128 by 5-12 % in bf16 and fp32 on the AMX machine
    # (docs/benchmarks.md, "bf16 inference on this CPU"); larger on a GPU
    target_batch_size: int = 256
    tap_layers: int = 4  # the tapped shapes: how many of the backbone's last token maps it reads
    tap_pixels: bool = True  # the tapped shapes: also each player's own pixels
    # weight of the within-image part of the squared error (every window only): 1 = the plain MSE
    centred_weight: float = 4.0
    # "plain": every embedding dimension's squared error alike (the method's MSE); "whitened": each over its
    # variance in the held-out probe's targets, so low-variance directions a downstream head may read count too
    loss_dims: str = "plain"
    # upstream augmentation (tve_lib.augment.AUGMENTS): this fraction of the pre-training images replaced, in
    # thirds, by 2x2 composites of half-size upstream images, zoomed and shifted single ones, and generated
    # letters; at 0.75 it raised every backbone's median and worst setting on the probe (docs/benchmarks.md)
    augment: str = "composite_glyphs"
    augment_frac: float = 0.75
    # 3000 images beat 2000 at the same optimiser steps in the trials of docs/benchmarks.md (the store of 3000
    # images costs ~100-170 s on the cpu ViT); 80 epochs of the width-64 explainer cost what 40 of width 128 did
    epochs: int = 80
    n_images: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    n_heldout: int = 512


def check_curve_axes(sparsities, perturbation_steps, deletion_steps) -> None:
    """The x axes of the perturbation curves: at least two distinct finite fractions each (an AUC needs two points),
    sparsities in [0, 1), POS/NEG steps in [0, 1], and a whole number of deletion steps >= 1; a clear error naming
    the field otherwise, when the profile is made rather than after the explainers are trained."""
    for name, xs, hi_open in (("sparsities", sparsities, True), ("perturbation_steps", perturbation_steps, False)):
        ok = isinstance(xs, (tuple, list)) and all(isinstance(x, numbers.Real) and not isinstance(x, bool)
                                                    and math.isfinite(x) for x in xs)
        if not ok or len(set(xs)) < 2 or len(set(xs)) != len(xs) or min(xs) < 0 \
                or (max(xs) >= 1 if hi_open else max(xs) > 1):
            raise ValueError(f"{name} must be at least 2 distinct fractions in [0, 1{')' if hi_open else ']'} (the "
                             f"AUC's x axis), got {xs!r}")
    if isinstance(deletion_steps, bool) or not isinstance(deletion_steps, numbers.Integral) or deletion_steps < 1:
        raise ValueError(f"deletion_steps must be a whole number >= 1, got {deletion_steps!r}")


@dataclass(frozen=True)
class EvalConfig:
    n_transfer: int = 100
    n_fidelity: int = 200
    n_shapley: int = 8
    shapley_groups: tuple[int, int] = (3, 4)
    sparsities: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    budgets: tuple[int, ...] = (150, 1000)
    batch_size: int = 128  # images per backbone call (embeddings, sampling explainers); 128: see masked_batch_size
    n_gallery: int = 4
    bootstrap: int = 1000
    # fidelity (notebook 03); defaults are the cpu sizes
    # images per backbone call when scoring masked copies: on 2 CPU cores the tiny backbones run ~1.5-2x
    # faster at 128 than at 1024 (measured, docs/benchmarks.md); the paper profile sets its own
    masked_batch_size: int = 128
    perturbation_steps: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # POS/NEG x
    deletion_steps: int = 10  # deletion/insertion curves at i/steps of the players
    budget_images: tuple[int, ...] = (200, 24)  # images evaluated at each of `budgets` (<= n_fidelity)
    ig_steps: int = 16
    shapley_topk: float = 0.25  # top-k overlap with exact Shapley: this fraction of the groups
    # amortised task-specific explainer (FastSHAP / ViT-Shapley style), trained per task and head
    fastshap_images: int = 384  # training images of the task
    fastshap_samples: int = 32  # coalitions per training image (paired), evaluated once and reused
    fastshap_epochs: int = 6
    fastshap_depth: int = 2
    fastshap_batch: int = 64
    fastshap_lr: float = 1e-3
    fastshap_eval_images: int = 32  # Fidelity+ AUC after each epoch, on this many test images
    # ablations (notebook 03b): variants are pre-trained with this reduced budget
    ablation_epochs: int = 30
    ablation_images: int = 300
    ablation_n_images: int = 100  # test images per task for the ablation metrics
    ablation_radii: tuple[int, ...] = (-1, 0, 1, 2)  # the radius variants: offsets from the reference radius

    def __post_init__(self) -> None:
        check_curve_axes(self.sparsities, self.perturbation_steps, self.deletion_steps)


@dataclass(frozen=True)
class OperatorConfig:
    """The removal-operator study (notebook 03c, `tve_lib.studies.operators`): notebook 03's maps scored
    again with each operator removing the players (`tve_lib.operators`)."""

    names: tuple[str, ...] = ("mean", "blur", "other")
    n_images: int = 64  # the first n of notebook 03's evaluation images per task (a reduced count)
    blur_sigma: float = 0.0  # pixels; 0: one patch (a suite choice: a patch's detail is gone, its colour kept)
    pool_size: int = 512  # donor images of the "other" operator: a seeded sample of the task's test split


@dataclass(frozen=True)
class ScalingConfig:
    """The scaling study of TVE pre-training (notebook 03b): budgets of both samplers, measured.

    ``dense``: (images, epochs) with every window of every image; ``online``: (images, epochs, K)
    with K windows drawn per image per step. Each budget is the profile's TVEConfig with those
    fields replaced; one of the dense budgets is the profile's own (reused from notebook 01).
    ``continued``: dense (images, epochs) that train the profile's own explainer further, from its weights on a
    fresh warm-up and cosine schedule; their steps and seconds count the profile's pre-training too."""

    backbones: tuple[str, ...] = ("vit",)
    n_test_images: int = 40  # test images per task scored for every budget
    dense: tuple[tuple[int, int], ...] = ()
    online: tuple[tuple[int, int, int], ...] = ()
    continued: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class LTXConfig:
    """LTX / pLTX (docs/method.md §3): pre-training per task, then per-image fine-tuning."""

    mode: str = "predicted"  # CE target: "predicted" (class on the full image) or "target" (label)
    mask_penalty: str = "mean"  # "mean": λ·mean(m); "bce": λ·BCEWithLogits(m, 0) as the official code
    lambda_mask: float = 1.0
    upsample: str = "bilinear"  # G×G mask -> pixels: "bilinear" (official) or "nearest" (player grid)
    n_train: int = 384  # training images of the task used for pre-training (pLTX); defaults: cpu sizes
    epochs: int = 6
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.2
    n_explain: int = 32  # test images per task explained (fine-tuned) by LTX
    ft_steps: int = 25  # single-image fine-tuning steps from pLTX (step 0 is pLTX itself)
    ft_lr: float = 2e-3
    ft_batch: int = 32  # images fine-tuned at once (one vectorised explainer copy per image)
    # test_metric selection: stop at the first step whose POS-AUC is below this (suite units: percent of the
    # 0..0.9 range; the official 6.0 is on a 0..90 scale, 6.0 / 0.9 = 6.67: the label flips at 10 % removed)
    stop_pos_auc: float = 6.67
    time_repeats: int = 3  # timed repeats of the cheap explainers (pLTX, TVE, inference) in notebook 05


@dataclass(frozen=True)
class XVecConfig:
    """The explainability vector (docs/method.md §4): self-explaining models and task arithmetic."""

    backbones: tuple[str, ...] = ("vit",)  # the profile's backbones notebook 06 runs on
    train_blocks: int = 2  # last backbone blocks fine-tuned (plus the final norm); -1: all
    expl_hidden: int = 128  # width of the explanation head's per-token MLP
    steps: int = 120  # optimiser steps of every training (a)-(d): same steps, seed, data order
    batch_size: int = 64
    lr: float = 5e-4  # fine-tuned backbone blocks
    head_lr: float = 3e-3  # classification and explanation heads
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    expl_weight: float = 1.0  # weight of the explanation loss in (b) and (d)
    n_source: int = 256  # upstream-train images with KernelSHAP supervision: the source training set
    n_source_val: int = 128  # upstream-val images on which λ is chosen
    n_target_sup: int = 64  # target-train images with KernelSHAP supervision (upper bound (d))
    shap_budget: int = 512  # KernelSHAP model calls per supervised image
    lambdas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)  # must contain 0
    select_metric: str = "fid_gap"  # source-val criterion for λ: fid_gap (Fid+ AUC − Fid− AUC) or a summary metric
    max_acc_drop: float = 0.02  # λ may cost at most this much source-val accuracy
    n_eval: int = 64  # target-test images per model for explanation quality
    n_accuracy: int | None = None  # target-test images for accuracy; None: the whole test split
    n_shapley: int = 4  # of the n_eval images, how many get exact Shapley values on the coarse grid
    shapley_groups: tuple[int, int] | None = None  # the coarse grid; None: eval.shapley_groups
    compare_budget: int = 150  # KernelSHAP calls of the paper's comparison
    unrelated_tasks: tuple[str, ...] = ("digits",)  # targets from a less-related domain (claim 3)
    bench_batch_size: int = 32  # throughput rows (a batch size notebook 04 also times)
    bench_repeats: int = 3


@dataclass(frozen=True)
class BenchConfig:
    """Throughput benchmark (notebook 04). A row whose measurement is predicted to take longer than
    ``max_measure_s`` (warm-up plus repeats), or that comes after its backbone's share of the
    section's time budget, is estimated instead, and says so (``estimated``, ``basis``)."""

    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    repeats: int = 5
    warmup: int = 1
    budgets: tuple[int, ...] = (150, 1000)  # KernelSHAP and LIME model calls per image
    # the shapes timed; TVEConfig.arch is always timed, first
    tve_archs: tuple[str, ...] = ("tapped_global", "tapped", "two", "shared")
    n_tasks: int = 3  # task scaling: explain for 1..n_tasks heads
    task_batch_size: int = 32  # the largest benchmarked batch size <= this is used
    task_methods: tuple[str, ...] = ("tve", "kernelshap", "fastshap", "gradcam")  # shared, per-task, per-head
    max_measure_s: float = 5.0  # cap per measured row, warm-up included
    time_budget_s: float = 150.0  # profile-size section, split over its backbones (0: no limit)
    paper_size: bool = True  # also time ViT-B/DeiT-B/Swin-B at 224 px with random weights
    paper_backbones: tuple[str, ...] = ("vit", "deit", "swin")
    paper_batch_sizes: tuple[int, ...] = (1, 8, 32, 64)  # paper size on GPU
    paper_repeats: int = 5
    paper_max_measure_s: float = 60.0
    paper_time_budget_s: float = 360.0  # on GPU: fits one 10-minute job with the profile section
    # paper size on CPU: a ViT-B forward takes ~0.2 s per image; batch 8 is the smallest the TVE
    # throughput target (>= 0.33x inference at batch >= 8) reads
    paper_batch_sizes_cpu: tuple[int, ...] = (1, 8)
    paper_repeats_cpu: int = 3
    paper_max_measure_s_cpu: float = 20.0
    paper_time_budget_s_cpu: float = 240.0  # with the cpu profile's section: notebook 04 in <= 8 min
    paper_task_batch_size_cpu: int = 1  # task scaling where TVE is measured, not estimated
    paper_head_classes: tuple[int, ...] = (2, 10, 10)  # Cats-vs-dogs, Imagenette, CIFAR-10
    # the paper loader (tve_lib.studies.loading): generated ImageNet-like JPEGs read at 224 px per worker count,
    # beside the images/s one paper-size TVE pre-training step consumes (batch loader_step_batch, random weights)
    loader_images: int = 1024  # one pass at 0 workers takes a few seconds: worker start-up is amortised
    loader_workers: tuple[int, ...] = (0, 1, 2)
    loader_batch_size: int = 32
    loader_step_batch: int = 8
    # one fidelity batch at paper size (ViT-B, random weights): its seconds and peak memory beside the step's
    fidelity_batch: int = 32


@dataclass(frozen=True)
class WalkConfig:
    """The walkthroughs at the top of notebooks 01 and 02 (`tve_lib.studies.walkthrough`)."""

    image: int = 0  # the upstream validation image walked through (notebook 01) / test image (02)
    player: int | None = None  # None: the player at the centre of the grid
    n_images: int = 8  # live optimiser steps of a fresh explainer: on this many upstream images
    batch_size: int = 4
    steps: int = 30
    windows: int = 0  # windows drawn per image per live step; 0: every window (2·G² backbone passes per image)


#: `Profile.precision`: "auto" (bf16 on CUDA, fp32 on CPU), "native" (bf16 on CUDA and on a CPU with bf16
#: instructions, fp32 elsewhere), "fp32", "bf16"
PRECISIONS = ("auto", "native", "fp32", "bf16")


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
    # numeric precision of the frozen backbone's passes (embeddings, window targets, tapped tokens, logits) and
    # of the TVE explainer's forward (`tve_lib.backbones.Backbone.amp_dtype`): "auto" = bf16 autocast on a CUDA
    # device that supports it, fp32 elsewhere (a CPU run is today's fp32 path, bit for bit); "native" = also bf16
    # on a CPU with bf16 instructions (AVX512-BF16, AMX) for the passes without gradients (`Backbone.pass_dtype`)
    # and the training steps of the suite's backbones and explainer (`Backbone.training_autocast`; every built-in
    # profile's); "fp32"; "bf16" (autocast on any device). Exact references (Shapley enumeration, the exact window
    # quantity) stay fp32
    precision: str = "auto"
    # torch.compile backend of the backbone's passes ("inductor", "eager", ...); "" = not compiled
    compile: str = ""
    n_upstream_val: int = 5000
    # processes decoding a file-backed image set (ImageFolder, torchvision sets; tve_lib.loader): -1 = the
    # cores available, 0 = in the calling process. The in-memory cpu sets never use them
    data_workers: int = -1
    # how a file-backed set is decoded for a backbone: "backbone" = that backbone's timm data config
    # (tve_lib.preprocess: interpolation, crop percentage; paper), "plain" = resize + centre crop at img_size
    preprocess: str = "plain"
    # which backbone x task settings the evaluation notebooks (02, 03, 03b, 03c, 05) run: "all", or "diagonal" (backbone
    # i with task i: each backbone and each task once; the paper dry run, where one exact window quantity costs 2·G²
    # ViT-B passes per image)
    pairs: str = "all"
    backbone_train: BackboneTrain = BackboneTrain()
    head_train: HeadTrain = HeadTrain()
    tve: TVEConfig = TVEConfig()
    eval: EvalConfig = EvalConfig()
    scaling: ScalingConfig = ScalingConfig()
    bench: BenchConfig = BenchConfig()
    xvec: XVecConfig = XVecConfig()
    ltx: LTXConfig = LTXConfig()
    walk: WalkConfig = WalkConfig()
    operators: OperatorConfig = OperatorConfig()

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} for profile {self.name!r}; expected one of: "
                             f"{', '.join(PRECISIONS)}")
        if not isinstance(self.compile, str):
            raise ValueError(f"compile must be a torch.compile backend name (e.g. 'inductor') or '' (off), "
                             f"got {self.compile!r}")

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
