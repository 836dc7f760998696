"""Every baseline explainer: protocol, closed forms on an additive model, invariances, registry."""

import pytest
import torch
from conftest import tiny_backbone
from toy_models import contributions, linear_head, toy_backbone

from tve_lib.explainers import EXPLAINERS, explain_heads, make_explainer, supports
from tve_lib.explainers.amortized import train_amortized
from tve_lib.explainers.gradient import GradCAM, pixels_to_players
from tve_lib.explainers.rollout import Rollout
from tve_lib.heads import make_head
from tve_lib.masking import windows
from tve_lib.shapley import player_groups, shapley_references


def images(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def heads_for(bb, seed=0):
    torch.manual_seed(seed)
    hs = [make_head("linear", bb.embed_dim, 3), make_head("mlp", bb.embed_dim, 3, 16)]
    return [h.eval().requires_grad_(False) for h in hs]


BASELINES = ["random", "ig", "gradcam", "rollout", "occlusion", "kernelshap", "lime"]


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_protocol_shape_device_and_batch_invariance(name):
    bb = tiny_backbone(name)
    hs = heads_for(bb)
    x = images(2)
    for m in BASELINES:
        if not supports(m, bb):
            assert m == "rollout" and name == "swin"
            with pytest.raises(ValueError, match="needs a ViT/DeiT block stack"):
                make_explainer(m, bb)
            continue
        kw = {"budget": 20} if m in ("kernelshap", "lime") else {"n_steps": 2} if m == "ig" else {}
        e = make_explainer(m, bb, **kw)
        full = explain_heads(e, x, hs)
        halves = explain_heads(e, x, hs, batch_size=1)
        for a, b in zip(full, halves):
            assert a.shape == (2, 8, 8) and a.device == x.device and torch.isfinite(a).all(), m
            assert torch.allclose(a, b, atol=1e-5), f"{m} depends on the batch size"
        if m in ("gradcam", "kernelshap"):  # explain() == the shared-work path
            assert torch.allclose(e.explain(x, hs[1]), full[1], atol=1e-5), m
        if m not in ("random", "rollout"):
            assert (full[0] != 0).any(), f"{m} returned an all-zero map"


def test_ig_is_exact_on_an_additive_model():
    bb, h = toy_backbone(), linear_head()
    x = images(3)
    t = h(bb.embed(x)).argmax(-1)
    a = make_explainer("ig", bb, n_steps=8).explain(x, h)
    assert torch.allclose(a, contributions(bb, h, x, t), atol=1e-4)


def test_occlusion_closed_form_on_an_additive_model():
    bb, h = toy_backbone(), linear_head()
    x = images(3)
    t = h(bb.embed(x)).argmax(-1)
    c = contributions(bb, h, x, t).flatten(1)
    w = windows(8, 1).float()
    expected = c @ w.T - c @ (1 - w).T  # Σ_{j∈W_i} c_j − Σ_{j∉W_i} c_j (the bias cancels)
    a = make_explainer("occlusion", bb, radius=1).explain(x, h)
    assert torch.allclose(a.flatten(1), expected, atol=1e-4)


def test_gradcam_reads_the_grid_the_model_reports():
    for name, prefix in (("vit", 1), ("deit", 2)):
        bb = tiny_backbone(name)
        cam = GradCAM(bb)
        tok = torch.randn(2, prefix + 64, bb.embed_dim)
        assert torch.equal(cam._tokens_to_map(tok), tok)  # prefix tokens kept, patches round-trip
        with pytest.raises(ValueError, match=f"expected \\[B, {prefix}\\+8\\*8, D\\] tokens"):
            cam._tokens_to_map(torch.randn(2, 64, bb.embed_dim))


def test_rollout_matches_unfused_attention():
    bb = tiny_backbone("deit")
    x = images(3)
    ours = Rollout(bb).rollout(x)
    mats = []
    hooks = []
    for blk in bb.model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: mats.append(o.mean(1))))
    try:
        bb.embed(x)
    finally:
        for blk, hk in zip(bb.model.blocks, hooks):
            blk.attn.fused_attn = True
            hk.remove()
    roll = None
    for a in mats:
        a = 0.5 * torch.eye(a.shape[-1]) + 0.5 * a
        a = a / a.sum(-1, keepdim=True)
        roll = a if roll is None else a @ roll
    ref = roll[:, :2].mean(1)[:, 2:].view(3, 8, 8)  # DeiT: both prefix rows, patch columns
    assert torch.allclose(ours, ref, atol=1e-5)


