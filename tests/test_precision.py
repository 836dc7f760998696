"""Mixed precision and the fast paths (`Profile.precision`, `Profile.compile`, `Backbone.amp_dtype`).

Run on CPU, where bf16 autocast exists too: ``precision="bf16"`` must really change the numbers (by about
bf16's rounding) while every caller still sees float32; the default ("auto") on CPU must be exactly the
plain fp32 calls; exact references stay fp32 under any precision; compiling (backend "eager": the same
operations through dynamo) must change nothing, weights digests and state dicts included.
"""

import copy
import dataclasses

import pytest
import torch
from conftest import tiny_backbone

from tve_lib import schema
from tve_lib.backbones import Backbone
from tve_lib.config import PRECISIONS, get_profile
from tve_lib.data import TensorImageSet
from tve_lib.explainers import make_explainer
from tve_lib.explainers.tve import TVE, window_occlusion
from tve_lib.explainers.tve_model import build_explainer, explainer_forward
from tve_lib.explainers.tve_targets import _store_key, backbone_digest
from tve_lib.explainers.tve_train import step_seconds
from tve_lib.heads import make_head
from tve_lib.precision import amp_dtype_for, check_compile_backend, cpu_bf16, dtype_name
from tve_lib.shapley import player_groups, shapley_references
from tve_lib.studies import throughput as bench
from tve_lib.studies import throughput_runs as running

#: bf16 keeps 8 significant bits: one rounding is off by at most u = 2^-8 (0.39 %) of the value. The passes
#: round activations a few times per block (matmul inputs; LayerNorm and softmax run in fp32 under
#: autocast), so the relative error of an embedding grows to a few u (measured 0.25-0.6 % on the tiny
#: models): at most 8u = 3.1 % here, well below what a broken pass would give (order 1)
BF16_REL_TOL = 8 * 2.0 ** -8
#: ...and at least this: fp32 reordering noise is ~1e-7 relative, bf16 rounding ~1e-3; above 1e-4 the
#: difference is bf16 rounding, i.e. autocast really ran
BF16_MIN_REL = 1e-4


