"""TVE: the transfer rule against brute force, invariances, resume and DDP equivalence."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import tiny_backbone

from tve_lib.backbones import Backbone
from tve_lib.config import TVEConfig
from tve_lib.data import TensorImageSet
from tve_lib.explainers import tve as tve_mod
from tve_lib.heads import make_head
from tve_lib.masking import windows
from tve_lib.token_grids import to_player_grid

TINY = TVEConfig(arch="two", sampler="online", centred_weight=1.0, depth=1, embed_dim=32, mix_hidden=32, epochs=2,
                 n_images=32, batch_size=8, windows_per_image=2, n_heldout=8, lr=3e-3)


class LinearPixels(nn.Module):
    """A 'backbone' whose embedding is linear in the pixels (timm-like interface)."""

    def __init__(self, dim: int = 6, size: int = 16):
        super().__init__()
        self.proj = nn.Linear(3 * size * size, dim, dtype=torch.float64)
        self.feature_info = [{"reduction": 4}]
        self.num_features, self.num_classes = dim, 0

    def forward_features(self, x):
        return self.proj(x.flatten(1))

    def forward_head(self, f, pre_logits=False):
        return f


def linear_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    bb = Backbone(LinearPixels(), "linear", 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), max_grid=8)
    return bb.double().eval().requires_grad_(False)


def brute_force(bb, head, x, y, radius):
    """f_y(x ⊙ W_i) − f_y(x ⊙ (1 − W_i)) one window at a time (no batching tricks)."""
    w = windows(bb.grid, radius)
    out = torch.zeros(len(x), bb.n_players, dtype=x.dtype)
    for i in range(bb.n_players):
        keep = head(bb.embed(bb.mask(x, w[i].expand(len(x), -1))))
        rem = head(bb.embed(bb.mask(x, (~w[i]).expand(len(x), -1))))
        out[:, i] = (keep - rem).gather(1, y[:, None]).squeeze(1)
    return out.view(len(x), bb.grid, bb.grid)


class ExactPhi(nn.Module):
    """An 'explainer' that outputs the exact window embeddings (what pre-training approximates)."""

    def __init__(self, bb, radius):
        super().__init__()
        self.bb, self.radius = bb, radius
        self.embed_dim, self.grid = bb.embed_dim, bb.grid

    def prepare(self, bb, x):
        return x, bb.embed(x)

    def forward(self, x, base=None):
        return tve_mod.all_window_embeddings(self.bb, x, self.radius)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transfer_rule_on_exact_phi_equals_brute_force(kind, seed):
    bb = linear_backbone(seed)
    torch.manual_seed(seed)
    head = make_head(kind, bb.embed_dim, 3, hidden=5).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = head(bb.embed(x)).argmax(1)
    exp = tve_mod.TVE(bb, ExactPhi(bb, 1), radius=1)
    a = exp.explain(x, head)
    ref = brute_force(bb, head, x, y, 1)
    assert torch.allclose(a, ref, atol=1e-10)
    assert torch.allclose(tve_mod.window_occlusion(bb, head, x, y, 1), ref, atol=1e-10)
    # a linear embedding and a linear head: keep - remove = f(x ⊙ W) - f(x ⊙ (1-W)) is linear in x, so
    # the attributions of W and its complement sum to the full-image logit minus the empty one
    if kind == "linear":
        full = head(bb.embed(x)).gather(1, y[:, None]).squeeze(1)
        empty = head(bb.embed(bb.mask(x, torch.zeros(bb.n_players)))).gather(1, y[:, None]).squeeze(1)
        w = windows(bb.grid, 1)[0]
        keep = head(bb.embed(bb.mask(x, w.expand(4, -1)))).gather(1, y[:, None]).squeeze(1)
        rem = head(bb.embed(bb.mask(x, (~w).expand(4, -1)))).gather(1, y[:, None]).squeeze(1)
        assert torch.allclose(keep + rem, full + empty, atol=1e-10)
        # so player 0's attribution is 2 f(x ⊙ W) − f(x) − f(empty): one masked pass, not two
        assert torch.allclose(a.flatten(1)[:, 0], 2 * keep - full - empty, atol=1e-10)


class OneBranchOff(ExactPhi):
    """Exact window embeddings with one branch perturbed: the transfer error is that branch's alone."""

    def __init__(self, bb, radius, branch: int):
        super().__init__(bb, radius)
        self.branch = branch

    def forward(self, x, base=None):
        phi = list(super().forward(x, base))
        noise = torch.randn(phi[0].shape, generator=torch.Generator().manual_seed(0), dtype=phi[0].dtype)
        phi[self.branch] = phi[self.branch] + noise * phi[self.branch].std()
        return tuple(phi)


