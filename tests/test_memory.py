"""`tve_lib.memory.peak_memory`: the block's own peak, not the process's history."""

import sys

import pytest
import torch

from tve_lib.memory import peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
def test_peak_memory_sees_the_block_and_forgets_earlier_peaks():
    big = torch.ones(64 * 2**20)  # 256 MiB touched before the block: an earlier peak
    del big
    with peak_memory("cpu") as quiet:
        torch.ones(16).sum()
    with peak_memory("cpu") as busy:
        x = torch.ones(32 * 2**20)  # 128 MiB, written so it is resident
        x.add_(1)
        del x
    assert quiet["memory_kind"] == "cpu resident set"
    assert quiet["memory_growth_mib"] < 64  # the earlier 256 MiB peak is not this block's
    assert 120 <= busy["memory_growth_mib"] < 400
    assert busy["peak_memory_mib"] >= busy["memory_growth_mib"]


def test_loader_finding_quotes_peak_memory():
    import pandas as pd

    from tve_lib.report.throughput import loader_finding

    t = pd.DataFrame([dict(what="loader", workers=0, images_per_s=100.0),
                      dict(what="tve_step", backbone="vit", batch_size=8, device="cpu", images_per_s=2.0,
                           dtype="float32", peak_memory_mib=3072.0, memory_growth_mib=1024.0,
                           memory_kind="cpu resident set"),
                      dict(what="fidelity_batch", backbone="vit", batch_size=32, device="cpu", images_per_s=5.0,
                           dtype="float32", peak_memory_mib=2048.0, memory_growth_mib=512.0,
                           memory_kind="cpu resident set")])
    text = loader_finding(t)
    assert "peak memory of the TVE pre-training step (batch 8, float32): 3.00 GiB cpu resident set, 1.00 GiB" in text
    assert "one fidelity batch (batch 32, float32): 2.00 GiB" in text
