"""Fidelity metrics, exact Shapley, KernelSHAP/LIME solvers, localisation and bootstrap."""

import math

import pytest
import torch
from toy_models import contributions, linear_head, toy_backbone

from tve_lib import metrics as M
from tve_lib.config import get_profile
from tve_lib.schema import CURVE_COLUMNS, SUMMARY_COLUMNS
from tve_lib.shapley import (
    all_coalitions,
    exact_shapley,
    group_sum,
    kernel_coalitions,
    kernel_shap,
    lime,
    lime_coalitions,
    player_groups,
    shapley_references,
)
from tve_lib.studies.fidelity import evaluate_maps

torch.set_default_dtype(torch.float32)


def images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


# ----------------------------------------------------------------------------- AUC and curves
def test_auc_is_normalised_trapezoid():
    x = [0.0, 0.1, 0.5, 0.9]
    assert M.auc(x, torch.full((2, 4), 0.3)).tolist() == pytest.approx([0.3, 0.3])
    assert M.auc(x, torch.tensor([x])).item() == pytest.approx(0.45)  # mean of y = x over [0, 0.9]
    with pytest.raises(ValueError, match="auc needs >= 2 points"):
        M.auc([0.0], torch.zeros(1, 1))


def test_curve_grids_reject_bad_input():
    for bad in ((0.0, 1.0), (0.5,), (0.3, 0.3), (0.0, float("nan")), 0.5):
        with pytest.raises(ValueError, match=r"sparsities must be at least 2 distinct fractions in \[0, 1\)"):
            M.curve_grids(bad, (0.0, 0.5), 4)
    with pytest.raises(ValueError, match=r"perturbation_steps must be at least 2 distinct fractions in \[0, 1\]"):
        M.curve_grids((0.0, 0.5), (0.0, 1.5), 4)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="deletion_steps must be a whole number >= 1"):
            M.curve_grids((0.0, 0.5), (0.0, 0.5), bad)
    # the same rule when a profile is made: not after its explainers are trained
    with pytest.raises(ValueError, match="sparsities must be at least 2 distinct"):
        get_profile("smoke", {"eval.sparsities": [0.5]})
    bb, h = toy_backbone(), linear_head()
    with pytest.raises(ValueError, match="64 players"):
        M.perturbation_curves(bb, h, images(2), torch.zeros(2, 7, 7))
    with pytest.raises(ValueError, match="NaN"):
        M.perturbation_curves(bb, h, images(2), torch.full((2, 8, 8), float("nan")))
    with pytest.raises(KeyError, match="unknown curve"):
        M.perturbation_curves(bb, h, images(2), torch.zeros(2, 8, 8), which=("fid",))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):  # linear_head(): 3 classes
        M.perturbation_curves(bb, h, images(2), torch.zeros(2, 8, 8), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"one per image \(\[2\]\)"):
        evaluate_maps(bb, h, images(2), {"zeros": torch.zeros(2, 8, 8)}, torch.tensor([0, 1, 2]))


def test_curves_closed_form_on_an_additive_model():
    """Removing the top-k players of a linear head on patch means subtracts their contributions."""
    bb, h = toy_backbone(), linear_head(num_classes=2)
    x = images(5)
    t = h(bb.embed(x)).argmax(-1)
    attr = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(1))
    cur = M.perturbation_curves(bb, h, x, attr, None, (0.0, 0.5, 0.75), (0.0, 0.25), 4)
    logits = h(bb.embed(x))
    other = 1 - t
    order = attr.flatten(1).argsort(dim=1, descending=True, stable=True)
    for j, s in enumerate((0.0, 0.5, 0.75)):
        k = round((1 - s) * 64)
        top = torch.zeros(5, 64, dtype=torch.bool).scatter_(1, order[:, :k], True)
        cw = h.weight[t] - h.weight[other]  # logit margin contributions of ŷ vs the other class
        margin_full = logits.gather(1, t[:, None]).squeeze(1) - logits.gather(1, other[:, None]).squeeze(1)
        dm = (cw * bb.embed(x) * top).sum(1)
        p = torch.sigmoid(margin_full)
        assert cur["fid_plus"][1][:, j] == pytest.approx(p - torch.sigmoid(margin_full - dm), abs=1e-5)
        keep_margin = (cw * bb.embed(x) * top).sum(1) + (h.bias[t] - h.bias[other])
        assert cur["fid_minus"][1][:, j] == pytest.approx(p - torch.sigmoid(keep_margin), abs=1e-5)
    assert (cur["pos"][1][:, 0] == 1).all() and (cur["neg"][1][:, 0] == 1).all()
    assert cur["deletion"][1][:, 0] == pytest.approx(cur["insertion"][1][:, -1])
    assert cur["deletion"][1][:, -1] == pytest.approx(cur["insertion"][1][:, 0])