def _images(bb: Backbone, n: int = 6, seed: int = 0) -> torch.Tensor:
    return bb.normalize(torch.rand(n, 1, bb.img_size, bb.img_size, generator=torch.Generator().manual_seed(seed)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row relative error ``|a - b| / |b|`` of ``[B, ...]`` tensors."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def _plain_embed(bb: Backbone, x: torch.Tensor) -> torch.Tensor:
    """What `Backbone.embed` computed before precision existed: the two timm calls, nothing around them."""
    return bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)


# ----------------------------------------------------------------------------- bf16 on CPU
@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_bf16_passes_return_float32_close_to_fp32_but_not_equal(name):
    bb = tiny_backbone(name)
    x = _images(bb)
    ref_e, (ref_t, ref_g), ref_l = bb.embed(x), bb.player_tokens(x, 2), bb.logits(x)
    bb.precision = "bf16"
    assert bb.amp_dtype == torch.bfloat16 and bb.compute_dtype == torch.bfloat16
    e, (t, g), lg = bb.embed(x), bb.player_tokens(x, 2), bb.logits(x)
    for got, ref in ((e, ref_e), (t, ref_t), (g, ref_g), (lg, ref_l)):
        assert got.dtype == torch.float32  # callers never see bf16
        rel = _rel(got, ref)
        assert rel.max() < BF16_REL_TOL, rel
        assert rel.min() > BF16_MIN_REL, rel  # autocast ran: every image moved by bf16 rounding


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_full_precision_gives_exactly_the_fp32_result_and_nests(name):
    bb = tiny_backbone(name)
    x = _images(bb)
    ref_e, (ref_t, _) = bb.embed(x), bb.player_tokens(x, 2)
    bb.amp_dtype = torch.bfloat16  # the setter: precision "bf16"
    assert bb.precision == "bf16"
    with bb.full_precision():
        with bb.full_precision():
            assert bb.amp_dtype is None
        assert bb.amp_dtype is None  # still inside the outer block
        assert torch.equal(bb.embed(x), ref_e) and torch.equal(bb.player_tokens(x, 2)[0], ref_t)
    assert bb.amp_dtype == torch.bfloat16 and not torch.equal(bb.embed(x), ref_e)  # on again after the block


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_auto_on_cpu_is_exactly_todays_fp32_path(name):
    bb = tiny_backbone(name)  # wrap() with the smoke profile at precision "auto", no compile
    assert bb.precision == "auto"
    assert get_profile("smoke").precision == "native" == get_profile("cpu").precision == get_profile("paper").precision
    assert bb.amp_dtype is None and bb.compute_dtype == torch.float32
    x = _images(bb)
    off = copy.deepcopy(bb)
    off.precision = "fp32"
    assert torch.equal(bb.embed(x), _plain_embed(bb, x)) and torch.equal(bb.embed(x), off.embed(x))
    assert torch.equal(bb.logits(x), bb.model(x))
    t, g = bb.player_tokens(x, 2)
    t_off, g_off = off.player_tokens(x, 2)
    assert torch.equal(t, t_off) and torch.equal(g, g_off)
    assert not torch.is_autocast_enabled("cpu")  # nothing left switched on


def test_auto_resolves_bf16_only_on_cuda_and_the_explicit_settings_everywhere():
    assert amp_dtype_for("auto", "cpu") is None and amp_dtype_for("fp32", "cpu") is None
    assert amp_dtype_for("bf16", "cpu") == torch.bfloat16
    if torch.cuda.is_available():
        assert amp_dtype_for("auto", "cuda") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
        assert amp_dtype_for("fp32", "cuda") is None
    assert dtype_name(torch.bfloat16) == "bfloat16" and dtype_name(torch.float32) == "float32"


@pytest.mark.parametrize("has_bf16", [True, False])
def test_native_is_bf16_exactly_where_the_cpu_has_bf16_instructions(monkeypatch, has_bf16):
    """"native" (every profile's) follows the CPU's bf16 instructions; "auto" on CPU never does."""
    import tve_lib.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16", lambda: has_bf16)
    assert precision.amp_dtype_for("native", "cpu") == (torch.bfloat16 if has_bf16 else None)
    assert precision.amp_dtype_for("auto", "cpu") is None
    bb = tiny_backbone("vit")
    bb.precision = "native"
    assert bb.amp_dtype == (torch.bfloat16 if has_bf16 else None)
    with bb.full_precision():  # a reference stays fp32 under "native" too
        assert bb.amp_dtype is None


@pytest.mark.parametrize("name", ["vit", "swin"])
def test_native_on_cpu_autocasts_inference_and_training_steps(monkeypatch, name):
    """Under "native" on a CPU with bf16 instructions, passes without gradients and the training steps of the
    suite's own models (`Backbone.training_autocast`) run in bf16, the latter with unfused attention; the
    backbone's passes that record gradients (gradient explainers, LTX) are exactly the fp32 calls; "bf16"
    autocasts them too."""
    import tve_lib.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    bb = tiny_backbone(name)
    bb.precision = "native"
    x = _images(bb)
    with torch.no_grad():
        assert bb.pass_dtype() == torch.bfloat16 == bb.amp_dtype == bb.compute_dtype == bb.train_dtype
        assert BF16_MIN_REL < _rel(bb.embed(x), _plain_embed(bb, x)).min() < BF16_REL_TOL
    assert torch.is_grad_enabled() and bb.pass_dtype() is None and bb.amp_dtype == torch.bfloat16
    xg = x.clone().requires_grad_(True)
    got = bb.logits(xg)
    assert got.requires_grad and torch.equal(got, bb.model(x))
    cfg = get_profile("smoke").tve
    torch.manual_seed(0)
    model = build_explainer(bb, cfg)
    with torch.no_grad():
        inp, base = model.prepare(bb, x)
        pk, _ = explainer_forward(model, bb, inp, base)
        plain = model(inp, base)
    trained = explainer_forward(model, bb, inp, base)  # a training step's forward: bf16, float32 out
    assert all(t.dtype == torch.float32 and t.requires_grad for t in trained)
    for a, b in zip(trained, plain):
        assert BF16_MIN_REL < _rel(a.detach(), b).max() < BF16_REL_TOL
    assert _rel(pk, trained[0].detach()).max() < BF16_REL_TOL  # bf16 both: fused and unfused attention
    bb.precision = "bf16"
    assert bb.pass_dtype() == torch.bfloat16  # asked for explicitly: gradients too
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("name", ["vit", "deit"])  # timm's Swin attention is unfused by default
def test_training_autocast_unfuses_attention_and_restores_it(monkeypatch, name):
    """`Backbone.training_autocast` on a CPU: bf16 autocast with timm's unfused attention inside, which is the
    fused kernel's computation (fp32: equal to rounding), and every module's flag back as it was after, also
    when the step raises; in fp32 ("auto" on a CPU) it is no context at all."""
    import tve_lib.precision as precision

    bb = tiny_backbone(name)
    mods = [m for m in bb.model.modules() if hasattr(m, "fused_attn")]
    assert mods and all(m.fused_attn for m in mods)
    x = _images(bb)
    with torch.no_grad():
        fused = bb.model(x)
        with precision.unfused_attention(bb.model):
            assert not any(m.fused_attn for m in mods)
            torch.testing.assert_close(bb.model(x), fused, rtol=1e-5, atol=1e-5)
    assert all(m.fused_attn for m in mods)
    with bb.training_autocast(bb.model):  # "auto" on a CPU: fp32, fused, nothing changed
        assert bb.train_dtype is None and not torch.is_autocast_enabled("cpu") and all(m.fused_attn for m in mods)
    monkeypatch.setattr(precision, "cpu_bf16", lambda: True)
    bb.precision = "native"
    with pytest.raises(RuntimeError, match="inside"):
        with bb.training_autocast(bb.model):
            assert torch.is_autocast_enabled("cpu") and not any(m.fused_attn for m in mods)
            out = bb.model(x)
            raise RuntimeError("inside")
    assert out.dtype == torch.bfloat16 and all(m.fused_attn for m in mods)
    assert not torch.is_autocast_enabled("cpu")


# ----------------------------------------------------------------------------- compile
@pytest.mark.parametrize("name", ["vit"])
def test_compile_eager_gives_equal_outputs_and_leaves_weights_and_digests_alone(name):
    bb = tiny_backbone(name)
    x = _images(bb, 4)
    ref = bb.embed(x), *bb.player_tokens(x, 2), bb.logits(x)
    keys, digest = list(bb.state_dict()), backbone_digest(bb)
    bb.compile_backend = "eager"
    got = bb.embed(x), *bb.player_tokens(x, 2), bb.logits(x)
    assert set(bb._compiled) == {"embed", "tokens", "logits"}  # the compiled passes really ran
    for a, b in zip(got, ref):
        assert torch.equal(a, b)
    assert list(bb.state_dict()) == keys and backbone_digest(bb) == digest
    # a copy compiles its own model's passes (the compiled functions hold the model they were made from)
    cp = copy.deepcopy(bb)
    assert cp._compiled == {}
    with torch.no_grad():
        for p in cp.model.parameters():
            p.add_(0.05)
    assert torch.equal(cp.embed(x), _plain_embed(cp, x)) and not torch.equal(cp.embed(x), ref[0])
    assert torch.equal(bb.embed(x), ref[0])


@pytest.mark.parametrize("method", ["rollout", "gradcam"])
def test_hooking_explainers_see_their_hooks_when_the_backbone_is_compiled(method):
    """A compiled graph skips hooks registered after it was built (dynamo does not guard on them): rollout
    and Grad-CAM run the passes eagerly (`Backbone.uncompiled`) and give the uncompiled maps."""
    bb = tiny_backbone("vit")
    head = make_head("linear", bb.embed_dim, 3)
    x = _images(bb, 2)
    ref = make_explainer(method, bb).explain(x, head)
    bb.compile_backend = "eager"
    bb.embed(x)  # compiled before the explainer's hooks exist
    assert torch.equal(make_explainer(method, bb).explain(x, head), ref)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "", "FP32"])
