"""Maps a person can read: the display scaling of galleries and the explorer (issue: readable maps)."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from tve_lib.gallery import SIGNS, attribution_gallery, display_map  # noqa: E402


def test_centred_rendering_ignores_a_constant_offset():
    """Window-occlusion maps carry a large per-image offset; the centred mode shows the same picture
    with or without it (a symmetric scale around 0 would show one flat colour)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 8, 8, generator=g)
    offset = torch.tensor([50.0, -20.0, 1e3]).view(-1, 1, 1)
    assert torch.allclose(display_map(a + offset, "centred"), display_map(a, "centred"), atol=1e-4)
    flat = display_map(a + offset, "all")[2]  # what a scale centred on 0 shows: one colour
    assert flat.min() > 0.99 and display_map(a + offset, "centred")[2].std() > 0.3


def test_sign_modes_and_percentile_clipping():
    a = torch.linspace(-1, 1, 64).view(1, 8, 8)
    a[0, 0, 0] = -100.0  # one extreme player
    for sign in SIGNS:
        d = display_map(a, sign)
        lo = 0.0 if sign in ("positive", "absolute") else -1.0
        assert d.min() >= lo and d.max() <= 1.0, sign
    assert display_map(a, "positive").min() == 0 and display_map(a, "absolute")[0, 0, 0] == 1.0
    # clipping at the 99th percentile: the rest of the map keeps its contrast despite the outlier
    assert display_map(a, "all", clip=90.0)[0, 7, 7] > 0.5
    assert display_map(torch.zeros(1, 8, 8)).abs().max() == 0  # a constant map shows as 0
    with pytest.raises(ValueError, match="unknown sign mode"):
        display_map(a, "signed")


def test_gallery_blends_maps_over_the_image_and_says_what_the_colours_mean():
    imgs = torch.rand(2, 1, 32, 32)
    fig = attribution_gallery(imgs, {"tve": torch.randn(2, 8, 8), "occlusion": torch.randn(2, 8, 8)})
    ax = fig.axes[1]
    assert len(ax.images) == 2  # the image, then the map blended over it
    assert ax.images[1].get_alpha() < 1
    assert any("median" in t.get_text() for t in fig.texts)
