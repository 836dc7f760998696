"""The interactive explorer of notebook 08: TVE's map next to any baseline's, and what masking keeps.

Two layers:

* `Explorer` is pure Python (no widgets): given a `Selection` (backbone, task, head, test image,
  baseline, budget, sparsity) it computes a `View`: the image, the class predicted on it and its
  probability, and for each method the ``[G, G]`` map and, at each sparsity s, the image with only the
  top ``(1 − s)·G²`` players kept (the shared removal operator, players ranked as the metrics rank
  them) and the probability of the predicted class that this keeps (and that removing them leaves).
  `figure` draws a view; `render` is the one entry point: with ``interactive=False`` it returns the
  static grid (every method × every sparsity of the profile) for papermill, with ``interactive=True``
  the widgets.
* `ExplorerWidgets` wires ipywidgets (only imported when used) to `Explorer`: its callback
  ``update()`` reads the controls, recomputes the view and redraws. Tests drive it headlessly by
  setting the controls' values and reading ``.view``.

TVE maps come from the suite's pre-trained explainer (`Suite.explainer`), baselines from the
registry (`tve_lib.explainers.make_explainer`); explainers and maps are cached, so moving the
sparsity slider only re-masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import torch

from ..explainers import EXPLAINERS, explainer_class, supports
from ..gallery import outline, show_image, show_map
from ..heads import head_logits
from ..metrics import class_prob, masked_embeddings, ranked_keep

BASELINES = tuple(m for m in EXPLAINERS if m != "tve")


@dataclass(frozen=True)
class Selection:
    """What the explorer shows. ``budget`` 0 means the profile's largest sampling budget."""

    backbone: str
    task: str
    head: str = "linear"
    image: int = 0
    method: str = "kernelshap"  # the baseline shown next to TVE
    sparsity: float = 0.5
    budget: int = 0

    def replace(self, **kw: Any) -> Selection:
        return dataclasses.replace(self, **kw)


@dataclass
class MethodView:
    """One method on one image: its map and, per sparsity, the masked image and kept probabilities."""

    method: str
    attribution: torch.Tensor  # [G, G]
    masked: torch.Tensor  # [K, 3, S, S] raw-space images: only the top (1 - s) players kept
    p_keep: list[float]  # p(ŷ) with only those players kept (the Fidelity⁻ view)
    p_remove: list[float]  # p(ŷ) with those players removed (the Fidelity⁺ view)


@dataclass
class View:
    """Everything a figure of the explorer shows (no drawing state)."""

    selection: Selection
    image: torch.Tensor  # [C, S, S] raw in [0, 1]
    region: torch.Tensor | None  # [S, S] known relevant region, when the task has one
    label: str
    predicted: str
    p_full: float
    sparsities: list[float]
    rows: list[MethodView] = field(default_factory=list)

    def row(self, method: str) -> MethodView:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(method)