@pytest.mark.parametrize("branch", [0, 1])
def test_transfer_error_says_which_branch_the_error_comes_from(branch):
    from tve_lib.studies.transfer import transfer_error
    bb = linear_backbone(0)
    torch.manual_seed(0)
    heads = {k: make_head(k, bb.embed_dim, 3).double() for k in ("linear", "mlp")}
    ds = TensorImageSet("t", torch.rand(6, 3, 16, 16, dtype=torch.float64), torch.zeros(6), ["c"])
    exact = transfer_error(tve_mod.TVE(bb, ExactPhi(bb, 1), radius=1), heads, ds, 6, batch_size=4,
                           masked_batch_size=64, progress=False)
    assert len(exact) == 6 * 3 and exact.image_id.nunique() == 6  # two heads, the MLP's under both rules
    whole = exact[exact.rule == "whole_head"]
    assert (whole[["spearman", "spearman_exact_keep", "spearman_exact_remove"]] > 1 - 1e-9).all().all()
    err = transfer_error(tve_mod.TVE(bb, OneBranchOff(bb, 1, branch), radius=1), heads, ds, 6, batch_size=4,
                         masked_batch_size=64, progress=False)
    err = err[err.rule == "whole_head"]
    fixed, other = ("spearman_exact_keep", "spearman_exact_remove")[::1 if branch == 0 else -1]
    assert (err[fixed] > 1 - 1e-9).all()  # the perturbed branch made exact: the map is exact again
    assert torch.allclose(torch.tensor(err[other].values), torch.tensor(err.spearman.values))  # already exact
    assert (err.spearman < 0.99).any()


def test_whole_head_differs_from_last_layer_only_for_mlp():
    bb = linear_backbone(0)
    torch.manual_seed(0)
    head = make_head("mlp", bb.embed_dim, 3).double()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    exp = tve_mod.TVE(bb, ExactPhi(bb, 1), radius=1)
    whole = exp.explain(x, head)
    last = exp.variant(last_layer_only=True).explain(x, head)
    assert not torch.allclose(whole, last)
    lin = make_head("linear", bb.embed_dim, 3).double()
    assert torch.allclose(exp.explain(x, lin), exp.variant(last_layer_only=True).explain(x, lin))


def test_lambdas_and_pooling():
    bb = linear_backbone(0)
    head = make_head("linear", bb.embed_dim, 3).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    exp = tve_mod.TVE(bb, ExactPhi(bb, 1), radius=1)
    both, keep, rem = (exp.explain(x, head), exp.variant(lam_minus=0).explain(x, head),
                       exp.variant(lam_plus=0).explain(x, head))
    assert torch.allclose(both, keep + rem)
    pooled = exp.variant(pool=True).explain(x, head)
    assert torch.allclose(pooled[:, 1, 1], both[:, :3, :3].mean((1, 2)))


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
@pytest.mark.parametrize("arch", tve_mod.ARCHS)
def test_explain_shapes_batch_invariance_and_seed(name, arch):
    bb = tiny_backbone(name)
    cfg = TVEConfig(arch=arch, depth=1, embed_dim=32, mix_hidden=32)
    torch.manual_seed(5)
    m1 = tve_mod.build_explainer(bb, cfg)
    torch.manual_seed(5)
    m2 = tve_mod.build_explainer(bb, cfg)
    head = make_head("mlp", bb.embed_dim, 4)
    x = torch.randn(6, 3, 32, 32)
    e1, e2 = tve_mod.TVE(bb, m1, 1), tve_mod.TVE(bb, m2, 1)
    a = e1.explain(x, head)
    assert a.shape == (6, 8, 8) and a.device == x.device
    assert torch.equal(a, e2.explain(x, head))  # same seed, same explainer
    parts = torch.cat([e1.explain(x[:1], head), e1.explain(x[1:4], head), e1.explain(x[4:], head)])
    assert torch.allclose(a, parts, atol=1e-5)
    t = torch.tensor([0, 1, 2, 3, 0, 1])
    assert not torch.allclose(e1.explain(x, head, t), e1.explain(x, head, (t + 1) % 4))
    many = e1.explain_tasks(x, [head, head], [None, t])
    assert torch.equal(many[0], a) and torch.allclose(many[1], e1.explain(x, head, t))


