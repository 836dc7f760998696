"""Per-backbone decoding (`tve_lib.preprocess`): timm's own eval transform, the plain one unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from tve_lib.config import get_profile
from tve_lib.data import FolderImageSet
from tve_lib.imagefolder import scan_imagefolder
from tve_lib.preprocess import Preprocess, backbone_preprocess


def _image(seed: int, size=(50, 37)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


@pytest.mark.parametrize("seed", range(3))
def test_plain_is_resize_and_centre_crop(seed):
    img = _image(seed)
    ref = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.ToTensor()])(img)
    assert torch.equal(Preprocess(16)(img), ref)
    assert torch.equal(Preprocess(16)(img, as_uint8=True), transforms.PILToTensor()(
        transforms.CenterCrop(16)(transforms.Resize(16)(img))))


def test_backbone_config_follows_timm():
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    for name in ("vit_base_patch16_224", "deit_base_distilled_patch16_224", "swin_base_patch4_window7_224"):
        p = backbone_preprocess(name, 224)
        cfg = resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(name).to_dict())
        assert (p.interpolation, p.crop_pct, p.crop_mode) == (cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"])
        img = _image(0, (300, 260))
        ref = create_transform(**cfg, is_training=False)(img)  # timm's own, normalised with its mean and std
        mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
        torch.testing.assert_close((p(img) - mean) / std, ref, atol=1e-5, rtol=0)
    assert backbone_preprocess("vit_base_patch16_224", 224).crop_pct < 1  # not the plain transform
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(8, interpolation="cubic-ish")


def test_folder_set_per_backbone(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            _image(i + 10 * (c == "b"), (40, 30)).save(tmp_path / c / f"{i}.png")
    ds = FolderImageSet("f", scan_imagefolder(tmp_path), 16)
    p = Preprocess(16, "bicubic", 0.875)
    other = ds.with_preprocess(p)
    assert ds.with_preprocess(Preprocess(16)) is ds
    assert other.fingerprint != ds.fingerprint and ds.fingerprint == scan_imagefolder(tmp_path).fingerprint
    x, y, _ = other.get([0, 3])
    assert x.shape == (2, 3, 16, 16) and not torch.equal(x, ds.get([0, 3])[0])
    assert torch.equal(other.subset([3]).get([0])[0], x[1:])


def test_suite_decodes_for_each_backbone(tmp_path):
    from tve_lib.studies.suite import Suite

    assert get_profile("cpu").preprocess == "plain" and get_profile("paper").preprocess == "backbone"
    s = Suite(get_profile("paper-dry-tiny"), results_dir=str(tmp_path), device="cpu")
    assert s.preprocess(None) is None
    assert s.preprocess("vit") == backbone_preprocess("vit_tiny_patch16_224", 32)
    s = Suite("smoke", results_dir=str(tmp_path), device="cpu")
    assert s.preprocess("vit") is None
    s = Suite("smoke", results_dir=str(tmp_path), device="cpu", overrides={"preprocess": "timm"})
    with pytest.raises(ValueError, match="'plain' or 'backbone'"):
        s.preprocess("vit")