class Explorer:
    """Live explanations of ``suite``'s models; ``baselines`` restricts the methods offered."""

    def __init__(self, suite: Any, baselines: Sequence[str] = BASELINES):
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise KeyError(f"unknown baseline(s) {sorted(unknown)}; expected some of: {', '.join(BASELINES)}")
        self.suite, self.baselines = suite, tuple(baselines)
        self._explainers: dict[tuple, Any] = {}
        self._maps: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ options
    @property
    def budgets(self) -> list[int]:
        return sorted(self.suite.profile.eval.budgets)

    def methods(self, backbone: str) -> list[str]:
        """The baselines that apply to ``backbone`` (attention rollout needs a ViT/DeiT)."""
        bb = self.suite.backbone(backbone)
        return [m for m in self.baselines if supports(m, bb)]

    def n_images(self, task: str) -> int:
        return len(self.suite.task(task).test)

    def selection(self, backbone: str = "", task: str = "", head: str = "linear", image: int = 0,
                  method: str = "", sparsity: float = 0.5, budget: int = 0) -> Selection:
        """A valid `Selection`; empty names mean: the first backbone, the first task with known regions
        (else the first task), the first baseline that applies."""
        backbone = backbone or self.suite.backbone_names[0]
        if not task:
            tasks = list(self.suite.profile.tasks)
            task = next((t for t in tasks if self.suite.task(t).has_regions), tasks[0])
        methods = self.methods(backbone)
        if not methods:
            raise ValueError(f"no baseline of {self.baselines} applies to backbone {backbone!r}")
        return Selection(backbone, task, head, image, method or methods[0], sparsity, budget)

    def check(self, sel: Selection) -> None:
        """Clear errors for a selection the explorer cannot show."""
        if sel.method not in self.methods(sel.backbone):
            raise ValueError(f"baseline {sel.method!r} is not available for backbone {sel.backbone!r}; "
                             f"choose one of: {', '.join(self.methods(sel.backbone))}")
        n = self.n_images(sel.task)
        if not 0 <= sel.image < n:
            raise IndexError(f"image {sel.image} out of range: task {sel.task!r} has {n} test images")
        if not 0.0 <= sel.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {sel.sparsity}")

    # ------------------------------------------------------------------ computation
    def _budget(self, method: str, budget: int) -> int:
        return (budget or max(self.budgets)) if explainer_class(method).sampling else 0

    def explainer(self, backbone: str, method: str, budget: int = 0, task: str = "", head: str = "linear") -> Any:
        """``method``'s explainer on ``backbone`` (cached): TVE from the suite, baselines from the registry."""
        budget = self._budget(method, budget)
        per_task = explainer_class(method).training == "task"
        key = (backbone, method, budget, task if per_task else "", head if per_task else "")
        if key not in self._explainers:
            kw = {"budget": budget} if budget else {}
            if method == "occlusion":  # shown, not timed: the exact windows earlier notebooks computed serve
                kw["reuse"] = True
            self._explainers[key] = self.suite.make_explainer(method, backbone, task=task or None, head=head, **kw)
        return self._explainers[key]

    def _image(self, sel: Selection) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        raw, labels, masks = self.suite.task(sel.task, sel.backbone).test.get([sel.image])
        return raw, int(labels[0]), None if masks is None else masks[0]

    def attribution(self, sel: Selection, method: str) -> torch.Tensor:
        """``[G, G]`` map of ``method`` for the selected image and the class predicted on it (cached)."""
        budget = self._budget(method, sel.budget)
        key = (sel.backbone, sel.task, sel.head, sel.image, method, budget)
        if key not in self._maps:
            bb = self.suite.backbone(sel.backbone)
            head = self.suite.head(sel.backbone, sel.task, sel.head)
            raw, _, _ = self._image(sel)
            x = bb.normalize(raw.to(self.suite.device))
            ex = self.explainer(sel.backbone, method, budget, sel.task, sel.head)
            self._maps[key] = ex.explain(x, head).detach()[0].cpu()
        return self._maps[key]

    @torch.no_grad()
    def view(self, sel: Selection, methods: Sequence[str] | None = None,
             sparsities: Sequence[float] | None = None) -> View:
        """The data of one figure: ``methods`` (default TVE and ``sel.method``) at ``sparsities``
        (default ``[sel.sparsity]``)."""
        self.check(sel)
        methods = list(methods or ["tve", sel.method])
        sparsities = [float(s) for s in (sparsities if sparsities is not None else [sel.sparsity])]
        bb = self.suite.backbone(sel.backbone)
        head = self.suite.head(sel.backbone, sel.task, sel.head)
        raw, label, region = self._image(sel)
        x = bb.normalize(raw.to(self.suite.device))
        probs = torch.softmax(head_logits(head, bb.embed(x)).float(), -1)[0]
        pred = int(probs.argmax())
        target = torch.tensor([pred], device=x.device)
        classes = self.suite.task(sel.task).classes
        ks = [round((1 - s) * bb.n_players) for s in sparsities]
        out = View(sel, raw[0].cpu(), region, classes[label], classes[pred], float(probs[pred]), sparsities)
        for m in methods:
            a = self.attribution(sel, m)
            keep = ranked_keep(a.unsqueeze(0).to(x.device), ks)  # [1, K, P]
            both = torch.cat([keep, ~keep], 1)
            p = class_prob(head, masked_embeddings(bb, x, both), target)[0].cpu()
            masked = bb.mask(x, keep)[0]  # [K, 3, S, S], normalised
            shown = (masked * bb.std + bb.mean).clamp(0, 1).cpu()
            out.rows.append(MethodView(m, a, shown, p[:len(ks)].tolist(), p[len(ks):].tolist()))
        return out

    # ------------------------------------------------------------------ drawing
    @staticmethod
    def figure(view: View) -> plt.Figure:
        """Rows: methods; columns: the image, the map, then the masked image at each sparsity."""
        n_rows, n_cols = len(view.rows), 2 + len(view.sparsities)
        fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.0 * n_cols, 2.1 * n_rows + 0.5), squeeze=False)
        for i, r in enumerate(view.rows):
            show_image(axes[i, 0], view.image)
            if view.region is not None:
                outline(axes[i, 0], view.region)
            axes[i, 0].set_ylabel(r.method, fontsize=10)
            show_map(axes[i, 1], view.image, r.attribution)
            for j, s in enumerate(view.sparsities):
                show_image(axes[i, 2 + j], r.masked[j])
                axes[i, 2 + j].set_title(f"s={s:.2f}: p keep {r.p_keep[j]:.2f}\np without {r.p_remove[j]:.2f}",
                                         fontsize=8)
        axes[0, 0].set_title(f"label {view.label}", fontsize=8)
        axes[0, 1].set_title("map, centred\n(red: above the median player)", fontsize=8)
        s = view.selection
        fig.suptitle(f"{s.backbone} · {s.task} · {s.head} head · test image {s.image}: predicted {view.predicted} "
                     f"(p={view.p_full:.2f}); top (1−s) of the players kept", fontsize=9)
        fig.tight_layout()
        return fig

    def render(self, sel: Selection, interactive: bool = False, methods: Sequence[str] | None = None,
               sparsities: Sequence[float] | None = None) -> Any:
        """The notebook's one call. Static (``interactive=False``): the figure of TVE and ``methods``
        (default every baseline that applies) at ``sparsities`` (default the profile's). Interactive:
        an `ExplorerWidgets` starting at ``sel`` (display its ``.box``)."""
        if interactive:
            return ExplorerWidgets(self, sel)
        methods = ["tve", *(methods or self.methods(sel.backbone))]
        sps = sparsities if sparsities is not None else self.suite.profile.eval.sparsities
        return self.figure(self.view(sel, methods, sps))