@pytest.mark.parametrize("seed", [0, 1])
def test_token_maps_on_the_player_grid_are_cell_means_or_bilinear_whatever_the_layout(seed):
    g = torch.Generator().manual_seed(seed)
    fine = torch.randn(3, 5, 12, 12, generator=g, dtype=torch.float64)
    cells = fine.reshape(3, 5, 4, 3, 4, 3).mean((3, 5))  # each player's 3 x 3 tokens, averaged
    torch.testing.assert_close(to_player_grid(fine, 4), cells)
    coarse = torch.randn(3, 5, 2, 2, generator=g, dtype=torch.float64)
    ref = torch.nn.functional.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False)
    nhwc_view = coarse.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # how timm's Swin returns maps
    for m in (coarse, nhwc_view):
        assert torch.equal(to_player_grid(m, 4), ref)
    assert to_player_grid(ref, 4) is ref
    torch.testing.assert_close(to_player_grid(torch.ones(1, 2, 8, 8), 4), torch.ones(1, 2, 4, 4))


def test_player_tokens_average_a_stage_finer_than_the_grid_and_say_so():
    swin = tiny_backbone("swin")  # stages 8 x 8 and 4 x 4 on an 8 x 8 grid: none finer
    coarse = Backbone(swin.model, "swin", swin.img_size, swin.mean.flatten().tolist(), swin.std.flatten().tolist(),
                      max_grid=4)  # the same model on a 4 x 4 grid: its first stage is finer
    assert (swin.grid, coarse.grid) == (8, 4)
    assert not swin.finer_token_maps(2) and not tiny_backbone("vit").finer_token_maps(2)
    assert coarse.finer_token_maps(2)
    x = torch.randn(2, 3, swin.img_size, swin.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = swin.player_tokens(x, 2)[0][..., :32].transpose(1, 2).reshape(2, 32, 8, 8)
        got = coarse.player_tokens(x, 2)[0][..., :32].transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(got, first.reshape(2, 32, 4, 2, 4, 2).mean((3, 5)))


def test_tapped_global_reads_the_full_image_embedding_and_is_tapped_otherwise():
    bb = tiny_backbone("vit")
    cfg = TVEConfig(arch="tapped", depth=1, embed_dim=32, mix_hidden=32)
    torch.manual_seed(3)
    plain = tve_mod.build_explainer(bb, cfg)
    torch.manual_seed(3)
    glob = tve_mod.build_explainer(bb, dataclasses.replace(cfg, arch="tapped_global"))
    own = {k: v for k, v in glob.state_dict().items() if not k.startswith("global_proj.")}
    assert own.keys() == plain.state_dict().keys()  # one module more, created last: the rest initialised alike
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in own.items())
    x = torch.randn(3, 3, 32, 32)
    tokens, base = glob.prepare(bb, x)
    with torch.no_grad():
        k1, r1 = glob(tokens, base)
        k2, r2 = glob(tokens, base + 1.0)  # another g(x): the blocks read it
        assert not torch.allclose(k1, k2) and not torch.allclose(r1 - base.unsqueeze(1), r2 - base.unsqueeze(1) - 1.0)
    with pytest.raises(ValueError, match="needs base"):
        glob(tokens, None)


def test_trunk_is_initialised_from_the_backbone():
    bb = tiny_backbone("vit")
    m = tve_mod.TVEModel(32, 8, bb.embed_dim, TVEConfig(arch="two", depth=2, embed_dim=bb.embed_dim, num_heads=1))
    n = m.init_from(bb.model)
    assert n > 10
    assert torch.equal(m.trunk_keep.vit.blocks[0].attn.qkv.weight, bb.model.blocks[0].attn.qkv.weight)


def test_explainer_and_backbone_mismatch_is_reported():
    bb = tiny_backbone("vit")
    m = tve_mod.TVEModel(32, 8, bb.embed_dim + 1, TINY)
    with pytest.raises(ValueError, match="predicts .*-dim embeddings"):
        tve_mod.TVE(bb, m, 1)


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(48, 1, 32, 32, generator=g)
    return (TensorImageSet("s", imgs[:32], torch.zeros(32), ["x"]),
            TensorImageSet("s", imgs[32:], torch.zeros(16), ["x"]))


@pytest.mark.parametrize("arch,sampler", [("two", "online"), ("tapped", "online"), ("tapped", "dense"),
                                         ("tapped_global", "dense")])