def test_sampling_explainers_are_seeded_and_kernelshap_converges_to_exact_groups():
    bb, h = toy_backbone(), linear_head()
    x = images(2)
    a1 = make_explainer("kernelshap", bb, budget=60, seed=1).explain(x, h)
    assert torch.equal(a1, make_explainer("kernelshap", bb, budget=60, seed=1).explain(x, h))
    assert not torch.equal(a1, make_explainer("kernelshap", bb, budget=60, seed=2).explain(x, h))
    groups = player_groups(8, (3, 4))
    (ref,) = shapley_references(bb, [h], x, groups)
    errs = []
    for budget in (30, 300, 3000):
        e = make_explainer("kernelshap", bb, budget=budget, seed=0, groups=groups).explain(x, h)
        est = e.flatten(1) @ groups.float().T  # group values back from the spread map
        errs.append((est - ref.values).pow(2).mean().sqrt().item())
    assert errs[0] > errs[2] and errs[2] < 0.01
    lm = make_explainer("lime", bb, budget=50, seed=0).explain(x, h)
    assert torch.equal(lm, make_explainer("lime", bb, budget=50, seed=0).explain(x, h))


def test_pixels_to_players_sums_patches():
    a = torch.ones(1, 3, 32, 32)
    assert torch.equal(pixels_to_players(a, 8), torch.full((1, 8, 8), 48.0))


def test_amortized_explainer_trains_and_rejects_other_heads():
    bb = toy_backbone()
    h, other = linear_head(seed=0), linear_head(seed=1)
    from tve_lib.config import get_profile

    cfg = get_profile("smoke").eval
    import dataclasses

    cfg = dataclasses.replace(cfg, fastshap_epochs=4, fastshap_batch=16, fastshap_lr=3e-3)
    (e,) = train_amortized(bb, [h], images(32), cfg, seed=0, eval_images=images(4, seed=1))
    hist = e.history
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3, 4] and all("fid_plus_auc" in r for r in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]
    a = e.explain(images(3), h)
    p = torch.softmax(h(bb.embed(images(3))), -1)
    p0 = torch.softmax(h(bb.embed(bb.mask(images(3), torch.zeros(3, 64, dtype=torch.bool)))), -1)
    t = p.argmax(-1)
    assert a.flatten(1).sum(1).tolist() == pytest.approx((p - p0).gather(1, t[:, None]).squeeze(1).tolist(),
                                                         abs=1e-5)  # efficient normalisation
    with pytest.raises(ValueError, match="trained for another head"):
        e.explain(images(2), other)


@pytest.mark.parametrize("name", ["ig", "gradcam", "occlusion", "kernelshap", "lime"])  # those that read a target
def test_bad_targets_are_named_before_any_model_pass(name, monkeypatch):
    """A target out of the head's classes, of another length than the batch, or not an integer: a ValueError
    that says what was expected, raised before the backbone runs (not an indexing error after the passes)."""
    bb = tiny_backbone("vit")
    kw = {"budget": 20} if name in ("kernelshap", "lime") else {"n_steps": 2} if name == "ig" else {}
    e, h, x = make_explainer(name, bb, **kw), heads_for(bb)[0], images(4)

    def no_pass(*a, **k):
        raise AssertionError("the backbone ran before the target was checked")

    monkeypatch.setattr(bb, "_run", no_pass)
    bad = [(torch.tensor([0, 3, 1, 2]), r"must lie in \[0, 3\).*got 0\.\.3"), (-1, r"must lie in \[0, 3\)"),
           (torch.tensor([0, 1]), r"one per image \(\[4\]\), got shape \(2,\)"),
           (torch.tensor([[0, 1]]), "one per image"), (torch.tensor([0.0, 1, 1, 0]), "integer class indices")]
    for target, msg in bad:
        with pytest.raises(ValueError, match=msg):
            e.explain(x, h, target)