class ExplorerWidgets:
    """ipywidgets controls bound to an `Explorer`; ``update()`` is the callback of every control."""

    def __init__(self, explorer: Explorer, sel: Selection):
        import ipywidgets as w

        self.explorer = explorer
        suite = explorer.suite
        sps = list(suite.profile.eval.sparsities)
        step = min((b - a for a, b in zip(sps, sps[1:])), default=0.1)
        self.controls = {
            "backbone": w.Dropdown(options=suite.backbone_names, value=sel.backbone, description="backbone"),
            "task": w.Dropdown(options=list(dict.fromkeys([*suite.profile.tasks, sel.task])), value=sel.task,
                               description="task"),
            "head": w.Dropdown(options=["linear", "mlp"], value=sel.head, description="head"),
            "image": w.IntSlider(min=0, max=explorer.n_images(sel.task) - 1, value=sel.image, description="image"),
            "method": w.Dropdown(options=explorer.methods(sel.backbone), value=sel.method, description="baseline"),
            "budget": w.Dropdown(options=explorer.budgets, value=sel.budget or max(explorer.budgets),
                                 description="budget"),
            "sparsity": w.FloatSlider(min=0.0, max=max(sps), step=step, value=sel.sparsity, description="sparsity",
                                      continuous_update=False),
        }
        self.out = w.Output()
        self.box = w.VBox([w.HBox([self.controls[k] for k in ("backbone", "task", "head")]),
                           w.HBox([self.controls[k] for k in ("method", "budget")]),
                           w.HBox([self.controls[k] for k in ("image", "sparsity")]), self.out])
        self.view: View | None = None
        self.figure: plt.Figure | None = None
        self.error: str | None = None
        self._busy = False
        for c in self.controls.values():
            c.observe(self.update, names="value")
        self.update()

    def selection(self) -> Selection:
        v = {k: c.value for k, c in self.controls.items()}
        return Selection(v["backbone"], v["task"], v["head"], int(v["image"]), v["method"], float(v["sparsity"]),
                         int(v["budget"]))

    def _sync_options(self) -> None:
        """Keep the choices valid: baselines of the backbone, images of the task."""
        c = self.controls
        methods = self.explorer.methods(c["backbone"].value)
        if list(c["method"].options) != methods:
            keep = c["method"].value if c["method"].value in methods else methods[0]
            c["method"].options = methods
            c["method"].value = keep
        n = self.explorer.n_images(c["task"].value)
        if c["image"].max != n - 1:
            c["image"].value = min(c["image"].value, n - 1)
            c["image"].max = n - 1
        c["budget"].disabled = not explainer_class(c["method"].value).sampling

    def update(self, change: dict | None = None) -> View | None:
        """The callback: recompute the view for the controls' values and redraw it."""
        if self._busy:
            return self.view
        self._busy = True
        try:
            self._sync_options()
            sel = self.selection()
            try:
                self.view, self.error = self.explorer.view(sel), None
            except (ValueError, IndexError, KeyError) as e:
                self.error = str(e)
            self._draw()
        finally:
            self._busy = False
        return self.view

    def _draw(self) -> None:
        from IPython.display import clear_output, display

        if self.figure is not None:
            plt.close(self.figure)
        self.figure = None if self.error else Explorer.figure(self.view)
        if self.figure is not None:
            plt.close(self.figure)  # shown through the Output widget only
        with self.out:
            clear_output(wait=True)
            if self.error:
                print(self.error)
            elif self.figure is not None:
                display(self.figure)
