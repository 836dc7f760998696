"""Frozen timm backbones: `embed(x) = forward_head(forward_features(x), pre_logits=True)`.

The explanation grid is derived from the model, never hard-coded (`tve_lib.token_grids`): the finest token stride in
``model.feature_info`` whose grid is at most ``profile.max_grid`` (ViT-B/16 and Swin-B at 224 px
both give 14x14 patches of 16 px; the cpu profile's tiny models give 8x8 patches of 4 px).
In cpu/smoke the suite trains the backbones itself on the upstream set and caches them; in
paper it loads pretrained weights offline (a file in WEIGHTS_DIR or the Hugging Face cache): both
in `tve_lib.backbone_training`.

Precision and compilation (the profile's ``precision`` and ``compile``, set by `wrap`): the model
passes (`Backbone.embed`, `player_tokens`, `logits`) run under ``torch.autocast`` when
`Backbone.amp_dtype` is set (``"auto"``: bf16 on a CUDA device that supports it, none on CPU, where
the passes are exactly the plain fp32 calls) and always return float32; `Backbone.full_precision`
turns autocast off for exact references. ``"native"`` on a CPU with bf16 instructions autocasts the
passes that record no gradient (`Backbone.pass_dtype`) and the training steps of the suite's own models
(`Backbone.training_autocast`: the backbones' and the TVE explainer's, with unfused attention); the gradient
explainers' and LTX's passes through the backbone stay fp32 there. With a ``compile`` backend the passes are
``torch.compile``d lazily, as functions of the model (no wrapper module: state dicts and weight
digests are unchanged); `Backbone.uncompiled` runs them eagerly (hooks on the model's modules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import timm
import torch
from torch import nn

from .config import BackboneSpec, Profile
from .masking import apply_mask
from .operators import RemovalOperator
from .precision import amp_dtype_for, check_compile_backend, to_float32, unfused_attention
from .token_grids import block_list, derive_grid, to_player_grid, token_grid

# the largest value `Backbone.normalize` takes as a raw image in [0, 1]: a bicubic or Lanczos resize overshoots 1 a
# little; an image still in 0-255 is far above
RAW_MAX = 2.0


class Backbone(nn.Module):
    """A frozen timm model with its normalisation, grid and the shared removal operator.

    ``precision`` (`tve_lib.config.PRECISIONS`, default ``"fp32"``; `wrap` sets the profile's) decides
    `amp_dtype`, the autocast dtype of the model passes on the device the backbone lives on;
    ``compile_backend`` ("" = off) compiles them.
    """

    def __init__(self, model: nn.Module, name: str, img_size: int, mean, std,
                 max_grid: int = 16, removal_value: float = 0.0, precision: str = "fp32",
                 compile_backend: str = ""):
        super().__init__()
        self.model, self.name, self.img_size = model, name, img_size
        self.removal_value = removal_value
        self.operator: RemovalOperator | None = None  # None: the removal value (`removal`)
        amp_dtype_for(precision, "cpu")  # a clear error for an unknown precision
        self.precision = precision
        self.compile_backend = check_compile_backend(compile_backend)
        self._exact = 0  # depth of `full_precision` blocks
        self._eager = 0  # depth of `uncompiled` blocks
        self._compiled: dict[str, Callable] = {}  # lazily compiled passes (dropped on copy: `__getstate__`)
        self._finer: dict[int, bool] = {}  # `finer_token_maps` per layer count
        self.window_cache = None  # an `ItemCache` of exact window embeddings (the Suite attaches one)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.grid, self.patch = derive_grid(model, img_size, max_grid)
        self.embed_dim = int(model.num_features)
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    @property
    def n_players(self) -> int:
        return self.grid * self.grid

    # ------------------------------------------------------------------ precision and compilation
    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the model passes (None: plain fp32 calls), from ``precision`` and the
        device of the backbone's buffers; None inside `full_precision`."""
        return None if self._exact else amp_dtype_for(self.precision, self.mean.device)

    @amp_dtype.setter
    def amp_dtype(self, dtype: torch.dtype | None) -> None:
        if dtype is None:
            self.precision = "fp32"
        elif dtype == torch.bfloat16:
            self.precision = "bf16"
        else:
            raise ValueError(f"amp_dtype must be None (fp32) or torch.bfloat16, got {dtype}")

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the passes compute in: the autocast dtype, else the weights' (float32)."""
        return self.amp_dtype or self.mean.dtype

    def pass_dtype(self) -> torch.dtype | None:
        """The autocast dtype of a pass through the backbone run here and now: `amp_dtype`, except that
        ``"native"`` on a CPU keeps passes that record gradients (gradient explainers, LTX's masks) in fp32.

        Measured on the cpu profile's shapes (2 threads, AMX; docs/benchmarks.md, "bf16 inference on this CPU"):
        bf16 autocast makes inference 1.6x (ViT) to 2.1x (Swin) faster. `amp_dtype` (the dtype of the
        no-gradient passes) is what cache keys and throughput tables record. Training steps use
        `training_autocast`.
        """
        dt = self.amp_dtype
        if (dt is not None and self.precision == "native" and self.mean.device.type == "cpu"
                and torch.is_grad_enabled()):
            return None
        return dt

    @property
    def train_dtype(self) -> torch.dtype | None:
        """The autocast dtype of `training_autocast` (None: fp32 steps): `amp_dtype`, on any device."""
        return self.amp_dtype

    @contextmanager
    def training_autocast(self, *models: nn.Module) -> Iterator[None]:
        """A training step's forward of ``models`` (this backbone's own model, a TVE explainer) at `train_dtype`;
        the loss is computed on float32 outputs after it (bf16 needs no gradient scaling).

        On a CPU the models' timm attention modules take their unfused path inside (`unfused_attention`): the
        fused kernel's bf16 backward is several times slower there, so that with it a bf16 step was 1.6x slower
        than fp32, and without it 21-34 % faster (cpu profile's shapes, 2 threads, AMX; docs/benchmarks.md,
        "bf16 training steps on this CPU").
        """
        dt = self.train_dtype
        if dt is None:
            yield
            return
        device = self.mean.device.type
        with torch.autocast(device, dtype=dt), (unfused_attention(*models) if device == "cpu" else nullcontext()):
            yield

    def autocast(self):
        """``torch.autocast`` at `pass_dtype` on the backbone's device; a no-op context without one
        (the TVE explainer's forward runs in it, `tve_lib.explainers.tve_model.explainer_forward`)."""
        dt = self.pass_dtype()
        return nullcontext() if dt is None else torch.autocast(self.mean.device.type, dtype=dt)

    @contextmanager
    def full_precision(self) -> Iterator[Backbone]:
        """No autocast inside the block: exact references (Shapley enumeration, the exact window
        quantity) are computed in fp32 whatever the profile's precision."""
        self._exact += 1
        try:
            yield self
        finally:
            self._exact -= 1

    @contextmanager
    def uncompiled(self) -> Iterator[Backbone]:
        """The passes run eagerly inside the block: for hooks registered on the model's modules (rollout,
        Grad-CAM), which a compiled graph would not see."""
        self._eager += 1
        try:
            yield self
        finally:
            self._eager -= 1

    def __getstate__(self) -> dict:
        # a copy (copy.deepcopy in the explainability vector) compiles its own model's passes: the
        # compiled functions hold the original model
        state = self.__dict__.copy()
        state["_compiled"] = {}
        return state

    def _pass(self, name: str) -> Callable:
        """The model pass ``name`` (``embed``, ``tokens``, ``logits``), compiled when asked."""
        m = self.model
        fns = {"embed": lambda x: m.forward_head(m.forward_features(x), pre_logits=True),
               "tokens": lambda x, n: m.forward_intermediates(x, indices=n, output_fmt="NCHW"),
               "logits": lambda x: m(x)}
        if not self.compile_backend or self._eager:
            return fns[name]
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fns[name], backend=self.compile_backend)
        return self._compiled[name]

    def _amp(self, fn: Callable, *args):
        """``fn(*args)``, under autocast when `pass_dtype` is set (floating outputs as float32)."""
        dt = self.pass_dtype()
        if dt is None:
            return fn(*args)
        with torch.autocast(self.mean.device.type, dtype=dt):
            out = fn(*args)
        return to_float32(out)

    def _run(self, name: str, *args):
        return self._amp(self._pass(name), *args)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw images in [0, 1], ``[B, 1|3, S, S]`` -> normalised 3-channel model input."""
        if raw.ndim != 4 or raw.shape[1] not in (1, 3):
            raise ValueError(f"{self.name}: expected raw images [B, 1 or 3, {self.img_size}, "
                             f"{self.img_size}], got {tuple(raw.shape)}")
        if not raw.is_floating_point():
            raise TypeError(f"{self.name}: expected raw images as floats in [0, 1], got {raw.dtype} "
                            "(uint8 images: divide by 255 first)")
        if raw.numel() and raw.amax() > RAW_MAX:  # a resize may overshoot 1 a little, never to 255
            raise ValueError(f"{self.name}: expected raw images in [0, 1], got values up to {raw.amax().item():g} "
                             "(0-255 images: divide by 255 first)")
        raw = raw.to(self.mean.device, self.mean.dtype)
        if raw.shape[1] == 1:
            raw = raw.expand(-1, 3, -1, -1)
        if raw.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"{self.name}: expected {self.img_size}x{self.img_size} images, got "
                             f"{tuple(raw.shape[-2:])}")
        return (raw - self.mean) / self.std

    def check_input(self, x: torch.Tensor) -> None:
        exp = (3, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != exp:
            raise ValueError(f"{self.name}: expected normalised images [B, {exp[0]}, {exp[1]}, "
                             f"{exp[2]}], got {tuple(x.shape)}")
        if len(x) == 0:
            raise ValueError(f"{self.name}: expected at least one image, got an empty batch {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: expected normalised float images, got {x.dtype} (raw images in [0, 1] "
                            "go through Backbone.normalize first)")
        if not torch.isfinite(x).all():
            raise ValueError(f"{self.name}: input images contain NaN or inf")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logits embedding ``[B, D]`` of normalised images ``[B, 3, S, S]``."""
        self.check_input(x)
        return self._run("embed", x)

    forward = embed

    def player_tokens(self, x: torch.Tensor, n_layers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``n_layers`` token maps (at most all of them) on the player grid ``[B, G², C]``
        and ``g(x)`` ``[B, D]``.

        One pass through timm's ``forward_intermediates`` (NCHW maps, prefix tokens dropped, no
        hard-coded reshape); maps on another grid than the players' (Swin's stages) are brought to
        ``G x G`` by `to_player_grid` and the layers are concatenated along channels.
        """
        self.check_input(x)
        if not hasattr(self.model, "forward_intermediates"):
            raise TypeError(f"{self.name}: {type(self.model).__name__} has no forward_intermediates; "
                            "the tapped TVE explainer needs a timm model that provides it")
        return self._amp(self._player_tokens, x, self._tap_count(n_layers))

    def _tap_count(self, n_layers: int) -> int:
        return min(n_layers, len(getattr(self.model, "feature_info", [])) or n_layers)  # Swin: its stages

    def finer_token_maps(self, n_layers: int) -> bool:
        """Whether one of the last ``n_layers`` token maps is finer than the player grid (Swin's first stages
        at 224 px), i.e. `to_player_grid` averages it: stores and explainers built on such tokens are keyed so
        (a blank one-image pass, once per ``n_layers``)."""
        n_layers = self._tap_count(n_layers)
        if n_layers not in self._finer:
            blank = torch.zeros(1, 3, self.img_size, self.img_size, device=self.mean.device, dtype=self.mean.dtype)
            with torch.no_grad():
                maps = self._pass("tokens")(blank, n_layers)[1]
            self._finer[n_layers] = any(m.shape[-1] > self.grid for m in maps)
        return self._finer[n_layers]

    def token_key(self, n_layers: int) -> dict[str, str]:
        """What a store or explainer built on `player_tokens` adds to its cache key: the cell-mean rule when a map
        is finer than the grid (it replaced bilinear resizing), nothing otherwise (keys made before it hold)."""
        return {"finer_maps": "cell_mean"} if self.finer_token_maps(n_layers) else {}

    def _player_tokens(self, x: torch.Tensor, n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        final, maps = self._pass("tokens")(x, n_layers)
        maps = [to_player_grid(m, self.grid) for m in maps]
        tokens = torch.cat(maps, 1).flatten(2).transpose(1, 2)
        return tokens, self.model.forward_head(final, pre_logits=True)

    def patch_tokens(self, feats: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """``forward_features``' output ``feats`` of ``model`` (default: this backbone's; a
        fine-tuned copy has the same layout) as the last layer's token grid ``[B, h, w, d]``."""
        return token_grid(model if model is not None else self.model, feats, self.num_prefix_tokens)

    @property
    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, in order (`block_list`)."""
        return block_list(self.model)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's own upstream classifier (cpu/smoke: trained by the suite)."""
        self.check_input(x)
        return self._run("logits", x)

    def mask(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The shared removal operator on this backbone's grid."""
        return apply_mask(x, keep, self.grid, self.removal_value, self.removal_fill(x))

    def removal_fill(self, x: torch.Tensor) -> torch.Tensor | None:
        """The current operator's fill for normalised images ``x`` (None: the removal value)."""
        return None if self.operator is None else self.operator.fill(x)

    @contextmanager
    def removal(self, operator: RemovalOperator | None) -> Iterator[Backbone]:
        """Remove players with ``operator`` (`tve_lib.operators`) inside the block; the default after."""
        prev, self.operator = self.operator, operator
        try:
            yield self
        finally:
            self.operator = prev

    @torch.no_grad()
    def embed_batched(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """`embed` over a large stack of images in chunks (no grad)."""
        return torch.cat([self.embed(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])


def create_model(spec: BackboneSpec, num_classes: int, weights_dir: str | Path | None = None) -> nn.Module:
    """The timm model of ``spec``; pretrained specs load their weights offline or fail clearly."""
    if not timm.is_model(spec.timm_name):
        raise KeyError(f"unknown timm model {spec.timm_name!r} for backbone {spec.name!r}")
    if not spec.pretrained:
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes, **spec.kwargs)
    path = find_weights(spec, weights_dir)
    try:
        return timm.create_model(spec.timm_name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay=dict(file=str(path)), **spec.kwargs)
    except Exception as e:
        if isinstance(e, RuntimeError) and any(k in str(e) for k in ("size mismatch", "Missing key", "Unexpected key")):
            # load_state_dict: missing keys or shapes that do not fit
            first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "key" in ln), str(e))
            raise ValueError(f"backbone {spec.name!r}: the weights in {path} do not fit timm model "
                             f"{spec.timm_name!r} ({first[:300]}). Put the weights of {spec.timm_name} there "
                             f"(WEIGHTS_DIR/{spec.timm_name}.safetensors).") from None
        # a file that is no state_dict at all: truncated, an HTML page saved by mistake, a pickle of something else
        raise ValueError(f"backbone {spec.name!r}: {path} is not a readable state_dict of {spec.timm_name} "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); replace it with "
                         f"the model's weights (WEIGHTS_DIR/{spec.timm_name}.safetensors)") from None


