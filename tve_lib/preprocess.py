"""How a file-backed image becomes the ``[3, S, S]`` pixels a backbone sees: timm's evaluation transform.

The paper profile's backbones each come with a data config (`timm.data.resolve_data_config`: interpolation,
crop percentage, mean and std). Decoding follows it (`Preprocess.transform` is timm's own
``create_transform(..., use_prefetcher=True)``: resize the shorter side to ``size / crop_pct``, centre crop
``size``, uint8 out), and the normalisation is the backbone's (`tve_lib.backbones.Backbone.normalize`, mean
and std from the same config), so a set read for ViT-B and the same set read for DeiT-B may differ in their
pixels. The cpu and smoke sets are tensors at the profile's size and never pass through here; the default
``Preprocess(size)`` (bilinear, no crop margin) is the plain resize-and-centre-crop of a user's folder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")


@dataclass(frozen=True)
class Preprocess:
    """timm's evaluation transform at ``size`` px (without the normalisation, which the backbone owns)."""

    size: int
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}: expected one of {', '.join(INTERPOLATIONS)}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode {self.crop_mode!r}: expected one of {', '.join(CROP_MODES)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def is_plain(self) -> bool:
        """The plain resize + centre crop every set used before backbones had their own configs."""
        return self == Preprocess(self.size)

    @property
    def key(self) -> str:
        """A short name for cache keys and fingerprints."""
        return f"{self.size}px-{self.interpolation}-crop{self.crop_pct:g}-{self.crop_mode}"

    def transform(self):
        """timm's eval transform: a PIL RGB image -> a ``[3, size, size]`` uint8 numpy array."""
        from timm.data import create_transform

        return create_transform(self.size, is_training=False, interpolation=self.interpolation,
                                crop_pct=self.crop_pct, crop_mode=self.crop_mode, use_prefetcher=True)

    def __call__(self, rgb, as_uint8: bool = False) -> torch.Tensor:
        """``rgb`` (PIL, RGB) as ``[3, size, size]``: uint8, or float in [0, 1] exactly as ``ToTensor`` makes it."""
        tf = _TRANSFORMS.get(self)
        if tf is None:
            tf = _TRANSFORMS[self] = self.transform()
        x = torch.from_numpy(np.ascontiguousarray(tf(rgb)))
        return x if as_uint8 else x.to(torch.get_default_dtype()).div(255)


_TRANSFORMS: dict[Preprocess, Any] = {}  # built once per process (loader workers build their own)


def as_preprocess(size_or_preprocess: int | Preprocess) -> Preprocess:
    """A `Preprocess`; a bare size is the plain resize + centre crop."""
    if isinstance(size_or_preprocess, Preprocess):
        return size_or_preprocess
    return Preprocess(int(size_or_preprocess))


@functools.cache  # asked on every `Suite.task` call of the paper profile
def backbone_preprocess(model_name: str, img_size: int) -> Preprocess:
    """The evaluation transform of timm model ``model_name`` at ``img_size`` px, from its data config
    (`timm.data.resolve_data_config` of its default pretrained config): interpolation, crop percentage and
    crop mode. A name timm has no config for gets timm's defaults (bicubic, 0.875, centre)."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(model_name)
    cfg = resolve_data_config({}, pretrained_cfg=pcfg.to_dict() if pcfg is not None else {})
    return Preprocess(img_size, cfg.get("interpolation") or "bicubic", float(cfg.get("crop_pct") or 0.875),
                      cfg.get("crop_mode") or "center")
