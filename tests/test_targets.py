"""Dense TVE supervision: the target store, the dense loss, and dense == online on the same windows."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import tiny_backbone

from tve_lib.augment import augmented_upstream
from tve_lib.config import TVEConfig
from tve_lib.data import TensorImageSet
from tve_lib.explainers import tve as tve_mod
from tve_lib.explainers.tve_targets import backbone_digest, token_store, upstream_order, window_store
from tve_lib.explainers.tve_train import tve_loss

TINY = TVEConfig(depth=1, embed_dim=16, mix_hidden=16, epochs=2, n_images=12, batch_size=4, n_heldout=4,
                 lr=3e-3, sampler="dense")


def _sets(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n + 8, 1, 32, 32, generator=g)
    return (TensorImageSet("s", imgs[:n], torch.zeros(n), ["x"]),
            TensorImageSet("s", imgs[n:], torch.zeros(8), ["x"]))


def test_stored_targets_equal_all_window_embeddings(tmp_path):
    bb = tiny_backbone("vit")
    train, _ = _sets()
    store, compute = window_store(bb, train, tmp_path, 0, 1, "float16")
    store.shard_size = 5
    store.build(12, compute, progress=False)
    got = store.load(12)
    ids = upstream_order(train, 0)[:12]
    x = bb.normalize(train.get(ids)[0])
    k, r = tve_mod.all_window_embeddings(bb, x, 1)
    assert got["keep"].dtype == torch.float16 and got["keep"].shape == k.shape
    # float16 keeps 11 significant bits: relative error <= 2^-11 (plus the subnormal floor)
    for a, b in ((got["keep"], k), (got["remove"], r), (got["base"], bb.embed(x))):
        assert torch.allclose(a.float(), b, rtol=2 ** -10, atol=1e-4)
    assert store.cost(12) > 0 and store.cost(6) < store.cost(12)


def test_interrupted_store_build_resumes_to_the_same_files(tmp_path):
    bb = tiny_backbone("vit")
    train, _ = _sets()
    ref, compute = window_store(bb, train, tmp_path / "ref", 0, 1, "float16")
    ref.shard_size = 4
    ref.build(20, compute, progress=False)

    cut, compute2 = window_store(bb, train, tmp_path / "cut", 0, 1, "float16")
    cut.shard_size = 4
    calls = {"n": 0}

    def dying(ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return compute2(ids)

    with pytest.raises(KeyboardInterrupt):
        cut.build(20, dying, progress=False)
    assert len(list(cut.dir.glob("shard_*.pt"))) == 2 and not list(cut.dir.glob("*.tmp"))
    (cut.dir / "shard_00001.pt").write_bytes(b"truncated")  # a damaged shard is recomputed, not trusted
    redone = []
    cut.build(20, lambda ids: redone.append(len(ids)) or compute2(ids), progress=False)
    assert redone == [4, 4, 4, 4]  # shards 1-4; shard 0 was kept
    a, b = ref.load(20), cut.load(20)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_store_key_follows_weights_radius_and_images(tmp_path):
    bb, other = tiny_backbone("vit", seed=0), tiny_backbone("vit", seed=1)
    train, _ = _sets()
    train2, _ = _sets(seed=3)
    d = {window_store(b, t, tmp_path, 0, r, "float16")[0].dir for b, t, r in
         ((bb, train, 1), (other, train, 1), (bb, train, 2), (bb, train2, 1))}
    assert len(d) == 4
    assert backbone_digest(bb) == backbone_digest(tiny_backbone("vit", seed=0))


def test_dense_loss_is_the_mean_of_per_window_losses():
    g = torch.Generator().manual_seed(0)
    pk, pr, tk, tr = (torch.randn(3, 16, 5, generator=g, dtype=torch.float64) for _ in range(4))
    lk, lr = tve_loss(pk, pr, tk, tr, None)
    per_k = torch.stack([((pk[:, i] - tk[:, i]) ** 2).mean() for i in range(16)])
    per_r = torch.stack([((pr[:, i] - tr[:, i]) ** 2).mean() for i in range(16)])
    assert torch.allclose(lk, per_k.mean()) and torch.allclose(lr, per_r.mean())
    # the centred split with weight 1 is the same MSE; other weights move only the within-image part
    assert torch.allclose(tve_loss(pk, pr, tk, tr, None, 1.0)[0], lk)
    shift = pk + torch.randn(3, 1, 5, generator=g, dtype=torch.float64)  # a per-image offset only
    a, b = tve_loss(shift, pr, tk, tr, None, 1.0)[0], tve_loss(shift, pr, tk, tr, None, 5.0)[0]
    assert b - a == pytest.approx(4 * (tve_loss(pk, pr, tk, tr, None, 1.0)[0] -
                                       ((pk - tk).mean(1) ** 2).mean()).item())
    with pytest.raises(ValueError, match="every window"):
        tve_loss(pk, pr, tk, tr, torch.zeros(3, 2, dtype=torch.long), 2.0)


def test_whitened_loss_is_the_mse_of_errors_in_per_dimension_units():
    """``loss_dims="whitened"``: each dimension's error over its target standard deviation (weights of
    mean 1), both branches pooled; "plain" is the MSE itself; the within-image weight still applies."""
    from tve_lib.explainers.tve_train import dim_weights

    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.7], dtype=torch.float64)  # none under the floor
    pk, pr, tk, tr = (torch.randn(4, 16, 5, generator=g, dtype=torch.float64) * scale for _ in range(4))
    assert dim_weights(tk, tr, "plain") is None
    w = dim_weights(tk, tr, "whitened")
    var = torch.cat([tk.flatten(0, 1), tr.flatten(0, 1)]).var(0)
    assert w.mean().item() == pytest.approx(1.0) and torch.allclose(w * var, (w * var)[0].expand(5))
    sd = w.rsqrt()  # rescaling predictions and targets by 1/sqrt(w) gives the plain loss back
    for cw in (1.0, 4.0):
        got = tve_loss(pk, pr, tk, tr, None, cw, w)
        ref = tve_loss(pk / sd, pr / sd, tk / sd, tr / sd, None, cw)
        assert torch.allclose(got[0], ref[0]) and torch.allclose(got[1], ref[1])
    tiny = torch.zeros(4, 16, 5, dtype=torch.float64)  # a constant dimension: floored, not divided by 0
    assert torch.isfinite(dim_weights(tiny + scale, tr, "whitened")).all()
    with pytest.raises(ValueError, match="loss_dims"):
        dim_weights(tk, tr, "pca")


@pytest.mark.parametrize("field, value, match", [("loss_dims", "pca", "unknown TVE loss_dims 'pca'"),
                                                 ("target_dtype", "int8", "unknown TVE target_dtype 'int8'"),
                                                 ("sampler", "random", "unknown TVE sampler 'random'"),
                                                 ("centred_weight", 4.0, "needs every window"),
                                                 ("radius", 8, "radius must be None .* from 1 to 7"),
                                                 ("num_heads", 3, "multiple of num_heads"),
                                                 ("epochs", 0, "epochs must be >= 1")])
def test_a_bad_pretraining_choice_fails_before_any_target_is_computed(tmp_path, field, value, match):
    bb = tiny_backbone("vit")
    train, val = _sets()
    cfg = dataclasses.replace(TINY, **{field: value})
    if field == "centred_weight":
        cfg = dataclasses.replace(cfg, sampler="online", windows_per_image=2)
    if field in ("radius", "num_heads"):  # the explainer's shape: checked when it is built, too
        with pytest.raises(ValueError, match=match):
            tve_mod.build_explainer(bb, cfg)
    m = tve_mod.build_explainer(bb, dataclasses.replace(cfg, radius=None, num_heads=TINY.num_heads))
    with pytest.raises(ValueError, match=match):
        tve_mod.pretrain(m, bb, train, val, cfg, tmp_path / "x.pt", 0, progress=False)
    assert not list(tmp_path.iterdir())  # no store, no checkpoint


def test_a_window_radius_is_checked_wherever_one_is_given(tmp_path):
    """One rule for every window radius (`masking.window_radius`): None is the grid's default, else 1 to G-1;
    pretraining's own radius argument and window occlusion's are held to it before any work."""
    from tve_lib.explainers.simple import Occlusion
    from tve_lib.masking import default_radius, window_radius

    assert window_radius(None, 14) == default_radius(14) == 2 and window_radius(None, 4) == 1
    assert window_radius(3, 8) == 3 and window_radius(7, 8) == 7
    assert type(window_radius(np.int64(3), 8)) is int  # a radius read from a table
    for bad in (0, -1, 8, 2.0, True, "2"):
        with pytest.raises(ValueError, match="from 1 to 7 on a 8x8 player grid"):
            window_radius(bad, 8)
    bb = tiny_backbone("vit")
    train, val = _sets()
    m = tve_mod.build_explainer(bb, TINY)
    with pytest.raises(ValueError, match=f"from 1 to {bb.grid - 1}"):
        tve_mod.pretrain(m, bb, train, val, TINY, tmp_path / "x.pt", 0, radius=bb.grid, progress=False)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="window radius"):
        Occlusion(bb, radius=0)
    # the exact quantity, its cached form, the targets and the explainer itself: the same rule, before any pass
    from tve_lib.explainers.tve import TVE, window_occlusion
    from tve_lib.explainers.tve_targets import all_window_embeddings, exact_window_embeddings

    x, head = torch.randn(2, 3, 32, 32), torch.nn.Linear(bb.embed_dim, 3)
    calls = {"window_occlusion": lambda r: window_occlusion(bb, head, x, torch.zeros(2, dtype=torch.long), r),
             "exact_window_embeddings": lambda r: exact_window_embeddings(bb, x, r),
             "all_window_embeddings": lambda r: all_window_embeddings(bb, x, r),
             "TVE": lambda r: TVE(bb, m, r)}
    for name, call in calls.items():
        for bad in (0, bb.grid):
            with pytest.raises(ValueError, match=f"from 1 to {bb.grid - 1}"):
                call(bad)
                pytest.fail(f"{name} took radius {bad}")


@pytest.mark.parametrize("arch", ["two", "tapped"])
def test_dense_and_online_training_reach_the_same_weights(tmp_path, arch):
    bb = tiny_backbone("vit").double()
    train, val = _sets()
    dense = dataclasses.replace(TINY, arch=arch, target_dtype="float64")
    online = dataclasses.replace(dense, sampler="online", windows_per_image=bb.n_players)
    models = []
    for name, cfg in (("dense", dense), ("online", online)):
        torch.manual_seed(0)
        m = tve_mod.build_explainer(bb, cfg).double()
        tve_mod.pretrain(m, bb, train, val, cfg, tmp_path / f"{name}.pt", 0, progress=False)
        models.append(m)
    assert list((tmp_path).glob("targets_*"))  # the dense run used a store
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11), k
    torch.manual_seed(0)
    fresh = tve_mod.build_explainer(bb, dense).double()
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), models[0].state_dict().values()))


def test_token_store_equals_player_tokens(tmp_path):
    bb = tiny_backbone("swin")
    train, _ = _sets()
    cfg = TVEConfig(tap_layers=2, tap_pixels=False, target_dtype="float32")
    store, compute = token_store(bb, train, tmp_path, 0, cfg)
    store.build(6, compute, progress=False)
    x = bb.normalize(train.get(upstream_order(train, 0)[:6])[0])
    tokens, emb = bb.player_tokens(x, 2)
    chs = sum(f["num_chs"] for f in bb.model.feature_info[-2:])  # Swin: two stages, the coarse one resized
    assert tokens.shape == (6, bb.n_players, chs) and chs > bb.model.feature_info[-1]["num_chs"]
    assert torch.allclose(store.load(6)["tokens"], tokens, atol=1e-5)
    assert torch.allclose(emb, bb.embed(x), atol=1e-5)


def test_composite_augmentation_is_seeded_and_partial():
    train, _ = _sets(40)
    a = augmented_upstream(train, "composite", 0.5, seed=0)
    b = augmented_upstream(train, "composite", 0.5, seed=0)
    c = augmented_upstream(train, "composite", 0.5, seed=1)
    xa, xb, xc = (s.get(torch.arange(40))[0] for s in (a, b, c))
    x0 = train.get(torch.arange(40))[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    changed = (xa != x0).flatten(1).any(1)
    assert changed.sum() == 20 and xa.min() >= 0 and xa.max() <= 1
    assert augmented_upstream(train, "none", 0.5, 0) is train
    with pytest.raises(ValueError, match="unknown upstream augmentation"):
        augmented_upstream(train, "mixup", 0.5, 0)
    assert augmented_upstream(train, "composite", 0.0, 0) is train
    for bad in (-0.5, 1.5):  # a negative share once meant "none" without a word
        with pytest.raises(ValueError, match=r"augment_frac must be in \[0, 1\]"):
            augmented_upstream(train, "composite", bad, 0)


def test_lowres_augmentation_smooths_a_third_and_keeps_the_rest():
    """``composite_lowres``: thirds of the replaced images are composites, zooms and low-resolution copies,
    the low-resolution ones smoother than the originals (less energy between neighbouring pixels)."""
    train, _ = _sets(60)
    x0 = train.get(torch.arange(60))[0]
    a = augmented_upstream(train, "composite_lowres", 0.5, seed=0)
    xa = a.get(torch.arange(60))[0]
    assert torch.equal(xa, augmented_upstream(train, "composite_lowres", 0.5, seed=0).get(torch.arange(60))[0])
    changed = (xa != x0).flatten(1).any(1)
    assert changed.sum() == 30 and xa.min() >= 0 and xa.max() <= 1 and a.name != train.name
    g = torch.Generator().manual_seed(30_011)
    idx = torch.randperm(60, generator=g)[:30]
    low = idx[20:]  # the last third of the replaced images (the same seeded permutation as the module's)

    def roughness(x):
        return (x[..., 1:, :] - x[..., :-1, :]).abs().mean()

    assert roughness(xa[low]) < 0.5 * roughness(x0)


def test_outline_augmentation_keeps_the_edges_of_a_filled_shape_and_not_its_inside():
    """``composite_outline``'s last third: a filled square becomes a blurred ring (the morphological gradient),
    bright on the square's border and dark at its centre; seeded, in [0, 1], the other images untouched."""
    from tve_lib import augment

    sq = torch.zeros(1, 3, 32, 32)
    sq[..., 8:24, 8:24] = 0.8
    for seed in range(5):
        ring = augment._outlines(sq, 1, torch.Generator().manual_seed(seed))[0, 0]
        assert ring.min() >= 0 and ring.max() <= 1
        assert ring[14:18, 14:18].max() < 0.5 * ring[6:10, 8:24].max()  # the inside against the top edge
        assert ring[0:3, 0:3].max() < 0.5 * ring[6:10, 8:24].max()  # and the background
    train, _ = _sets(60)
    x0 = train.get(torch.arange(60))[0]
    a = augmented_upstream(train, "composite_outline", 0.5, seed=0)
    xa = a.get(torch.arange(60))[0]
    assert torch.equal(xa, augmented_upstream(train, "composite_outline", 0.5, seed=0).get(torch.arange(60))[0])
    assert (xa != x0).flatten(1).any(1).sum() == 30 and 0 <= xa.min() and xa.max() <= 1


