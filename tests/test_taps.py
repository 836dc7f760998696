"""The read-out tokens' attention (`tve_lib.taps`) and the tapped explainer that reads it."""

import dataclasses

import pytest
import torch
from conftest import tiny_backbone

from tve_lib.config import TVEConfig
from tve_lib.data import TensorImageSet
from tve_lib.explainers import tve as tve_mod
from tve_lib.explainers.tve_model import reads_attention, tapped_inputs
from tve_lib.heads import make_head
from tve_lib.taps import attention_taps

CFG = TVEConfig(arch="tapped_global", depth=1, embed_dim=32, mix_hidden=32, tap_layers=2, tap_attention="prefix")


def _by_hand(bb, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Each tapped block's softmax(q kᵀ · scale) from its own weights, prefix rows to the patches, times N."""
    blocks = list(bb.model.blocks)[-n_layers:]
    inputs = []
    hooks = [b.norm1.register_forward_hook(lambda m, i, o: inputs.append(o)) for b in blocks]
    try:
        with torch.no_grad():
            bb.embed(x)
    finally:
        for h in hooks:
            h.remove()
    k, out = bb.num_prefix_tokens, []
    for blk, y in zip(blocks, inputs):
        a = blk.attn
        b, n, _ = y.shape
        q, kk, _ = a.qkv(y).reshape(b, n, 3, a.num_heads, -1).permute(2, 0, 3, 1, 4)
        w = (q @ kk.transpose(-2, -1) * a.scale).softmax(-1)  # [B, H, N, N]
        out.append(w[:, :, :k, k:].reshape(b, -1, n - k) * n)
    return torch.cat(out, 1).transpose(1, 2)  # [B, G², n·k·H]


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_tapped_attention_is_the_blocks_own_softmax_from_one_pass(name):
    bb = tiny_backbone(name)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens, base = tapped_inputs(bb, x, CFG)
    plain, base0 = tapped_inputs(bb, x, dataclasses.replace(CFG, tap_attention=""))
    ref = _by_hand(bb, x, CFG.tap_layers)
    assert ref.shape[-1] == CFG.tap_layers * bb.num_prefix_tokens * bb.model.blocks[0].attn.num_heads
    torch.testing.assert_close(tokens[..., plain.shape[-1]:], ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens[..., :plain.shape[-1]], plain, rtol=1e-4, atol=1e-5)  # the rest unchanged
    torch.testing.assert_close(base, base0, rtol=1e-4, atol=1e-5)
    # a prefix token's weights over the patches sum to at most one (the rest goes to the prefix tokens)
    assert (ref.sum(1) / (bb.n_players + bb.num_prefix_tokens) <= 1 + 1e-5).all()


def test_taps_restore_the_fused_kernel_and_remove_their_hooks_also_on_error():
    bb = tiny_backbone("vit")
    before = [blk.attn.fused_attn for blk in bb.model.blocks]
    with pytest.raises(KeyboardInterrupt):
        with attention_taps(bb.model, 2, bb.num_prefix_tokens) as taps:
            assert not any(blk.attn.fused_attn for blk in list(bb.model.blocks)[-2:])
            bb.embed(torch.randn(1, 3, 32, 32))
            assert len(taps.weights) == 2
            raise KeyboardInterrupt
    assert [blk.attn.fused_attn for blk in bb.model.blocks] == before
    assert not any(blk.attn.attn_drop._forward_hooks for blk in bb.model.blocks)


def test_swin_has_no_read_out_tokens_so_its_inputs_are_unchanged_and_unknown_modes_are_errors():
    swin = tiny_backbone("swin")
    x = torch.randn(2, 3, 32, 32)
    assert not reads_attention(swin, CFG) and reads_attention(tiny_backbone("vit"), CFG)
    torch.testing.assert_close(tapped_inputs(swin, x, CFG)[0],
                               tapped_inputs(swin, x, dataclasses.replace(CFG, tap_attention=""))[0])
    with pytest.raises(ValueError, match="no prefix tokens"):
        with attention_taps(swin.model, 2, 0):
            pass
    with pytest.raises(ValueError, match="unknown tap_attention"):
        tapped_inputs(swin, x, dataclasses.replace(CFG, tap_attention="rollout"))


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_the_explainer_reading_attention_is_batch_invariant_and_seeded(name):
    bb = tiny_backbone(name)
    models = []
    for _ in range(2):
        torch.manual_seed(5)
        models.append(tve_mod.build_explainer(bb, CFG))
    head = make_head("mlp", bb.embed_dim, 4)
    x = torch.randn(6, 3, 32, 32)
    e1, e2 = tve_mod.TVE(bb, models[0], 1), tve_mod.TVE(bb, models[1], 1)
    a = e1.explain(x, head)
    assert a.shape == (6, 8, 8) and torch.equal(a, e2.explain(x, head))
    assert torch.allclose(a, torch.cat([e1.explain(x[:2], head), e1.explain(x[2:], head)]), atol=1e-5)


def test_pretraining_on_stored_tokens_with_attention_is_deterministic_and_learns(tmp_path):
    bb = tiny_backbone("deit")
    imgs = torch.rand(48, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    train = TensorImageSet("s", imgs[:32], torch.zeros(32), ["x"])
    val = TensorImageSet("s", imgs[32:], torch.zeros(16), ["x"])
    cfg = dataclasses.replace(CFG, epochs=4, n_images=32, batch_size=8, n_heldout=16, lr=3e-3, sampler="dense")
    hist = []
    for run in range(2):
        torch.manual_seed(0)
        m = tve_mod.build_explainer(bb, cfg)
        hist.append(tve_mod.pretrain(m, bb, train, val, cfg, tmp_path / f"r{run}.pt", 0, progress=False))
    ho = [h for h in hist[0] if h["split"] == "heldout"]
    assert ho[-1]["loss_remove"] < ho[0]["loss_remove"]
    assert [h["loss_keep"] for h in hist[0]] == [h["loss_keep"] for h in hist[1]]
