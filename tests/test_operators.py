"""Removal operators (tve_lib.operators): kept players untouched, only removed ones filled, `other`
deterministic by seed and never the image itself; the study's report tables in closed form."""

import pandas as pd
import pytest
import torch

from tve_lib.masking import apply_mask, players_to_pixels
from tve_lib.operators import OPERATORS, BlurFill, MeanFill, OtherFill, gaussian_blur, make_operator
from tve_lib.report.operators import operator_agreement, operator_robustness, operator_verdicts

G, S = 4, 16


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, S, S, generator=torch.Generator().manual_seed(seed))


def _ops(pool: torch.Tensor, seed: int = 0):
    return [make_operator(n, patch=S // G, pool=pool, seed=seed) for n in OPERATORS]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("shape", ["BP", "BKP"])
def test_kept_players_bit_identical_and_only_removed_filled(seed, shape):
    x, pool = _images(5, seed), _images(12, 100 + seed)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(5, 3, G * G, generator=gen) < 0.5 if shape == "BKP" else torch.rand(5, G * G, generator=gen) < 0.5
    for op in _ops(pool, seed):
        fill = op.fill(x)
        out = apply_mask(x, keep, G, 0.0, fill)
        px = players_to_pixels(keep, G, S).expand(out.shape)
        xx = (x.unsqueeze(1) if shape == "BKP" else x).expand(out.shape)
        assert torch.equal(out[px], xx[px]), op.name  # bit-identical
        ff = torch.zeros_like(x) if fill is None else fill
        ff = (ff.unsqueeze(1) if shape == "BKP" else ff).expand(out.shape)
        assert torch.equal(out[~px], ff[~px]), op.name


def test_default_operator_is_todays_mask():
    x, keep = _images(3, 0), torch.rand(3, G * G) < 0.5
    assert torch.equal(apply_mask(x, keep, G, 0.0, MeanFill().fill(x)), apply_mask(x, keep, G))
    assert torch.equal(apply_mask(x, keep, G, 0.5, None), x * players_to_pixels(keep.float(), G, S)
                       + 0.5 * (1 - players_to_pixels(keep.float(), G, S)))


def test_soft_masks_blend_toward_the_fill():
    x, pool = _images(2, 1), _images(6, 2)
    op = OtherFill(pool, seed=3)
    keep = torch.full((2, G * G), 0.25)
    out = apply_mask(x, keep, G, 0.0, op.fill(x))
    torch.testing.assert_close(out, 0.25 * x + 0.75 * op.fill(x))


@pytest.mark.parametrize("seed", range(3))
def test_other_is_deterministic_by_seed_and_batch_invariant(seed):
    x, pool = _images(6, seed), _images(20, 50 + seed)
    a = OtherFill(pool, seed).donors(x)
    assert torch.equal(a, OtherFill(pool, seed).donors(x))
    assert torch.equal(torch.cat([OtherFill(pool, seed).donors(x[i:i + 1]) for i in range(6)]), a)
    assert torch.equal(OtherFill(pool, seed).donors(x.flip(0)), a.flip(0))
    others = [OtherFill(pool, s).donors(x) for s in range(seed + 1, seed + 6)]
    assert any(not torch.equal(o, a) for o in others), "the donor does not depend on the seed"


def test_other_never_takes_the_image_itself():
    pool = _images(3, 7)
    x = torch.cat([pool, pool[:1]])  # every image is in the pool
    for seed in range(20):
        op = OtherFill(pool, seed)
        d = op.donors(x)
        for img, j in zip(x, d):
            assert not torch.equal(pool[j], img)
        fill = op.fill(x)
        assert all(not torch.equal(f, img) for f, img in zip(fill, x))
    with pytest.raises(ValueError, match="no donor"):
        OtherFill(torch.stack([pool[0], pool[0]]), 0).donors(pool[:1])
    with pytest.raises(ValueError, match="pool of >= 2"):
        OtherFill(pool[:1], 0)


def test_blur_keeps_constants_and_smooths():
    c = torch.full((1, 3, S, S), 0.7)
    torch.testing.assert_close(gaussian_blur(c, 2.0), c)
    x = _images(2, 3)
    b = BlurFill(S // G).fill(x)
    assert b.shape == x.shape and b.var() < x.var()
    torch.testing.assert_close(b.mean((-1, -2)), x.mean((-1, -2)), atol=0.15, rtol=0)
    # the impulse response is the normalised Gaussian, built here: exp(-t²/2σ²) / Σ, outer product
    sigma, n = 1.5, 21
    delta = torch.zeros(1, 1, n, n, dtype=torch.float64)
    delta[..., n // 2, n // 2] = 1.0
    t = torch.arange(-5, 6, dtype=torch.float64)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    want = torch.zeros(n, n, dtype=torch.float64)
    want[n // 2 - 5:n // 2 + 6, n // 2 - 5:n // 2 + 6] = torch.outer(k, k)
    torch.testing.assert_close(gaussian_blur(delta, sigma)[0, 0], want)
    # edges are replicated: a step at the border stays a step's blur, not a fade toward zero
    edge = torch.zeros(1, 1, n, n, dtype=torch.float64)
    edge[..., :, 0] = 1.0
    assert gaussian_blur(edge, sigma)[0, 0, :, 0].tolist() == pytest.approx([float(k[5:].sum())] * n)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        BlurFill(0)
    with pytest.raises(KeyError, match="unknown removal operator"):
        make_operator("zero")
    with pytest.raises(ValueError, match="pool"):
        make_operator("other")


def test_backbone_removal_context_restores_the_default(any_backbone):
    bb = any_backbone
    x = torch.randn(2, 3, bb.img_size, bb.img_size, generator=torch.Generator().manual_seed(0))
    keep = torch.zeros(2, bb.n_players, dtype=torch.bool)
    with bb.removal(BlurFill(4.0)):
        torch.testing.assert_close(bb.mask(x, keep), gaussian_blur(x, 4.0))
    assert bb.operator is None and torch.equal(bb.mask(x, keep), torch.zeros_like(x))


def _ops_table(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for op, vals in values.items():
        for i, v in enumerate(vals):
            rows.append(dict(backbone="b", task="t", head="linear", method=f"m{i}", budget=0, operator=op,
                             metric="fid_plus_auc", value=v, n_images=10, seed=0))
    rows.append(dict(backbone="b", task="t", head="linear", method="kernelshap", budget=1000, operator="mean",
                     metric="fid_plus_auc", value=9.0, n_images=3, seed=0))  # fewer images: not ranked
    return pd.DataFrame(rows)


def test_agreement_is_kendall_tau_of_the_rankings():
    a = operator_agreement(_ops_table({"mean": [1, 2, 3, 4], "blur": [10, 20, 30, 40], "other": [4, 3, 2, 1]}))
    tau = a.set_index(["operator_a", "operator_b"]).kendall_tau
    assert tau["mean", "blur"] == pytest.approx(1.0) and tau["mean", "other"] == pytest.approx(-1.0)
    assert tau["blur", "other"] == pytest.approx(-1.0) and set(a.n_methods) == {4}
    one_swap = operator_agreement(_ops_table({"mean": [1, 2, 3, 4], "blur": [2, 1, 3, 4]})).kendall_tau.iloc[0]
    assert one_swap == pytest.approx(4 / 6)  # (5 concordant - 1 discordant) / 6 pairs


def test_robustness_names_the_operator_that_changes_a_verdict():
    pi = _ops_table({"mean": [1, 2], "blur": [2, 1], "other": [1, 2]}).drop(columns="n_images").assign(image=0)

    def rule(t):  # "m1 beats m0"
        s = t["summary"].set_index("method").value
        return ("reproduces" if s["m1"] > s["m0"] else "does not reproduce"), ""

    v = operator_verdicts(pi, {"c": rule})
    assert operator_robustness(v)["c"] == "reproduces under mean; changes under blur (does not reproduce)"
    v2 = operator_verdicts(pi[pi.operator != "blur"], {"c": rule})
    assert operator_robustness(v2)["c"].startswith("holds under all operators (mean, other)")