def test_an_unknown_precision_fails_clearly(bad):
    with pytest.raises(ValueError, match="auto, native, fp32, bf16"):
        get_profile("cpu", {"precision": bad})
    with pytest.raises(ValueError, match="unknown precision"):
        Backbone(tiny_backbone("vit").model, "vit", 32, (0.5,) * 3, (0.5,) * 3, precision=bad)
    assert PRECISIONS == ("auto", "native", "fp32", "bf16")


def test_an_unknown_compile_backend_or_amp_dtype_fails_clearly():
    with pytest.raises(ValueError, match="unknown torch.compile backend 'inductr'.*inductor"):
        check_compile_backend("inductr")
    with pytest.raises(TypeError, match="'compile' takes str, got True"):
        get_profile("cpu", {"compile": True})
    assert check_compile_backend("") == "" and check_compile_backend("eager") == "eager"
    bb = tiny_backbone("vit")
    with pytest.raises(ValueError, match="None .fp32. or torch.bfloat16"):
        bb.amp_dtype = torch.float16


# ----------------------------------------------------------------------------- exact references stay fp32
def test_exact_references_are_fp32_under_bf16():
    bb = tiny_backbone("vit")
    torch.manual_seed(0)
    heads = [make_head("linear", bb.embed_dim, 3), make_head("mlp", bb.embed_dim, 3)]
    x = _images(bb, 2)
    groups = player_groups(bb.grid, (2, 2))
    y = heads[0](bb.embed(x)).argmax(-1)
    ref_sh = shapley_references(bb, heads, x, groups, batch_size=8)
    ref_w = window_occlusion(bb, heads[0], x, y, 1)
    bb.precision = "bf16"
    for a, b in zip(shapley_references(bb, heads, x, groups, batch_size=8), ref_sh):
        assert torch.equal(a.values, b.values)
    assert torch.equal(window_occlusion(bb, heads[0], x, y, 1), ref_w)
    assert bb.amp_dtype == torch.bfloat16  # switched back on after the references