def find_weights(spec: BackboneSpec, weights_dir: str | Path | None) -> Path:
    """Locate pretrained weights offline: WEIGHTS_DIR/<timm_name>.{safetensors,pth,bin}, then the
    Hugging Face cache. Raises FileNotFoundError naming where to put them."""
    tried = []
    if weights_dir:
        wd = Path(weights_dir)
        for c in (wd / f"{spec.timm_name}.safetensors", wd / f"{spec.timm_name}.pth",
                  wd / f"{spec.timm_name}.bin", wd / spec.timm_name / "model.safetensors",
                  wd / spec.timm_name / "pytorch_model.bin"):
            tried.append(str(c))
            if c.is_file():
                return c
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    hub_id = cfg.hf_hub_id if cfg else None
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fn in ("model.safetensors", "pytorch_model.bin"):
                p = try_to_load_from_cache(hub_id.split("@")[0], fn)
                if isinstance(p, str):
                    return Path(p)
        except ImportError:
            pass
        tried.append(f"Hugging Face cache ({hub_id})")
    raise FileNotFoundError(
        f"pretrained weights for {spec.timm_name!r} ({spec.name}) not found; tried: {', '.join(tried)}. "
        f"Put them at WEIGHTS_DIR/{spec.timm_name}.safetensors (e.g. on a machine with internet: "
        f"timm.create_model('{spec.timm_name}', pretrained=True) and save its state_dict), "
        "or populate the Hugging Face cache.")


def wrap(model: nn.Module, spec: BackboneSpec, profile: Profile) -> Backbone:
    """``model`` as the frozen `Backbone` of ``spec``, with the profile's normalisation, grid, removal value,
    precision and compile backend (the autocast dtype follows the device the backbone is moved to)."""
    mean = profile.mean or model.pretrained_cfg.get("mean", (0.5, 0.5, 0.5))
    std = profile.std or model.pretrained_cfg.get("std", (0.5, 0.5, 0.5))
    bb = Backbone(model, spec.name, profile.img_size, mean, std, profile.max_grid, profile.removal_value,
                  profile.precision, profile.compile)
    bb.eval().requires_grad_(False)
    return bb