def test_curves_never_enter_autograd_even_for_a_trainable_head():
    """A head with trainable weights (a notebook's freshly trained probe) gives curves outside autograd."""
    bb, h = toy_backbone(), linear_head(num_classes=2).requires_grad_(True)
    x, attr = images(3), torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    cur = M.perturbation_curves(bb, h, x, attr)
    assert all(not y.requires_grad and y.is_inference() for _, y in cur.values())


def test_oracle_ranking_beats_random_on_deletion_and_fidelity():
    bb, h = toy_backbone(), linear_head(num_classes=2)
    x = images(24)
    t = h(bb.embed(x)).argmax(-1)
    oracle = contributions(bb, h, x, t) - contributions(bb, h, x, 1 - t)
    rand = torch.rand(24, 8, 8, generator=torch.Generator().manual_seed(0))
    sp = get_profile("smoke").eval
    a_or = M.curve_aucs(M.perturbation_curves(bb, h, x, oracle, None, sp.sparsities, sp.perturbation_steps, 8))
    a_rd = M.curve_aucs(M.perturbation_curves(bb, h, x, rand, None, sp.sparsities, sp.perturbation_steps, 8))
    assert a_or["deletion_auc"].mean() < a_rd["deletion_auc"].mean() - 0.05
    assert a_or["insertion_auc"].mean() > a_rd["insertion_auc"].mean() + 0.05
    assert a_or["fid_plus_auc"].mean() > a_rd["fid_plus_auc"].mean() + 0.05
    assert a_or["fid_minus_auc"].mean() < a_rd["fid_minus_auc"].mean()


def test_evaluate_maps_is_batch_size_invariant_and_tidy():
    bb, h = toy_backbone(), linear_head()
    x = images(6)
    maps = {"a": torch.randn(6, 8, 8), "b": torch.zeros(6, 8, 8)}
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[:, :16, :16] = True
    cfg = get_profile("smoke").eval
    meta = dict(backbone="toy", task="t", head="linear")
    c1, s1 = evaluate_maps(bb, h, x, maps, masks=masks, cfg=cfg, meta=meta, budget={"a": 5})
    import dataclasses
    # the masked passes in chunks of 7 images instead of the profile's (the setting evaluate_maps reads)
    assert cfg.masked_batch_size > 6 * 18
    small = dataclasses.replace(cfg, masked_batch_size=7)
    c2, s2 = evaluate_maps(bb, h, x, maps, masks=masks, cfg=small, meta=meta, budget={"a": 5},
                           base=M.curve_base(bb, x, 7))
    assert list(c1.columns) == CURVE_COLUMNS and list(s1.columns) == SUMMARY_COLUMNS
    assert c1.value.values == pytest.approx(c2.value.values, abs=1e-6)
    assert s1.value.values == pytest.approx(s2.value.values, abs=1e-6, nan_ok=True)
    assert set(s1.metric) == {"fid_plus_auc", "fid_minus_auc", "pos_auc", "neg_auc", "deletion_auc",
                              "insertion_auc", "pointing_game", "mass_in_region"}
    assert set(s1[s1.method == "a"].budget) == {5} and set(s1[s1.method == "b"].budget) == {0}
    inside = s1.value.isna() | ((s1.ci_low <= s1.value + 1e-9) & (s1.value <= s1.ci_high + 1e-9))
    assert inside.all() and s1.value.notna().sum() > len(s1) / 2
    with pytest.raises(ValueError, match="2 maps for 6 images"):
        evaluate_maps(bb, h, x, {"a": torch.zeros(2, 8, 8)}, cfg=cfg)
    # every method's maps before the first one's passes: a bad second map fails at once
    passes, embed = [], bb.embed
    bb.embed = lambda z: passes.append(len(z)) or embed(z)
    nan = torch.zeros(6, 8, 8)
    nan[1, 2, 3] = float("nan")
    for bad, msg in (({"a": maps["a"], "b": torch.zeros(6, 4, 16)}, r"'b': maps must be \[B, 8, 8\]"),
                     ({"a": maps["a"], "b": nan}, "'b': maps contain NaN"), ([maps["a"]], "maps must be {method")):
        with pytest.raises((ValueError, TypeError), match=msg):
            evaluate_maps(bb, h, x, bad, cfg=cfg)
    assert passes == []