def test_target_store_key_names_the_autocast_dtype_only_when_there_is_one():
    bb = tiny_backbone("vit")
    up = TensorImageSet("up", torch.rand(4, 1, 32, 32), torch.zeros(4, dtype=torch.long), ["x"])
    fp32 = _store_key(bb, up, 0, radius=1)
    assert "amp" not in fp32  # the cpu profile's stores keep the key they always had
    bb.precision = "bf16"
    assert _store_key(bb, up, 0, radius=1) == fp32 | {"amp": "bfloat16"}


# ----------------------------------------------------------------------------- the TVE explainer
@pytest.mark.parametrize("arch", ["tapped", "two"])
def test_a_tve_training_step_runs_under_bf16_on_cpu(arch):
    cfg = dataclasses.replace(get_profile("smoke").tve, arch=arch, sampler="online", centred_weight=1.0,
                              batch_size=2, init_from_backbone=False)
    bb = tiny_backbone("vit")
    bb.precision = "bf16"
    up = TensorImageSet("up", torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)),
                        torch.zeros(2, dtype=torch.long), ["x"])
    torch.manual_seed(0)
    model = build_explainer(bb, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    hook = model.head_keep.channel_mlp[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    secs = step_seconds(model, bb, up, cfg, steps=1)
    hook.remove()
    assert len(secs) == 1 and seen and set(seen) == {torch.bfloat16}  # the explainer's linears ran in bf16
    for p in model.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()  # fp32 master weights, finite update
    assert sum(not torch.equal(p, b) for p, b in zip(model.parameters(), before)) == len(before)
    # explaining uses the same autocast and hands back float32 maps
    x = bb.normalize(up.get(torch.arange(2))[0])
    head = make_head("linear", bb.embed_dim, 3)
    a = TVE(bb, model.eval(), 1).explain(x, head)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    inp, base = model.prepare(bb, x)
    pk, pr = explainer_forward(model, bb, inp, base)
    with torch.no_grad():
        pk32, _ = model(inp, base)  # no autocast: fp32
    assert pk.dtype == torch.float32 and BF16_MIN_REL < _rel(pk, pk32).max() < BF16_REL_TOL


def test_explainer_forward_without_autocast_is_the_plain_call():
    bb = tiny_backbone("vit")  # auto on CPU
    cfg = get_profile("smoke").tve
    torch.manual_seed(0)
    model = build_explainer(bb, cfg).eval()
    x = _images(bb, 2)
    inp, base = model.prepare(bb, x)
    with torch.no_grad():
        got, ref = explainer_forward(model, bb, inp, base), model(inp, base)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


# ----------------------------------------------------------------------------- throughput rows
def test_throughput_rows_record_the_compute_dtype():
    bb = tiny_backbone("vit")
    heads = bench.random_heads(bb.embed_dim, (2,), "cpu")
    plan = bench.BenchPlan(size="profile", batch_sizes=(1,), repeats=1, warmup=0, max_measure_s=60.0, n_tasks=1,
                           task_batch_size=1)
    assert "dtype" in schema.EXTRA_COLUMNS
    for precision, dtype in (("auto", "float32"), ("bf16", "bfloat16")):
        bb.precision = precision
        res = running.run_backbone(bb, heads, bench.random_images(bb, 1), [], plan, "cpu", progress=None)
        assert set(res.throughput.dtype) == {dtype}


def test_the_paper_section_takes_the_running_profiles_precision(monkeypatch):
    import timm

    # a one-block ViT at 224 px stands in for ViT-B/16 (same grid, a fraction of the cost)
    monkeypatch.setattr(bench, "create_model", lambda spec, n: timm.create_model(
        "vit_tiny_patch16_224", num_classes=n, embed_dim=32, depth=1, num_heads=1))
    assert get_profile("paper").precision == "native" and get_profile("paper").compile == ""
    bb = bench.paper_backbone("vit", "cpu", "bf16", "eager")
    assert (bb.precision, bb.compile_backend, bb.amp_dtype) == ("bf16", "eager", torch.bfloat16)
    bb = bench.paper_backbone("vit", "cpu")  # default: the paper profile's own settings
    native = torch.bfloat16 if cpu_bf16() else None
    assert (bb.precision, bb.compile_backend, bb.amp_dtype) == ("native", "", native)


def test_the_loader_sections_paper_rows_take_the_running_profiles_precision(monkeypatch):
    """Notebook 04's paper-size step and fidelity-batch rows time the running profile's precision: fp32 in a cpu
    run on any CPU ("auto"), the paper profile's own ("native") only when none is given."""
    import timm

    from tve_lib.studies import loading

    monkeypatch.setattr(bench, "create_model", lambda spec, n: timm.create_model(
        "vit_tiny_patch16_224", num_classes=n, embed_dim=32, depth=1, num_heads=1))
    for precision, dtype in (("auto", "float32"), ("bf16", "bfloat16"),
                             (None, "bfloat16" if cpu_bf16() else "float32")):
        assert loading.fidelity_batch_row("cpu", batch_size=2, precision=precision)["dtype"] == dtype
    row = loading.step_row("cpu", batch_size=1, precision="auto")
    assert (row["dtype"], row["train_dtype"]) == ("float32", "float32")
    row = loading.step_row("cpu", batch_size=1, precision="bf16")
    assert (row["dtype"], row["train_dtype"]) == ("bfloat16", "bfloat16")


def test_precision_from_the_environment(monkeypatch, tmp_path):
    """`./run_all.sh --precision bf16 --compile eager` reaches every notebook's Suite through the environment;
    caches computed under autocast are keyed apart from the fp32 ones."""
    from tve_lib.config import COMPILE_ENV, PRECISION_ENV
    from tve_lib.studies.suite import Suite

    monkeypatch.setenv(PRECISION_ENV, "fp32")  # the smoke profile's "native" is bf16 on a CPU with bf16 instructions
    plain = Suite("smoke", results_dir=str(tmp_path), device="cpu")
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    monkeypatch.setenv(COMPILE_ENV, "eager")
    s = Suite("smoke", results_dir=str(tmp_path), device="cpu")
    assert (s.profile.precision, s.profile.compile) == ("bf16", "eager")
    # the suite's own backbones and the explainers trained under the autocast too: "_train"
    assert s._bb_key("vit") == plain._bb_key("vit") + "_bfloat16_train"
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        Suite("smoke", results_dir=str(tmp_path), device="cpu")