def test_glyph_augmentation_draws_letters_and_no_digit():
    """``composite_glyphs``' last third: generated letters (never a digit, a cpu task), each filling most of the
    frame, seeded, in [0, 1], bright strokes on a dark background; the other images untouched."""
    from tve_lib import augment

    assert not any(ch.isdigit() for ch in augment.LETTERS)
    bank = augment.glyph_bank(32)
    assert bank.shape == (2 * len(augment.LETTERS), 32, 32) and 0 <= bank.min() and bank.max() <= 1
    rows, cols = (bank > 0.5).any(2), (bank > 0.5).any(1)
    extent = torch.maximum(rows.sum(1), cols.sum(1))
    assert (extent >= 0.8 * 32).all()  # scaled to the frame, not rendered at the font's own size
    ink = bank.flatten(1).sum(1)
    assert (ink[len(augment.LETTERS):] > ink[: len(augment.LETTERS)]).float().mean() > 0.9  # bold after thin
    x = augment._glyphs(torch.zeros(4, 3, 32, 32), 12, torch.Generator().manual_seed(0))
    assert x.shape == (12, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.amax((1, 2, 3)).min() > 0.3
    assert (x[..., :2, :].mean() < 0.1) and torch.equal(x[:, 0], x[:, 2])  # dark border, grey replicated
    train, _ = _sets(60)
    x0 = train.get(torch.arange(60))[0]
    a = augmented_upstream(train, "composite_glyphs", 0.5, seed=0).get(torch.arange(60))[0]
    assert torch.equal(a, augmented_upstream(train, "composite_glyphs", 0.5, seed=0).get(torch.arange(60))[0])
    assert (a != x0).flatten(1).any(1).sum() == 30 and 0 <= a.min() and a.max() <= 1


def test_stroke_augmentation_draws_one_to_three_strokes_inside_the_frame():
    """``composite_strokes``' scribbles: every image has ink, at most three strokes of which at least one is
    drawn, points inside the frame, the same draw for the same seed; half of the last third are letters."""
    from tve_lib import augment

    g = torch.Generator().manual_seed(1)
    pts = augment._stroke_points(200, g)
    drawn = (pts.abs() < 5).all(-1).all(-1)  # [n, 3]: the strokes that lie in the frame
    assert drawn[:, 0].all() and drawn.sum(1).max() == 3 and drawn.sum(1).min() == 1
    assert pts[drawn].abs().max() <= 1.0
    x = augment._scribbles(torch.zeros(2, 3, 32, 32), 16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.amax((1, 2, 3)).min() > 0.2
    assert torch.equal(x, augment._scribbles(torch.zeros(2, 3, 32, 32), 16, torch.Generator().manual_seed(0)))
    assert (x[:, 0] > 0.5).flatten(1).float().mean(1).max() < 0.5  # strokes, not filled frames
    train, _ = _sets(60)
    x0 = train.get(torch.arange(60))[0]
    a = augmented_upstream(train, "composite_strokes", 0.5, seed=0).get(torch.arange(60))[0]
    assert (a != x0).flatten(1).any(1).sum() == 30 and 0 <= a.min() and a.max() <= 1


def test_handwriting_augmentation_slants_and_wobbles_the_letters():
    """``composite_handwriting``' last third: the letters of ``composite_glyphs`` through a shear of at most 0.35
    and a smooth displacement of at most 0.08 of the half side at the field's nodes (bicubic: at most 0.11 between
    them); seeded, in [0, 1], ink in every image."""
    from tve_lib import augment

    grid = torch.nn.functional.affine_grid(torch.eye(2, 3).expand(64, 2, 3), [64, 1, 32, 32], align_corners=False)
    d = augment._warp(grid, torch.Generator().manual_seed(0)) - grid
    assert d[..., 1].abs().max() <= 0.11 and d.abs().amax((1, 2, 3)).min() > 0  # every image moves
    assert (d[..., 0].abs() <= 0.35 * grid[..., 1].abs() + 0.11).all()
    slope = (d[:, -1, :, 0] - d[:, 0, :, 0]).mean(1) / 2  # the shear, read off the top and bottom rows
    assert slope.abs().max() > 0.2 and (slope > 0).any() and (slope < 0).any()  # slants both ways
    assert (d[:, 1:] - d[:, :-1]).abs().max() < 0.05  # smooth: a neighbouring pixel moves almost alike
    x = augment._handwriting(torch.zeros(2, 3, 32, 32), 16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.amax((1, 2, 3)).min() > 0.3
    assert torch.equal(x, augment._handwriting(torch.zeros(2, 3, 32, 32), 16, torch.Generator().manual_seed(0)))
    train, _ = _sets(60)
    x0 = train.get(torch.arange(60))[0]
    a = augmented_upstream(train, "composite_handwriting", 0.5, seed=0).get(torch.arange(60))[0]
    assert (a != x0).flatten(1).any(1).sum() == 30 and 0 <= a.min() and a.max() <= 1
