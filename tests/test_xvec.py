"""The explainability vector: the method (tve_lib.explainers.xvec), its study (tve_lib.studies.xvec,
xvec_eval) and its claim rules (tve_lib.report.claims)."""

import math

import pytest
import torch
from conftest import tiny_backbone

from tve_lib import schema
from tve_lib.config import XVecConfig
from tve_lib.data import TensorImageSet
from tve_lib.explainers import make_explainer, xvec
from tve_lib.io import load_torch
from tve_lib.report import claims
from tve_lib.studies.xvec import cached_supervision
from tve_lib.studies.xvec_eval import select_lambda

CFG = XVecConfig(steps=3, batch_size=8, expl_hidden=16, train_blocks=1)


def _data(n: int = 24, classes: int = 10, seed: int = 0) -> TensorImageSet:
    g = torch.Generator().manual_seed(seed)
    return TensorImageSet("rand", torch.rand(n, 1, 32, 32, generator=g),
                          torch.randint(0, classes, (n,), generator=g), [str(i) for i in range(classes)])


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone("vit")


@pytest.fixture(scope="module")
def trained(bb):
    """(a) source pred-only, (b) source pred+expl, (c) target pred-only (3 classes)."""
    src, tgt = _data(24, 10, 0), _data(24, 3, 1)
    phi = torch.randn(len(src), 10, bb.n_players, generator=torch.Generator().manual_seed(5))
    a = xvec.build_model(bb, 10, CFG, 0)
    xvec.train_model(a, src, CFG, 0)
    b = xvec.build_model(bb, 10, CFG, 0)
    xvec.train_model(b, src, CFG, 0, phi=phi)
    c = xvec.build_model(bb, 3, CFG, 0)
    xvec.train_model(c, tgt, CFG, 0)
    return a, b, c, src, tgt, phi


