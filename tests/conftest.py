import dataclasses
import os

import pytest
import torch

from tve_lib.backbones import create_model, wrap
from tve_lib.config import get_profile

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """Every notebook run by papermill in the smoke profile, once per session: ``<tmp>/results/smoke``.
    ``TVE_SMOKE_RESULTS=<results>/smoke`` reuses an existing smoke run instead (developers)."""
    from tve_lib import runner

    if os.environ.get("TVE_SMOKE_RESULTS"):
        from pathlib import Path

        return Path(os.environ["TVE_SMOKE_RESULTS"])
    out = tmp_path_factory.mktemp("results")
    code = runner.run("smoke", results_dir=out, device="cpu", timeout=900)
    assert code == 0, "a notebook failed in the smoke profile (see the log above)"
    return out / "smoke"


@pytest.fixture(scope="session")
def smoke():
    return get_profile("smoke")


def tiny_backbone(name: str = "vit", seed: int = 0, num_classes: int = 10):
    """A tiny random timm backbone of the smoke profile (vit, deit with 2 prefix tokens, swin), in fp32 ("auto" on
    CPU) whatever the machine: the property tests compare with closed forms; bf16 has its own (test_precision)."""
    p = dataclasses.replace(get_profile("smoke"), precision="auto")
    torch.manual_seed(seed)
    spec = p.backbone(name)
    return wrap(create_model(spec, num_classes), spec, p)


@pytest.fixture(scope="session", params=["vit", "deit", "swin"])
def any_backbone(request):
    return tiny_backbone(request.param)