def test_a_shared_curve_base_gives_the_same_curves_and_checks_its_images():
    """`curve_base` made once serves every map of the same images: bit-identical curves, fewer passes."""
    from tve_lib.operators import make_operator

    bb, h = toy_backbone(), linear_head()
    x = images(5)
    base = M.curve_base(bb, x, 4)
    for seed in range(3):
        a = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(seed))
        own = M.perturbation_curves(bb, h, x, a, None, (0.0, 0.5), (0.0, 0.3), 4, batch_size=4)
        shared = M.perturbation_curves(bb, h, x, a, None, (0.0, 0.5), (0.0, 0.3), 4, batch_size=4, base=base)
        for k in own:
            assert torch.equal(own[k][1], shared[k][1]), k
    with pytest.raises(ValueError, match="curve base of 5 images"):
        M.perturbation_curves(bb, h, x[:3], torch.zeros(3, 8, 8), base=base)
    with bb.removal(make_operator("blur", patch=4, sigma=2.0)), pytest.raises(ValueError, match="under operator"):
        M.perturbation_curves(bb, h, x, torch.zeros(5, 8, 8), base=base)
    passes, embed = [], bb.embed
    bb.embed = lambda z: passes.append(len(z)) or embed(z)  # count the images the backbone sees
    M.perturbation_curves(bb, h, x, torch.zeros(5, 8, 8), None, (0.0, 0.5), (0.0, 0.5), 1, base=base)
    with_base = sum(passes)
    M.perturbation_curves(bb, h, x, torch.zeros(5, 8, 8), None, (0.0, 0.5), (0.0, 0.5), 1)
    assert sum(passes) - with_base == with_base + 2 * 5  # the full and the fully removed images


def test_the_next_head_with_the_same_masks_reuses_their_embeddings():
    """A map that reads neither head nor class (random, rollout) masks the same images for every head: the second
    head's curves make no masked pass and equal those computed afresh; another map computes its own."""
    bb, h1 = toy_backbone(), linear_head()
    h2 = linear_head(seed=1)
    x, grids = images(5), ((0.0, 0.5), (0.0, 0.3), 4)
    a = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(0))
    base = M.curve_base(bb, x, 4)
    passes, embed = [], bb.embed
    bb.embed = lambda z: passes.append(len(z)) or embed(z)
    M.perturbation_curves(bb, h1, x, a, None, *grids, batch_size=4, base=base)
    first = sum(passes)
    reused = M.perturbation_curves(bb, h2, x, a, None, *grids, batch_size=4, base=base)
    assert first > 0 and sum(passes) == first  # the second head: no pass at all
    fresh = M.perturbation_curves(bb, h2, x, a, None, *grids, batch_size=4)
    for k in fresh:
        assert torch.equal(fresh[k][1], reused[k][1]), k
    n = sum(passes)
    M.perturbation_curves(bb, h2, x, a.flip(-1), None, *grids, batch_size=4, base=base)
    assert sum(passes) - n == first  # other masks: computed