def _same(m1: torch.nn.Module, m2: torch.nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_explanation_head_shape_for_two_label_spaces(name):
    bb = tiny_backbone(name)
    x = bb.normalize(_data(3).get([0, 1, 2])[0])
    for c in (10, 3):
        m = xvec.build_model(bb, c, CFG, 0)
        logits, vec = m(x)
        assert logits.shape == (3, c) and vec.shape == (3, bb.n_players, bb.embed_dim)
        _, maps = m.explain(x)
        assert maps.shape == (3, bb.grid, bb.grid)
    # the explanation head is label-space independent: one head's weights fit both models
    m10, m3 = xvec.build_model(bb, 10, CFG, 0), xvec.build_model(bb, 3, CFG, 1)
    m3.expl_head.load_state_dict(m10.expl_head.state_dict())
    assert torch.equal(m3(x)[1], m10(x)[1])


def test_one_forward_gives_prediction_and_closed_form_map(bb):
    m = xvec.build_model(bb, 4, CFG, 0)
    x = bb.normalize(_data(2).get([0, 1])[0])
    logits, maps = m.explain(x, target=torch.tensor([1, 3]))
    # the prediction equals the classification head on the (copied) backbone's embedding
    assert torch.allclose(logits, m.cls_head(m.backbone.embed(x)), atol=1e-6)
    _, vec = m(x)
    w = m.cls_head.weight
    expect = torch.stack([vec[0] @ w[1], vec[1] @ w[3]]).view(2, bb.grid, bb.grid)
    assert torch.allclose(maps, expect, atol=1e-6)
    # default target: the predicted class
    _, m_pred = m.explain(x)
    assert torch.allclose(m_pred, m.explain(x, logits.argmax(1))[1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):  # named, not an indexing error
        m.explain(x, target=torch.tensor([1, 4]))


def test_tau_is_zero_when_a_and_b_train_identically(bb, trained):
    a, b, _, src, _, phi = trained
    b0 = xvec.build_model(bb, 10, CFG, 0)
    xvec.train_model(b0, src, CFG, 0, phi=phi, expl_weight=0.0)  # supervision given, weight 0
    tau0 = xvec.task_vector(b0, a)
    assert all(torch.count_nonzero(t) == 0 for t in tau0.values())
    assert xvec.vector_norms(tau0)["total"] == 0.0
    # with the explanation loss, τ is not zero and covers the backbone and the explanation head
    n = xvec.vector_norms(xvec.task_vector(b, a))
    assert n["expl_head"] > 0 and n["backbone"] > 0
    assert not any(k.startswith("cls_head") for k in xvec.task_vector(b, a))


def test_lambda_zero_returns_the_target_model_bit_for_bit(bb, trained):
    a, b, c, _, tgt, _ = trained
    tau = xvec.task_vector(b, a)
    c0 = xvec.apply_vector(c, tau, 0.0)
    s0, sc = c0.state_dict(), c.state_dict()
    for k in sc:
        assert s0[k].dtype == sc[k].dtype
        assert torch.equal(s0[k].view(torch.uint8) if s0[k].is_floating_point() else s0[k],
                           sc[k].view(torch.uint8) if sc[k].is_floating_point() else sc[k]), k
    x = bb.normalize(tgt.get([0, 1])[0])
    assert torch.equal(c0(x)[0], c(x)[0]) and torch.equal(c0(x)[1], c(x)[1])
    assert c0 is not c


def test_apply_vector_is_theta_c_plus_lambda_tau(bb, trained):
    a, b, c, *_ = trained
    tau = xvec.task_vector(b, a)
    c1 = xvec.apply_vector(c, tau, 0.5)
    s1, sc = c1.state_dict(), c.state_dict()
    for k, t in tau.items():
        assert torch.allclose(s1[k], sc[k] + 0.5 * t)
    # the classification head keeps the target's label space, untouched
    assert torch.equal(s1["cls_head.weight"], sc["cls_head.weight"]) and s1["cls_head.weight"].shape[0] == 3
    # λ = 1 on the source recovers (b) from (a)
    b_again = xvec.apply_vector(a, tau, 1.0)
    assert all(torch.allclose(b_again.state_dict()[k], b.state_dict()[k], atol=1e-6) for k in tau)
    with pytest.raises(ValueError, match="lacks"):
        xvec.apply_vector(c, {"nope.weight": torch.zeros(1)}, 1.0)


def test_seeds_make_the_three_trainings_reproducible(bb, trained):
    a, b, c, src, tgt, phi = trained
    for m, ds, k, p in ((a, src, 10, None), (b, src, 10, phi), (c, tgt, 3, None)):
        again = xvec.build_model(bb, k, CFG, 0)
        xvec.train_model(again, ds, CFG, 0, phi=p)
        assert _same(again, m)
    other = xvec.build_model(bb, 10, CFG, 1)
    xvec.train_model(other, src, CFG, 1)
    assert not _same(other, a)
    # the shared initialisation: the explanation head is drawn from the seed, whatever the labels
    i10, i3 = xvec.build_model(bb, 10, CFG, 0), xvec.build_model(bb, 3, CFG, 0)
    assert _same(i10.expl_head, i3.expl_head) and _same(i10.backbone, bb)


def test_training_does_not_depend_on_the_global_random_state():
    """A backbone with stochastic depth (the tiny Swin, as timm's Swin-B: drop-path 0.1) draws in train mode; the
    draws come from each step's own seed, not from whatever state earlier work left the process in."""
    sw = tiny_backbone("swin")
    assert any(getattr(m, "drop_prob", 0) > 0 for m in sw.modules())  # the draws this test is about
    src = _data(24, 10, 0)
    models = []
    for state in (1, 2):
        torch.manual_seed(state)
        m = xvec.build_model(sw, 10, CFG, 0)
        xvec.train_model(m, src, CFG, 0)
        models.append(m)
    assert _same(*models)


def test_prediction_only_training_leaves_the_explanation_head(bb, trained):
    a, _, c, *_ = trained
    init = xvec.build_model(bb, 10, CFG, 0)
    assert _same(a.expl_head, init.expl_head) and _same(c.expl_head, init.expl_head)
    assert not _same(a.cls_head, init.cls_head)


def test_batch_order_is_seeded_and_cycles_permutations():
    o = xvec.batch_order(10, 4, 4, seed=3)
    assert o.shape == (4, 4)
    flat = o.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10))  # the first epoch is a permutation
    assert len(set(flat[10:].tolist())) == 6  # the next epoch starts a new one: no image twice in it
    assert torch.equal(o, xvec.batch_order(10, 4, 4, seed=3))
    assert not torch.equal(o, xvec.batch_order(10, 4, 4, seed=4))
    with pytest.raises(ValueError, match="batch_order needs n, steps, batch_size >= 1"):
        xvec.batch_order(0, 4, 4, 0)


