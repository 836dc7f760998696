import os

import pytest
import torch

from tve_lib.backbones import create_model, wrap
from tve_lib.config import get_profile

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smoke():
    return get_profile("smoke")


def tiny_backbone(name: str = "vit", seed: int = 0, num_classes: int = 10):
    """A tiny random timm backbone of the smoke profile (vit, deit with 2 prefix tokens, swin)."""
    p = get_profile("smoke")
    torch.manual_seed(seed)
    spec = p.backbone(name)
    return wrap(create_model(spec, num_classes), spec, p)


@pytest.fixture(scope="session", params=["vit", "deit", "swin"])
def any_backbone(request):
    return tiny_backbone(request.param)
