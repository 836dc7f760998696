"""LTX (docs/method.md §3): the mask explainer, pre-training, per-image fine-tuning and step selection."""

import dataclasses

import pandas as pd
import pytest
import torch
from conftest import tiny_backbone

from tve_lib import token_grids
from tve_lib.config import LTXConfig, get_profile
from tve_lib.data import TensorImageSet
from tve_lib.explainers import ltx, ltx_model, make_explainer, registered
from tve_lib.heads import make_head
from tve_lib.report import claims
from tve_lib.report import ltx as ltx_report
from tve_lib.studies import ltx as ltx_study

SMALL = LTXConfig(n_train=64, epochs=3, batch_size=32, ft_steps=3, ft_batch=4, n_explain=4)


def _head(bb, classes=3, seed=0):
    torch.manual_seed(seed)
    return make_head("linear", bb.embed_dim, classes).eval().requires_grad_(False)


def _images(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: with two threads on a loaded 2-core machine, thread hand-offs cost
    far more than the arithmetic (measured: ~100x slower per step), so this file runs on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vit():
    return tiny_backbone("vit")


# ----------------------------------------------------------------------------- the explainer
@pytest.mark.parametrize("name,token_grid", [("vit", 8), ("deit", 8), ("swin", 4)])
def test_mask_shape_range_and_frozen_embeddings(name, token_grid):
    bb = tiny_backbone(name)
    torch.manual_seed(0)
    net = ltx_model.LTXNet(bb)
    x = _images(3)
    tok = token_grids.token_grid(net.encoder, net.encoder.forward_features(x), bb.num_prefix_tokens)
    assert tok.shape == (3, token_grid, token_grid, net.encoder.num_features)
    m = net(x)
    assert m.shape == (3, bb.grid, bb.grid)  # Swin's 4x4 final stage is interpolated to the 8x8 grid
    assert (m > 0).all() and (m < 1).all()
    frozen = {k for k, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(k.startswith(("encoder.patch_embed.", "encoder.pos_embed")) for k in frozen)
    assert any(k.startswith("encoder.patch_embed.") for k in frozen)
    if name != "swin":
        assert "encoder.pos_embed" in frozen
    assert all(p.requires_grad for k, p in net.head.named_parameters())
    # a deep copy: no storage shared with the explained model
    own = {p.data_ptr() for p in bb.parameters()}
    assert not own & {p.data_ptr() for p in net.parameters()}


def test_prefix_tokens_must_leave_a_square_grid():
    bb = tiny_backbone("deit")
    with pytest.raises(ValueError, match="do not form a square grid"):
        token_grids.token_grid(bb.model, bb.model.forward_features(_images(1)), 0)  # DeiT has 2 prefix tokens, not 0


def test_soft_mask_uses_the_shared_removal_operator(vit):
    x = _images(2)
    g = vit.grid
    hard = (torch.rand(2, g, g, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    assert torch.equal(ltx_model.apply_soft_mask(vit, x, hard, "nearest"), vit.mask(x, hard))
    for c in (0.0, 0.3, 1.0):  # bilinear upsampling of a constant mask is that constant
        m = torch.full((2, g, g), c)
        torch.testing.assert_close(ltx_model.apply_soft_mask(vit, x, m, "bilinear"), c * x)
    with pytest.raises(ValueError, match="unknown upsample"):
        ltx_model.apply_soft_mask(vit, x, hard, "cubic")


def test_loss_terms_closed_form(vit):
    head = _head(vit)
    x = _images(2)
    y = torch.tensor([0, 2])
    m = torch.full((2, vit.grid, vit.grid), 0.25)
    loss, ce, pen = ltx_model.ltx_loss(vit, head, x, m, y, dataclasses.replace(SMALL, lambda_mask=2.0))
    torch.testing.assert_close(pen, torch.full((2,), 0.25))
    expect_ce = torch.nn.functional.cross_entropy(head(vit.embed(0.25 * x)), y, reduction="none")
    torch.testing.assert_close(ce, expect_ce)
    torch.testing.assert_close(loss, ce + 0.5)
    _, _, bce = ltx_model.ltx_loss(vit, head, x, m, y, dataclasses.replace(SMALL, mask_penalty="bce"))
    torch.testing.assert_close(bce, torch.nn.functional.softplus(torch.tensor(0.25)).expand(2))


# ----------------------------------------------------------------------------- training
def test_pretraining_and_finetuning_decrease_the_loss(vit):
    head = _head(vit)
    data = TensorImageSet("rand", torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(0)),
                          torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(0)), ["a", "b", "c"])
    torch.manual_seed(0)
    net = ltx_model.LTXNet(vit)
    hist = ltx.pretrain_ltx(net, vit, head, data, dataclasses.replace(SMALL, n_train=32, batch_size=16), seed=0,
                            progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"]
    x = vit.normalize(data.get(torch.arange(3))[0])
    res = ltx.finetune(net, vit, head, x, dataclasses.replace(SMALL, ft_steps=6), progress=False)
    assert res.masks.shape == (3, 6, vit.grid, vit.grid) and res.losses.shape == (3, 6)
    assert (res.losses[:, -1] < res.losses[:, 0]).all()
    # step 0 of the trajectory is the pre-trained explainer itself
    with torch.no_grad():
        torch.testing.assert_close(res.masks[:, 0], net(x), atol=1e-5, rtol=1e-4)


def test_finetuning_never_changes_the_explained_model_or_plTX(vit):
    head = _head(vit)
    torch.manual_seed(0)
    net = ltx_model.LTXNet(vit)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    net_before = {k: v.clone() for k, v in net.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    res = ltx.finetune(net, vit, head, _images(4), SMALL, progress=False)
    assert not torch.equal(res.masks[:, 0], res.masks[:, -1])  # the copies did train
    for ref, sd in ((before, vit.state_dict()), (net_before, net.state_dict()), (head_before, head.state_dict())):
        assert all(torch.equal(ref[k], sd[k]) for k in ref)


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_vectorised_copies_equal_one_image_at_a_time(name):
    bb = tiny_backbone(name)
    head = _head(bb)
    torch.manual_seed(0)
    net = ltx_model.LTXNet(bb)
    x = _images(3)
    together = ltx.finetune(net, bb, head, x, dataclasses.replace(SMALL, ft_batch=3), progress=False)
    alone = ltx.finetune(net, bb, head, x, dataclasses.replace(SMALL, ft_batch=1), progress=False)
    torch.testing.assert_close(together.losses, alone.losses, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together.masks, alone.masks, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- selection
def test_step_selection_closed_form():
    losses = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 0.0]])
    pos = torch.tensor([[10.0, 5.0, 3.0], [2.0, 8.0, 1.0]])
    assert ltx.select_steps(losses, None, "loss").tolist() == [1, 2]
    assert ltx.select_steps(losses, pos, "test_metric").tolist() == [2, 2]  # no threshold: the best
    # the official run stops at the first step below the threshold
    assert ltx.select_steps(losses, pos, "test_metric", stop_pos_auc=6.0).tolist() == [1, 0]
    assert ltx.select_steps(losses, pos, "test_metric", stop_pos_auc=0.5).tolist() == [2, 2]
    with pytest.raises(ValueError, match="needs POS-AUC"):
        ltx.select_steps(losses, None, "test_metric")
    with pytest.raises(ValueError, match="unknown selection"):
        ltx.select_steps(losses, pos, "best")


def test_selection_is_recorded_and_test_metric_is_never_ranked(vit):
    ev = get_profile("smoke").eval
    head = _head(vit)
    torch.manual_seed(0)
    net = ltx_model.LTXNet(vit)
    x = _images(4)
    labels = torch.tensor([0, 1, 2, 0])
    res = ltx.finetune(net, vit, head, x, SMALL, labels=labels, pos_auc=True, eval_cfg=ev, progress=False)
    assert res.pos_auc.shape == (4, SMALL.ft_steps)
    assert ((res.pos_auc >= 0) & (res.pos_auc <= 100)).all()
    meta = dict(backbone="vit", task="t", head="linear")
    _, summ = ltx_study.score_ltx(vit, head, x, res, SMALL, ev, ltx.SELECTIONS, meta=meta)
    assert set(zip(summ.method, summ.selection)) == {("pltx", "none"), ("ltx", "loss"), ("ltx", "test_metric")}
    assert {"pos_auc", "fid_plus_auc"} <= set(summ.metric)
    ranks = ltx_report.rank_methods(summ)
    assert set(ranks.label) == {"pltx", "ltx (loss)"}
    claim = claims.finetune_claim(summ)
    assert set(claim.selection) == {"loss", "test_metric"}
    assert "selection=loss" in claims.claim_verdict(claim)
    with pytest.raises(ValueError, match="selection"):
        ltx_report.rank_methods(summ.drop(columns="selection"))


def test_explainer_api_and_bad_input(vit):
    head = _head(vit)
    torch.manual_seed(0)
    net = ltx_model.LTXNet(vit)
    x = _images(2)
    p = ltx.PLTX(vit, net, head)
    assert p.explain(x, head).shape == (2, vit.grid, vit.grid)
    with pytest.raises(ValueError, match="task-specific"):
        p.explain(x, _head(vit, seed=1))
    e = ltx.LTX(vit, net, SMALL, head, selection="test_metric", eval_cfg=get_profile("smoke").eval)
    with pytest.raises(ValueError, match="ground-truth labels"):
        e.explain(x, head)
    labelled = e.with_labels(torch.tensor([0, 1]))
    m = labelled.explain(x, head)
    assert m.shape == (2, vit.grid, vit.grid) and labelled.last.pos_auc is not None
    assert e.labels is None and e.last is None  # a configured copy: the original is unchanged
    with pytest.raises(ValueError, match="unknown LTX mode"):
        ltx_model.check_config(dataclasses.replace(SMALL, mode="oracle"))
    with pytest.raises(ValueError, match="ft_steps must be >= 1"):
        ltx_model.check_config(dataclasses.replace(SMALL, ft_steps=0))
    with pytest.raises(ValueError, match="needs the ground-truth labels"):
        ltx_model.training_targets(vit, head, x, None, "target")


def test_registered_and_built_by_the_registry(vit):
    head = _head(vit)
    torch.manual_seed(0)
    net = ltx_model.LTXNet(vit)
    x = _images(2)
    assert {"pltx", "ltx"} <= set(registered(compared=False)) and not {"pltx", "ltx"} & set(registered(True))
    p = make_explainer("pltx", vit, net=net, head=head)
    assert type(p) is ltx.PLTX and p.training == "task" and p.trained_args == ("net",)
    assert not ltx.PLTX.class_conditional and ltx.LTX.class_conditional
    torch.testing.assert_close(p.explain(x, head, target=1), p.explain(x, head))  # pLTX ignores target
    with pytest.raises(TypeError, match="trained"):
        make_explainer("pltx", vit)
    ev = get_profile("smoke").eval
    e = make_explainer("ltx", vit, net=net, cfg=SMALL, head=head, selection="test_metric", eval_cfg=ev,
                       labels=torch.tensor([0, 1]))
    assert type(e) is ltx.LTX and e.explain(x, head).shape == (2, vit.grid, vit.grid)
    # labels given at construction or by `with_labels` give the same fine-tuning
    same = make_explainer("ltx", vit, net=net, cfg=SMALL, head=head, selection="test_metric", eval_cfg=ev)
    torch.testing.assert_close(same.with_labels(torch.tensor([0, 1])).explain(x, head), e.explain(x, head))


def test_missing_inference_keeps_existing_rows(tmp_path):
    path = tmp_path / "throughput.csv"
    tp = pd.DataFrame([dict(device="cpu", backbone="vit", size="profile", batch_size=32, method=m)
                       for m in ("inference", "pltx")])
    assert len(ltx_study.missing_inference(tp, path)) == 2  # no file yet: ours fills the gap
    tp.iloc[:1].to_csv(path, index=False)
    assert list(ltx_study.missing_inference(tp, path).method) == ["pltx"]


def test_throughput_table_merges_tasks():
    base = dict(device="cpu", threads=1, backbone="vit", size="profile", budget=None, batch_size=32, n_tasks=1,
                basis="measured", estimated=False)
    tp = pd.DataFrame([base | dict(method="pltx", task=t, ms_per_image=ms, repeats=3)
                       for t, ms in (("a", 1.0), ("b", 3.0), ("c", 2.0))])
    out = ltx_study.throughput_table(tp)
    assert len(out) == 1 and out.ms_per_image.item() == 2.0 and out.repeats.item() == 9
    assert out.images_per_s.item() == 500.0


def test_pltx_cache_key_ignores_finetuning_settings(tmp_path):
    from tve_lib.studies.suite import Suite

    s = Suite("smoke", 0, "cpu", results_dir=str(tmp_path))
    a = ltx_study.pltx_checkpoint(s, "vit", "digits")
    assert a == ltx_study.pltx_checkpoint(s, "vit", "digits", cfg=dataclasses.replace(s.profile.ltx, ft_steps=7))
    assert a != ltx_study.pltx_checkpoint(s, "vit", "digits", cfg=dataclasses.replace(s.profile.ltx, lambda_mask=2.0))
    assert a != ltx_study.pltx_checkpoint(s, "deit", "digits") and a.parent == s.ckpt_dir