# ----------------------------------------------------------------------------- localisation, bootstrap
def test_pointing_game_and_mass_in_region():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, :16, :16] = True  # top-left quadrant = players (r < 4, c < 4)
    a = torch.zeros(2, 8, 8)
    a[0, 1, 1] = 3.0  # inside
    a[0, 6, 6] = 1.0  # outside
    a[1, 7, 7] = 2.0  # max outside
    a[1, 0, 0] = 1.0
    a[1, 5, 0] = -9.0  # negative relevance is ignored by the mass
    assert M.pointing_game(a, masks).tolist() == [1.0, 0.0]
    # ties at the top share the hit: a constant map scores the region's share of the players, two tied maxima
    # (one inside, one outside) one half, whatever the players' order
    tied = torch.zeros(2, 8, 8)
    tied[1, 7, 7] = tied[1, 0, 0] = 5.0
    assert M.pointing_game(tied, masks).tolist() == [16 / 64, 0.5]
    assert M.pointing_game(tied.flip(-1, -2), masks.flip(-1, -2)).tolist() == [16 / 64, 0.5]
    assert M.mass_in_region(a, masks).tolist() == pytest.approx([0.75, 1 / 3])
    assert math.isnan(M.mass_in_region(-torch.ones(1, 8, 8), masks[:1]).item())


def test_bootstrap_ci_properties():
    mean, lo, hi, n = M.bootstrap_ci(torch.full((10,), 0.4), 200)
    assert (mean, lo, hi, n) == pytest.approx((0.4, 0.4, 0.4, 10))
    v = torch.tensor([0.0, 1.0, float("nan"), 0.5, 0.25])
    a, b = M.bootstrap_ci(v, 300, seed=3), M.bootstrap_ci(v, 300, seed=3)
    assert a == b and a[3] == 4 and a[1] <= a[0] <= a[2]
    assert M.bootstrap_ci(torch.tensor([float("nan")]))[3] == 0


# ----------------------------------------------------------------------------- Shapley
def test_player_groups_partition_the_grid():
    g = player_groups(8, (3, 4))
    assert g.shape == (12, 64) and (g.sum(0) == 1).all()
    assert sorted(g.sum(1).tolist()) == sorted([6] * 8 + [4] * 4)  # bands of 3, 3, 2 rows x 2 cols
    with pytest.raises(ValueError, match="within the 8x8 grid"):
        player_groups(8, (9, 2))


def test_exact_shapley_of_a_linear_game_and_efficiency():
    n = 6
    z = all_coalitions(n).double()
    c = torch.tensor([[0.5, -1.0, 2.0, 0.0, 0.25, 3.0]], dtype=torch.float64)
    v = z @ c.T + 1.5  # v(S) = b + Σ_{i∈S} c_i  ->  φ = c
    assert exact_shapley(v.T).squeeze(0).tolist() == pytest.approx(c.squeeze(0).tolist())
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, n, generator=g, dtype=torch.float64)
    vals = torch.tanh(z @ w.T).T * (1 + (z[:, 0] * z[:, 1]))  # a non-linear game with interactions
    phi = exact_shapley(vals)
    assert phi.sum(1).tolist() == pytest.approx((vals[:, -1] - vals[:, 0]).tolist())  # efficiency
    # symmetry: players 2..5 only enter through tanh, players 0/1 also through the interaction
    with pytest.raises(ValueError, match="all 2\\^n coalitions"):
        exact_shapley(torch.zeros(1, 6))


def _game(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, n, generator=g, dtype=torch.float64)

    def v(z):
        zf = z.double()
        return (torch.sigmoid(zf @ w.T) + 0.3 * (zf[:, 0] * zf[:, 1])[:, None]).T  # [B, M]
    return v