def test_sampling_targets_given_for_a_batch_larger_than_a_chunk():
    """Regression: given targets were checked against one chunk of images, so a batch larger than
    ``max_embeddings // budget`` failed; the maps equal the unchunked ones."""
    bb, h, x = toy_backbone(), linear_head(3), images(5)
    t = torch.tensor([2, 0, 1, 1, 2])
    for name in ("kernelshap", "lime"):
        whole = make_explainer(name, bb, budget=20).explain(x, h, t)
        e = make_explainer(name, bb, budget=20)
        e.max_embeddings = 2 * len(e.coalitions(torch.Generator().manual_seed(0)))  # two images per chunk
        assert torch.allclose(whole, e.explain(x, h, t), atol=1e-6), name


def test_registry_errors():
    bb = toy_backbone()
    assert set(EXPLAINERS) >= {"random", "ig", "gradcam", "rollout", "occlusion", "kernelshap", "lime",
                               "fastshap", "tve"}
    with pytest.raises(KeyError, match="unknown explainer 'shap'"):
        make_explainer("shap", bb)
    with pytest.raises(TypeError, match="needs budget"):
        make_explainer("kernelshap", bb)
    with pytest.raises(TypeError, match="pass its trained model, radius"):
        make_explainer("tve", bb)  # the factory never trains: a study hands it the trained network
    with pytest.raises(ValueError, match="expected normalised images"):
        make_explainer("random", bb).explain(torch.randn(2, 1, 32, 32), linear_head())


def test_registry_capabilities_and_decorator():
    """Capabilities are class attributes; a new explainer joins the registry by its decorator alone."""
    from tve_lib.explainers import Explainer, explainer_class, register_explainer, registered

    assert EXPLAINERS == ("random", "ig", "gradcam", "rollout", "occlusion", "kernelshap", "lime", "fastshap", "tve")
    assert [n for n in EXPLAINERS if explainer_class(n).sampling] == ["kernelshap", "lime"]
    assert {n: explainer_class(n).training for n in EXPLAINERS if explainer_class(n).training} == {
        "fastshap": "task", "tve": "pretrain"}
    assert not explainer_class("rollout").supports(tiny_backbone("swin"))

    @register_explainer
    class Constant(Explainer):
        name = "constant_test"
        compared = False

        def explain(self, images, head, target=None):
            return torch.ones(len(images), self.grid, self.grid)

    try:
        bb = toy_backbone()
        assert "constant_test" in registered() and "constant_test" not in registered(compared=True)
        maps = explain_heads(make_explainer("constant_test", bb), images(3), [linear_head(), linear_head()])
        assert [tuple(m.shape) for m in maps] == [(3, bb.grid, bb.grid)] * 2
    finally:
        from tve_lib.explainers import registry

        registry._REGISTRY.pop("constant_test")


def test_random_baseline_is_seeded_per_image():
    """Regression: the random baseline reseeded on every call, so batches repeated each other's maps."""
    bb = toy_backbone()
    x = images(6)
    e = make_explainer("random", bb, seed=3)
    full = e.explain(x, linear_head())
    chunked = explain_heads(e, x, [linear_head()], batch_size=3)[0]
    assert torch.equal(full, chunked)
    assert not torch.equal(full[3:], full[:3])  # images 3-5 no longer get the maps of images 0-2
    assert torch.equal(full[4], e.explain(x[4:5], linear_head())[0])  # any position, any batch
    assert not torch.equal(full, make_explainer("random", bb, seed=4).explain(x, linear_head()))


