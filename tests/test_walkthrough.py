"""The walkthroughs of notebooks 01 and 02 (`tve_lib.studies.walkthrough`) on tiny random models."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from test_explorer import FakeSuite  # noqa: E402

from tve_lib.explainers.tve import window_occlusion  # noqa: E402
from tve_lib.studies.walkthrough import (  # noqa: E402
    Walkthrough,
    WalkthroughWidgets,
    transfer_by_hand,
    walk_player,
    window_figure,
)


class WalkSuite(FakeSuite):
    """FakeSuite plus the upstream sets the walkthrough reads."""

    @property
    def upstream(self):
        t = self.task("plain")
        return t.train, t.test

    def upstream_for(self, backbone):
        return self.upstream


@pytest.fixture(scope="module")
def suite():
    return WalkSuite()


@pytest.mark.parametrize("b", ["vit", "swin"])
def test_transfer_by_hand_is_what_explain_returns_and_its_exact_part_is_window_occlusion(suite, b):
    bb, tve = suite.backbone(b), suite.explainer(b)
    x = bb.normalize(suite.task("plain").test.get(torch.tensor([1]))[0])
    head = suite.head(b, "plain")
    for player in (0, walk_player(suite.profile, bb), bb.n_players - 1):
        hand = transfer_by_hand(tve, head, x, player)
        assert hand["agrees"] and hand["|difference − explain|"] <= 1e-5
        # what explain() returns, computed here rather than read from the function's own report
        explained = tve.explain(x, head, torch.tensor([hand["class"]]))[0].flatten()[player]
        assert hand["TVE: difference"] == pytest.approx(explained.item(), abs=1e-5)
        exact = window_occlusion(bb, head, x, torch.tensor([hand["class"]]), tve.radius)[0].flatten()[player]
        assert hand["exact: difference"] == pytest.approx(exact.item(), abs=1e-4)
    with pytest.raises(ValueError, match="one image"):
        transfer_by_hand(tve, head, x.expand(2, -1, -1, -1), 0)


def test_window_view_shows_the_removal_operator_and_scores_only_at_the_explainers_radius(suite):
    walk = Walkthrough(suite, "vit")
    bb = suite.backbone("vit")
    v = walk.window(walk.player)
    assert v.window.sum() == (2 * walk.radius + 1) ** 2  # the centre player's window is whole
    fill = bb.mean[0, :, 0, 0]  # removed players show the mean colour
    removed_px = (v.keep_image - fill.view(3, 1, 1)).abs().sum(0) < 1e-6
    assert removed_px.float().mean() > 0.5
    assert set(v.scores.explainer) == {"fresh", "pre-trained"} and set(v.scores.branch) == {"keep", "remove"}
    assert v.scores.cosine.between(-1, 1).all()
    assert len(walk.window(walk.player, walk.radius + 1).scores) == 0
    window_figure(v)
    with pytest.raises(IndexError, match="outside"):
        walk.window(bb.n_players)


def test_walkthrough_sliders_redraw(suite):
    walk = Walkthrough(suite, "vit")
    w = WalkthroughWidgets(walk, walk.player)
    first = w.view
    w.controls["player"].value = 0
    assert w.view.player == 0 and not torch.equal(w.view.window, first.window)
    w.controls["radius"].value = walk.radius + 1
    assert w.view.radius == walk.radius + 1 and w.view.window.sum() > first.window.sum() // 2