def test_kernel_shap_is_exact_on_linear_games_and_converges_to_enumeration():
    n = 10
    z_all = all_coalitions(n)
    c = torch.randn(2, n, dtype=torch.float64)
    z = kernel_coalitions(n, 40, torch.Generator().manual_seed(0))
    v = (z.double() @ c.T).T + 0.7
    phi = kernel_shap(z, v, torch.full((2,), 0.7, dtype=torch.float64), c.sum(1) + 0.7)
    assert phi.tolist() == [pytest.approx(r, abs=1e-8) for r in c.tolist()]
    game = _game(n)
    vals = game(z_all)
    exact = exact_shapley(vals)
    errs = []
    for budget in (40, 400, 4000):
        e = []
        for seed in range(4):
            zs = kernel_coalitions(n, budget, torch.Generator().manual_seed(seed))
            est = kernel_shap(zs, game(zs), vals[:, 0], vals[:, -1])
            assert est.sum(1).tolist() == pytest.approx((vals[:, -1] - vals[:, 0]).tolist())  # exact efficiency
            e.append((est - exact).pow(2).mean().sqrt())
        errs.append(torch.stack(e).mean().item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.01


def test_kernel_coalitions_are_paired_and_seeded():
    z = kernel_coalitions(7, 21, torch.Generator().manual_seed(1))
    assert z.shape == (20, 7) and (z[0::2] == ~z[1::2]).all()
    assert ((z.sum(1) > 0) & (z.sum(1) < 7)).all()
    assert torch.equal(z, kernel_coalitions(7, 21, torch.Generator().manual_seed(1)))
    assert not torch.equal(z, kernel_coalitions(7, 21, torch.Generator().manual_seed(2)))


def test_kernel_shap_agrees_with_captum_on_the_same_game():
    from captum.attr import KernelShap

    n = 6
    x = torch.tensor([[0.8, -1.2, 0.5, 1.5, -0.3, 1.0]], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, -2.0, 0.7, 1.2, -0.4], dtype=torch.float64)

    def f(inp):  # the model; removal = baseline 0, as in the suite's operator
        return torch.sigmoid(inp @ w) + 0.5 * inp[:, 0] * inp[:, 3]

    def game(z):
        return f(x * z.double()).unsqueeze(0)

    z_all = all_coalitions(n)
    exact = exact_shapley(game(z_all))
    torch.manual_seed(0)
    cap = KernelShap(f).attribute(x, baselines=0.0, n_samples=3000, perturbations_per_eval=500)
    zs = kernel_coalitions(n, 3000, torch.Generator().manual_seed(0))
    ours = kernel_shap(zs, game(zs), game(z_all[:1])[:, 0], game(z_all[-1:])[:, 0])
    assert ours.squeeze(0).tolist() == pytest.approx(exact.squeeze(0).tolist(), abs=0.01)
    assert cap.squeeze(0).tolist() == pytest.approx(ours.squeeze(0).tolist(), abs=0.03)


def test_lime_recovers_linear_games_and_matches_sklearn_ridge():
    from sklearn.linear_model import Ridge

    n = 8
    z = lime_coalitions(n, 300, torch.Generator().manual_seed(0))
    assert z[0].all() and z.shape == (300, 8)
    c = torch.randn(3, n, dtype=torch.float64)
    v = (z.double() @ c.T).T - 0.2
    assert lime(z, v, alpha=1e-9).tolist() == [pytest.approx(r, abs=1e-6) for r in c.tolist()]
    vn = torch.sigmoid(v * 2)
    ours = lime(z, vn)
    zf = z.double().numpy()
    cos = zf.sum(1) / (torch.from_numpy(zf).norm(dim=1).clamp_min(1e-12).numpy() * n ** 0.5)
    wt = ((torch.exp(-torch.from_numpy(1 - cos) ** 2 / 0.25 ** 2)) ** 0.5).numpy()
    ref = Ridge(alpha=1.0).fit(zf, vn[1].numpy(), sample_weight=wt).coef_
    assert ours[1].tolist() == pytest.approx(ref.tolist(), abs=1e-8)