def test_every_path_checks_the_head_against_the_embedding():
    """Regression: a head of the wrong input size got torch's matmul error on several paths."""
    from tve_lib.explainers.tve import window_occlusion
    from tve_lib.metrics import perturbation_curves
    from tve_lib.studies.fidelity import evaluate_maps

    bb = toy_backbone()
    wrong = make_head("linear", bb.embed_dim + 1, 3)
    x = images(2)
    a = torch.rand(2, bb.grid, bb.grid)
    calls = {
        "window_occlusion": lambda: window_occlusion(bb, wrong, x, torch.zeros(2, dtype=torch.long), 1),
        "kernelshap": lambda: make_explainer("kernelshap", bb, budget=20).explain(x, wrong),
        "lime": lambda: make_explainer("lime", bb, budget=20).explain(x, wrong),
        "occlusion": lambda: make_explainer("occlusion", bb).explain(x, wrong),
        "perturbation_curves": lambda: perturbation_curves(bb, wrong, x, a),
        "evaluate_maps": lambda: evaluate_maps(bb, wrong, x, {"m": a}),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="head expects"):
            call()
            pytest.fail(f"{name} accepted a head of the wrong input size")


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_refuses_an_empty_batch_raw_pixels_and_a_wrong_head(name):
    """The protocol's inputs are checked the same way whichever method is called, the two that read neither head
    nor target (random, rollout) included: a user who swaps methods sees the same error for the same mistake."""
    bb = tiny_backbone("vit")
    kw = {"budget": 20} if name in ("kernelshap", "lime") else {"n_steps": 2} if name == "ig" else {}
    e, h = make_explainer(name, bb, **kw), heads_for(bb)[0]
    with pytest.raises(ValueError, match=r"expected at least one image, got an empty batch \(0, 3, 32, 32\)"):
        e.explain(images(0), h)
    with pytest.raises(TypeError, match="expected normalised float images, got torch.uint8"):
        e.explain(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), h)
    with pytest.raises(ValueError, match=f"head expects {bb.embed_dim + 1}-dim inputs"):
        e.explain(images(2), make_head("linear", bb.embed_dim + 1, 3))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        e.explain(images(2), h, 3)


@pytest.mark.parametrize("name", ["vit", "deit"])
def test_gradcam_equals_the_map_computed_by_hand(name):
    """Grad-CAM at the last block's input tokens, written out here with a hook and autograd: the channel weights
    are the patch-mean gradients of the target logit, the map their weighted sum of the tokens (ReLU optional)."""
    bb = tiny_backbone(name)
    torch.manual_seed(0)
    head = make_head("mlp", bb.embed_dim, 3, 16).eval()
    x, t = images(3), torch.tensor([0, 2, 1])
    held = {}

    def keep_tokens(module, args):
        held["a"] = args[0].detach().requires_grad_(True)
        return (held["a"], *args[1:])

    hook = bb.model.blocks[-1].register_forward_pre_hook(keep_tokens)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(head(bb.embed(x)).gather(1, t[:, None]).sum(), held["a"])
    hook.remove()
    npt = bb.num_prefix_tokens
    tokens, grad = held["a"][:, npt:].detach(), grad[:, npt:]  # [B, G², D]
    cam = (grad.mean(1, keepdim=True) * tokens).sum(-1).view(3, bb.grid, bb.grid)
    for relu in (True, False):
        want = cam.clamp_min(0) if relu else cam
        torch.testing.assert_close(GradCAM(bb, relu=relu).explain(x, head, t), want, atol=1e-5, rtol=1e-4)
    assert (cam < 0).any()  # so the ReLU'd and the signed maps differ: both are checked


def test_explain_heads_checks_its_lists_before_any_pass():
    bb = tiny_backbone("vit")
    e, hs, x = make_explainer("occlusion", bb), heads_for(bb), images(4)
    with pytest.raises(TypeError, match="heads must be a list of heads"):
        explain_heads(e, x, hs[0])
    with pytest.raises(ValueError, match=r"1 targets for 2 heads: give a list of one target \(or None\) per head"):
        explain_heads(e, x, hs, [None])
    with pytest.raises(ValueError, match="Tensor for 2 heads"):
        explain_heads(e, x, hs, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"one per image \(\[4\]\), got shape \(3,\)"):
        explain_heads(e, x, hs, [torch.tensor([0, 1, 2]), None])


def test_ig_needs_a_whole_number_of_steps():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="IG's n_steps must be a whole number >= 1"):
            make_explainer("ig", tiny_backbone("vit"), n_steps=bad)
