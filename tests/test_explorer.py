"""The explorer's computation and its widget callbacks, driven headlessly on tiny random models."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import tiny_backbone  # noqa: E402

from tve_lib.config import get_profile  # noqa: E402
from tve_lib.data import Task, TensorImageSet  # noqa: E402
from tve_lib.explainers.tve import TVE, build_explainer  # noqa: E402
from tve_lib.heads import make_head  # noqa: E402
from tve_lib.masking import default_radius  # noqa: E402
from tve_lib.studies.explorer import Explorer, ExplorerWidgets, Selection  # noqa: E402
from tve_lib.studies.suite import Suite  # noqa: E402


class FakeSuite:
    """The slice of `Suite` the explorer uses, over random tiny models (nothing trained or cached)."""

    def __init__(self):
        prof = get_profile("smoke")
        self.profile = dataclasses.replace(prof, tasks=("plain", "regions"),
                                           eval=dataclasses.replace(prof.eval, budgets=(16, 32)))
        self.device, self.seed = torch.device("cpu"), 0
        self._bbs = {n: tiny_backbone(n).eval().requires_grad_(False) for n in ("vit", "swin")}
        g = torch.Generator().manual_seed(0)
        imgs = torch.rand(7, 1, 32, 32, generator=g)
        masks = torch.zeros(7, 32, 32, dtype=torch.bool)
        masks[:, :16, :16] = True
        cls = ["a", "b", "c"]
        y = torch.arange(7) % 3
        self._tasks = {"plain": Task("plain", TensorImageSet("plain", imgs, y, cls), TensorImageSet("plain", imgs[:4],
                                                                                                 y[:4], cls), cls),
                       "regions": Task("regions", TensorImageSet("regions", imgs, y, cls, masks),
                                       TensorImageSet("regions", imgs, y, cls, masks), cls)}
        self.calls = {"head": 0, "explainer": 0}
        self._heads, self._tve = {}, {}

    @property
    def backbone_names(self):
        return list(self._bbs)

    def backbone(self, name):
        return self._bbs[name]

    def task(self, name, backbone=None):  # one decoding for every backbone (in-memory sets)
        return self._tasks[name]

    def tve_radius(self, name):
        return default_radius(self._bbs[name].grid)

    def head(self, b, t, kind="linear"):
        if (b, t, kind) not in self._heads:
            self.calls["head"] += 1
            torch.manual_seed(len(self._heads))
            self._heads[(b, t, kind)] = make_head(kind, self._bbs[b].embed_dim, 3).eval().requires_grad_(False)
        return self._heads[(b, t, kind)]

    def explainer(self, b):
        if b not in self._tve:
            self.calls["explainer"] += 1
            torch.manual_seed(0)
            bb = self._bbs[b]
            self._tve[b] = TVE(bb, build_explainer(bb, self.profile.tve), self.tve_radius(b))
        return self._tve[b]

    make_explainer = Suite.make_explainer  # the real study-level factory, over this suite's models


@pytest.fixture(scope="module")
def explorer():
    return Explorer(FakeSuite(), baselines=("random", "occlusion", "rollout", "kernelshap"))


def test_default_selection_prefers_a_task_with_regions(explorer):
    sel = explorer.selection()
    assert (sel.backbone, sel.task, sel.method) == ("vit", "regions", "random")
    assert explorer.methods("swin") == ["random", "occlusion", "kernelshap"]  # no rollout on Swin


def test_view_masks_and_probabilities(explorer):
    sel = explorer.selection(method="occlusion", image=2)
    v = explorer.view(sel, sparsities=[0.0, 0.5, 0.9])
    assert [r.method for r in v.rows] == ["tve", "occlusion"]
    assert v.region is not None and v.predicted in ("a", "b", "c")
    grid = explorer.suite.backbone("vit").grid
    for r in v.rows:
        assert r.attribution.shape == (grid, grid)
        assert r.masked.shape == (3, 3, 32, 32)
        # s = 0 keeps every player: the image itself and the full-image probability
        assert torch.allclose(r.masked[0], v.image.expand(3, -1, -1), atol=1e-5)
        assert r.p_keep[0] == pytest.approx(v.p_full, abs=1e-5)
        # the removed players show the removal colour (the normalisation mean)
        kept_px = (r.masked[2] - explorer.suite.backbone("vit").mean[0]).abs().sum(0) > 1e-6
        assert kept_px.float().mean() <= 0.2
        assert all(0.0 <= p <= 1.0 for p in r.p_keep + r.p_remove)
    # the top-ranked player of the TVE map is kept at high sparsity
    tve = v.row("tve")
    top = int(tve.attribution.flatten().argmax())
    patch = 32 // grid
    rr, cc = divmod(top, grid)
    block = tve.masked[2][:, rr * patch:(rr + 1) * patch, cc * patch:(cc + 1) * patch]
    want = v.image[:, rr * patch:(rr + 1) * patch, cc * patch:(cc + 1) * patch].expand(3, -1, -1)
    assert torch.allclose(block, want, atol=1e-5)


def test_maps_are_cached_and_sparsity_only_remasks(explorer):
    sel = explorer.selection(method="kernelshap", budget=16)
    a = explorer.view(sel).row("kernelshap").attribution
    n_maps = len(explorer._maps)
    v1 = explorer.view(sel.replace(sparsity=0.2))
    v2 = explorer.view(sel.replace(sparsity=0.8))
    assert len(explorer._maps) == n_maps
    assert torch.equal(v1.row("kernelshap").attribution, a)
    assert v1.row("kernelshap").p_keep != v2.row("kernelshap").p_keep or \
        not torch.equal(v1.row("kernelshap").masked, v2.row("kernelshap").masked)
    # a different budget is a different explainer and map
    b = explorer.attribution(sel.replace(budget=32), "kernelshap")
    assert len(explorer._maps) == n_maps + 1 and b.shape == a.shape


def test_invalid_selections_give_clear_errors(explorer):
    with pytest.raises(ValueError, match="not available for backbone 'swin'"):
        explorer.view(Selection("swin", "plain", method="rollout"))
    with pytest.raises(IndexError, match="has 4 test images"):
        explorer.view(Selection("vit", "plain", image=4, method="random"))
    with pytest.raises(KeyError, match="unknown baseline"):
        Explorer(FakeSuite(), baselines=("nope",))


def test_static_render_is_one_grid_of_every_method_and_sparsity(explorer):
    sel = explorer.selection()
    fig = explorer.render(sel, interactive=False)
    n_sp = len(explorer.suite.profile.eval.sparsities)
    n_methods = 1 + len(explorer.methods("vit"))
    assert len(fig.axes) == n_methods * (2 + n_sp)
    assert fig.axes[2].get_title().startswith("s=0.00: p keep")
    plt.close(fig)


def test_widget_callbacks(explorer):
    w = explorer.render(explorer.selection(method="occlusion"), interactive=True)
    assert isinstance(w, ExplorerWidgets) and w.view is not None and w.error is None
    c = w.controls
    # sparsity slider: same maps, new masked image and kept probability
    before = w.view.row("tve")
    c["sparsity"].value = 0.9
    after = w.view.row("tve")
    assert w.view.selection.sparsity == pytest.approx(0.9)
    assert torch.equal(before.attribution, after.attribution)
    assert not torch.equal(before.masked, after.masked)
    # baseline dropdown: TVE's map next to the newly chosen baseline
    c["method"].value = "rollout"
    assert [r.method for r in w.view.rows] == ["tve", "rollout"]
    assert c["budget"].disabled
    # backbone without rollout: the baseline falls back to one that applies
    c["backbone"].value = "swin"
    assert "rollout" not in c["method"].options and w.view.selection.method in c["method"].options
    assert w.view.selection.backbone == "swin"
    assert w.view.rows[0].attribution.shape[-1] == explorer.suite.backbone("swin").grid
    # task with fewer images: the image slider is clamped to the task
    c["image"].value = 6
    c["task"].value = "plain"
    assert c["image"].max == 3 and w.view.selection.image == 3 and w.view.region is None
    # a sampling baseline enables the budget control, and the budget reaches the explainer
    c["method"].value = "kernelshap"
    assert not c["budget"].disabled
    c["budget"].value = 16
    assert w.view.selection.budget == 16
    assert (("swin", "plain", "linear", 3, "kernelshap", 16)) in explorer._maps
    # head dropdown
    c["head"].value = "mlp"
    assert w.view.selection.head == "mlp" and w.error is None
    assert w.figure is not None and len(w.figure.axes) == 2 * 3