def test_shapley_references_efficiency_on_a_model():
    bb, h = toy_backbone(), linear_head()
    x = images(2)
    groups = player_groups(8, (3, 4))
    (ref,) = shapley_references(bb, [h], x, groups)
    p = torch.softmax(h(bb.embed(x)), -1)
    t = p.argmax(-1)
    p0 = torch.softmax(h(bb.embed(bb.mask(x, torch.zeros(2, 64, dtype=torch.bool)))), -1)
    assert ref.values.sum(1).tolist() == pytest.approx((p.gather(1, t[:, None]) - p0.gather(1, t[:, None]))
                                                       .squeeze(1).tolist(), abs=1e-5)
    # the values themselves, against the game enumerated here: every coalition of the 12 groups, kept players only
    from tve_lib.shapley import all_coalitions, exact_shapley, expand_groups

    keep = expand_groups(all_coalitions(len(groups)), groups)  # [4096, 64]
    game = torch.stack([torch.softmax(h(bb.embed(bb.mask(x[b:b + 1].expand(len(keep), -1, -1, -1), keep))), -1)
                        [:, t[b]] for b in range(2)])
    assert ref.values.tolist() == [pytest.approx(v, abs=1e-5) for v in exact_shapley(game.double()).tolist()]
    # a map spread evenly within the groups sums back to the values
    spread = (ref.values / groups.sum(1)) @ groups.float()
    assert group_sum(spread, groups).tolist() == [pytest.approx(v, abs=1e-6) for v in ref.values.tolist()]


def test_spearman_and_topk_overlap_against_references():
    """Spearman with ties against scipy; invariance to a monotone map; top-k overlap on a hand-made pair."""
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (4, 8, 8), generator=g).float(), torch.randint(0, 5, (4, 8, 8), generator=g).float()
    ours = M.spearman(a, b)
    ref = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(4)]
    assert ours.tolist() == pytest.approx(ref, abs=1e-6) and len(set(ref)) == 4
    c = torch.randn(3, 64, generator=g)
    assert M.spearman(c, c.exp()).tolist() == pytest.approx([1.0] * 3)
    assert M.spearman(c, -c).tolist() == pytest.approx([-1.0] * 3)
    u = torch.tensor([[9.0, 8, 7, 0, 0, 0, 0, 0, 0, 0]])  # top 3: players 0, 1, 2
    v = torch.tensor([[9.0, 0, 7, 8, 0, 0, 0, 0, 0, 0]])  # top 3: players 0, 3, 2
    assert M.topk_overlap(u, v, 0.3).tolist() == pytest.approx([2 / 3])
    assert M.topk_overlap(u, u, 0.3).tolist() == [1.0]


def _per_image_frame(values: dict[tuple[str, int], list[float]]):
    import pandas as pd

    rows = [dict(backbone="vit", task="t", head="linear", method=m, budget=b, metric="fid_plus_auc",
                 image=i, value=v, seed=0)
            for (m, b), vs in values.items() for i, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_verdict_and_amortisation_ceiling_are_paired_ratios():
    from tve_lib.report.fidelity import amortisation_ceiling, tve_verdict

    # KernelSHAP-1000 ran on images 0-1 only: comparisons use the common images
    pi = _per_image_frame({("tve", 0): [0.4, 0.4, 0.1, 0.1], ("occlusion", 0): [0.5, 0.5, 0.1, 0.1],
                           ("random", 0): [0.1, 0.1, 0.1, 0.1], ("kernelshap", 1000): [0.8, 0.8]})
    v = tve_verdict(pi, "fid_plus_auc", ("random", "gradcam", "rollout"), 0.9).iloc[0]
    assert v.worst_method == "kernelshap-1000" and v.ratio == pytest.approx(0.5) and not v.ok
    c = amortisation_ceiling(pi).iloc[0]
    # paired: all three factors on images 0-1, the only ones KernelSHAP-1000 ran on
    assert c.best_method == "kernelshap-1000" and c.n_images == 2
    assert c.tve_over_target == pytest.approx(0.4 / 0.5) and c.target_over_best == pytest.approx(0.5 / 0.8)
    assert c.tve_over_best == pytest.approx(v.ratio)  # the split is an identity on the same images
    # the paired amortisation ratio alone uses all four images TVE and occlusion share
    assert c.n_images_target == 4 and c.tve_over_target_all == pytest.approx(1.0 / 1.2)