def test_explanation_loss_closed_form():
    v = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [B=1, P=2, D=2]
    w = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # [C=2, D=2]
    pred = torch.tensor([[[1.0, 2.0], [2.0, 0.0]]])  # [B, C, P] = v @ w.T, transposed
    assert xvec.explanation_loss(v, w, pred).item() == 0.0
    assert xvec.explanation_loss(v, w, pred + 1.0, scale=2.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[B, C, P\]"):
        xvec.explanation_loss(v, w, pred[:, :1])


def test_partly_supervised_training_keeps_the_prediction_batches(bb, trained):
    """(d) adds a batch of its supervised images per step; its prediction batches stay (c)'s."""
    *_, c, _, tgt, _ = trained
    pos = torch.tensor([1, 4, 7])
    phi = torch.randn(3, 3, bb.n_players, generator=torch.Generator().manual_seed(2))
    d = xvec.build_model(bb, 3, CFG, 0)
    hist = xvec.train_model(d, tgt, CFG, 0, phi=phi, phi_pos=pos)
    assert all(math.isfinite(h["expl"]) for h in hist)  # logged, a number
    assert not _same(d.expl_head, c.expl_head)
    d0 = xvec.build_model(bb, 3, CFG, 0)
    xvec.train_model(d0, tgt, CFG, 0, phi=phi, phi_pos=pos, expl_weight=0.0)
    assert _same(d0, c)
    with pytest.raises(ValueError, match="phi must be"):
        xvec.train_model(d0, tgt, CFG, 0, phi=phi, phi_pos=pos[:2])
    with pytest.raises(ValueError, match="phi_pos"):
        xvec.train_model(d0, tgt, CFG, 0, phi=phi, phi_pos=torch.tensor([0, 1, 99]))


def test_training_rejects_misshaped_supervision(bb):
    m = xvec.build_model(bb, 10, CFG, 0)
    with pytest.raises(ValueError, match="phi must be"):
        xvec.train_model(m, _data(8), CFG, 0, phi=torch.zeros(8, 3, bb.n_players))


def test_task_vector_rejects_other_architectures(bb):
    other = xvec.build_model(bb, 10, XVecConfig(expl_hidden=8), 0)
    with pytest.raises(ValueError, match="shape"):
        xvec.task_vector(other, xvec.build_model(bb, 10, CFG, 0))


def test_model_cache_round_trip(bb, trained, tmp_path):
    _, b, *_ = trained
    p = tmp_path / "m.pt"
    xvec.save_model(b, p, history=[{"step": 1}])
    m, extra = xvec.load_model(p, bb, CFG, 0)
    assert _same(m, b) and extra["history"] == [{"step": 1}]
    assert xvec.load_model(tmp_path / "absent.pt", bb, CFG, 0) is None
    p.write_bytes(b"truncated")
    assert xvec.load_model(p, bb, CFG, 0) is None and not p.exists()


def test_kernelshap_supervision_is_efficient_for_every_class_and_cached(bb, tmp_path):
    m = xvec.build_model(bb, 4, CFG, 0)
    ds = _data(5, 4)
    idx = torch.tensor([0, 2, 4])
    phi = xvec.kernelshap_supervision(m, ds, idx, budget=160, seed=0, images_per_chunk=2)
    assert phi.shape == (3, 4, bb.n_players)
    # efficiency (exact by the constrained regression): Σ_i φ_ci = f_c(x) − f_c(∅) for all classes
    x = bb.normalize(ds.get(idx)[0])
    with torch.no_grad():
        full = m(x)[0]
        empty = m(bb.mask(x, torch.zeros(bb.n_players, dtype=torch.bool)))[0]
    assert torch.allclose(phi.sum(-1), full - empty, atol=1e-4)
    assert torch.equal(phi, xvec.kernelshap_supervision(m, ds, idx, budget=160, seed=0, images_per_chunk=2))
    # an image's values do not depend on the chunk it falls in (image 4: alone at 2 per chunk, with 0 and 2 at 3)
    torch.testing.assert_close(phi, xvec.kernelshap_supervision(m, ds, idx, budget=160, seed=0, images_per_chunk=3),
                               atol=1e-5, rtol=1e-4)
    # cached with its settings: reused as is, recomputed when a setting or the model changes
    path = tmp_path / "sup.pt"
    p1, s1 = cached_supervision(path, m, ds, idx, 160, 0)
    assert torch.equal(p1, xvec.kernelshap_supervision(m, ds, idx, budget=160, seed=0))
    assert s1["budget"] == 160 and s1["grid"] == bb.grid
    torch.save({"settings": s1, "phi": torch.zeros_like(phi)}, path)  # a marker: was it reloaded?
    assert torch.count_nonzero(cached_supervision(path, m, ds, idx, 160, 0)[0]) == 0
    p3, s3 = cached_supervision(path, m, ds, idx, 192, 0)
    assert s3["budget"] == 192 and torch.count_nonzero(p3) > 0
    with pytest.raises(ValueError, match="budget"):
        xvec.kernelshap_supervision(m, ds, idx, budget=2 * bb.n_players, seed=0)
    other = xvec.build_model(bb, 4, CFG, 1)
    assert cached_supervision(path, other, ds, idx, 192, 0)[1]["model"] != s3["model"]


def _sweep_rows(values: dict[float, dict[str, float]], task: str = "src", split: str = "source_val"):
    import pandas as pd

    return pd.DataFrame([dict(task=task, backbone="vit", seed=0, split=split, **{"lambda": lam}, metric=m, value=v)
                         for lam, d in values.items() for m, v in d.items()])


def test_select_lambda_respects_the_accuracy_budget_and_direction():
    rows = _sweep_rows({0.0: {"accuracy": 0.90, "fid_gap": 0.10, "fid_minus_auc": 0.30},
                        0.5: {"accuracy": 0.89, "fid_gap": 0.20, "fid_minus_auc": 0.20},
                        1.0: {"accuracy": 0.80, "fid_gap": 0.50, "fid_minus_auc": 0.10}})
    assert select_lambda(rows, "fid_gap", 0.02) == 0.5  # 1.0 is better but costs 10 points
    assert select_lambda(rows, "fid_gap", 0.2) == 1.0
    assert select_lambda(rows, "fid_minus_auc", 0.02) == 0.5  # lower is better
    with pytest.raises(KeyError, match="unknown"):
        select_lambda(rows, "nope")
    with pytest.raises(ValueError, match="contain 0"):
        select_lambda(rows[rows["lambda"] > 0], "fid_gap")


def test_claims_from_tables():
    import pandas as pd

    cfg = XVecConfig(unrelated_tasks=("far",), max_acc_drop=0.02)
    comp = []
    for task, xv, ks in (("near", 0.30, 0.25), ("far", 0.05, 0.40)):
        for method, v in (("xvec", xv), ("kernelshap", ks)):
            comp.append(dict(backbone="vit", task=task, head=schema.SELF_HEAD, method=method, metric="fid_plus_auc",
                             value=v, ci_low=v - 0.01, ci_high=v + 0.01, **{"lambda": 1.0}))
    sweep = pd.concat([
        _sweep_rows({0.0: {"accuracy": 0.9, "shapley_spearman": 0.1}, 1.0: {"accuracy": 0.95, "shapley_spearman": 0.6}},
                    "near", "test"),
        _sweep_rows({0.0: {"accuracy": 0.9, "shapley_spearman": 0.1}, 1.0: {"accuracy": 0.7, "shapley_spearman": 0.0}},
                    "far", "test"),
        _sweep_rows({0.0: {"accuracy": 0.1}, 1.0: {"accuracy": 0.0}}, "src", "source_val")])
    c = claims.xvec_target_claims(pd.DataFrame(comp), sweep, 1.0, cfg).set_index(["claim", "task"]).reproduced
    assert c[("1 comparable to KernelSHAP-150", "near")] and not c[("1 comparable to KernelSHAP-150", "far")]
    assert c[("2 no real accuracy loss", "near")] and not c[("2 no real accuracy loss", "far")]
    assert ("2 no real accuracy loss", "src") not in c.index  # source-validation rows are not targets
    assert c[("3 fails on a less-related domain", "far")]


def test_self_explainer_follows_the_explainer_protocol(bb):
    from tve_lib.explainers.xvec import SelfExplainer

    m = xvec.build_model(bb, 4, CFG, 0)
    ex = make_explainer("xvec", m.backbone, model=m)
    x = bb.normalize(_data(3).get([0, 1, 2])[0])
    assert isinstance(ex, SelfExplainer)
    assert ex.name == "xvec" and ex.backbone is m.backbone
    assert torch.allclose(ex.explain(x, m.cls_head), m.explain(x)[1])
    assert torch.allclose(ex.explain(x, m.cls_head, 2), m.explain(x, 2)[1])
    other = torch.nn.Linear(bb.embed_dim, 2)  # another label space reads the same vectors
    a = ex.explain(x, other, torch.tensor([0, 1, 1]))
    vec = m(x)[1]
    assert torch.allclose(a[1].flatten(), vec[1] @ other.weight[1], atol=1e-6)


def test_self_explainer_registration_and_arguments(bb):
    from tve_lib.explainers import EXPLAINERS, explainer_class, registered

    cls = explainer_class("xvec")
    assert cls.training == "task" and cls.trained_args == ("model",) and not cls.compared
    assert "xvec" in registered(compared=False) and "xvec" not in EXPLAINERS
    m = xvec.build_model(bb, 4, CFG, 0)
    with pytest.raises(TypeError, match="model"):
        make_explainer("xvec", m.backbone)  # trained: the model must be given
    with pytest.raises(ValueError, match="backbone"):
        make_explainer("xvec", bb, model=m)  # not the model's own fine-tuned copy
    ex = make_explainer("xvec", m.backbone, model=m)
    x = bb.normalize(_data(2).get([0, 1])[0])
    with pytest.raises(TypeError, match="head"):
        ex.explain(x)  # the head is required, as for every explainer


def test_unusable_supervision_file_is_recomputed(bb, tmp_path):
    m = xvec.build_model(bb, 4, CFG, 0)
    ds, idx = _data(4, 4), torch.tensor([0, 3])
    path = tmp_path / "sup.pt"
    path.write_bytes(b"truncated")
    phi, s = cached_supervision(path, m, ds, idx, 160, 0)
    assert torch.equal(phi, xvec.kernelshap_supervision(m, ds, idx, budget=160, seed=0))
    assert load_torch(path)["settings"] == s