def test_pretraining_reduces_the_loss_and_is_deterministic(tmp_path, arch, sampler):
    bb = tiny_backbone("vit")
    train, val = _data()
    cfg = TVEConfig(depth=1, embed_dim=32, mix_hidden=32, epochs=4, n_images=32, batch_size=8,
                    windows_per_image=2, n_heldout=16, lr=3e-3, arch=arch, sampler=sampler,
                    centred_weight=1.0 if sampler == "online" else 4.0)
    hist = []
    for run in range(2):
        torch.manual_seed(0)
        m = tve_mod.build_explainer(bb, cfg)
        hist.append(tve_mod.pretrain(m, bb, train, val, cfg, tmp_path / f"r{run}.pt", 0, progress=False))
    ho = [h for h in hist[0] if h["split"] == "heldout"]
    assert ho[-1]["loss_keep"] < ho[0]["loss_keep"] and ho[-1]["loss_remove"] < ho[0]["loss_remove"]
    assert [h["loss_keep"] for h in hist[0]] == [h["loss_keep"] for h in hist[1]]


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(TINY, arch="tapped", sampler="dense")],
                         ids=["two-online", "tapped-dense"])
def test_resume_after_interrupted_epoch_gives_the_same_weights(tmp_path, cfg):
    bb = tiny_backbone("vit")
    train, val = _data()
    torch.manual_seed(0)
    ref = tve_mod.build_explainer(bb, cfg)
    tve_mod.pretrain(ref, bb, train, val, cfg, tmp_path / "ref.pt", 0, progress=False)

    calls = {"n": 0}

    def interrupt(step, k, r):
        calls["n"] += 1
        if step == 5:  # inside epoch 2 (4 steps per epoch)
            raise KeyboardInterrupt

    torch.manual_seed(0)
    m = tve_mod.build_explainer(bb, cfg)
    with pytest.raises(KeyboardInterrupt):
        tve_mod.pretrain(m, bb, train, val, cfg, tmp_path / "cut.pt", 0, progress=False, on_step=interrupt)
    assert (tmp_path / "cut.partial.pt").exists() and not (tmp_path / "cut.pt").exists()
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    m2 = tve_mod.build_explainer(bb, cfg)
    tve_mod.pretrain(m2, bb, train, val, cfg, tmp_path / "cut.pt", 0, progress=False)
    for a, b in zip(ref.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert not (tmp_path / "cut.partial.pt").exists()


def _torchrun(n: int, out: Path, arch: str = "two", sampler: str = "online", data: str = "tensors") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           str(Path(__file__).parent / "ddp_worker.py"), str(out), arch, sampler, data]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("arch,sampler,data", [("two", "online", "tensors"), ("tapped", "dense", "tensors"),
                                               ("tapped", "online", "files"), ("tapped_global", "dense", "tensors")])
def test_ddp_two_processes_match_one_process(tmp_path, arch, sampler, data):
    """gloo, 2 CPU processes vs 1 with the same global batch.

    Every rank draws the same permutation and window centres and takes its half of each global
    batch; DDP averages the two half-batch gradients, which equals the full-batch mean gradient.
    Only float32 summation order differs (all-reduce vs one sum), so per-step losses agree to
    ~1e-6 relative; after 8 AdamW steps we allow 1e-4 relative, far below the step-to-step change.
    ``files``: the paper path, JPEGs decoded by loader workers, each rank reading only its slice.
    """
    one = _torchrun(1, tmp_path / "one.json", arch, sampler, data)
    two = _torchrun(2, tmp_path / "two.json", arch, sampler, data)
    assert two["world"] == 2 and len(one["steps"]) == len(two["steps"]) == 8
    a = torch.tensor(one["steps"])[:, 1:]
    b = torch.tensor(two["steps"])[:, 1:]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (a, b)
    assert abs(one["wnorm"] - two["wnorm"]) < 1e-4 * one["wnorm"]
    # and the trajectory is not trivially flat, so the comparison has teeth
    assert (a[0] - a[-1]).abs().max() > 1e-3


def test_every_ablation_reference_is_the_reference_config_so_it_is_trained_once():
    from tve_lib.config import get_profile
    from tve_lib.studies.ablations import ablation_variants, reference_config

    prof = get_profile("cpu")
    refs = [v for v in ablation_variants(prof, 8) if v.variant.endswith("(ref)")]
    assert {v.ablation for v in refs} >= {"radius", "explainer", "depth", "transfer rule"}
    assert all(v.cfg == reference_config(prof) and not v.transfer for v in refs)
