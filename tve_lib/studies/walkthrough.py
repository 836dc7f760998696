"""Step through TVE's mechanics on one image (the walkthroughs at the top of notebooks 01 and 02).

Notebook 01: the image with its ``G x G`` player grid, a window ``W_i`` around player ``i``, the two
inputs the backbone sees (``x ⊙ W_i`` and ``x ⊙ (1 − W_i)``, through the suite's one removal
operator, shown de-normalised), the two target embeddings against what a fresh and the pre-trained
explainer predict for them (cosine and squared error per branch), and a few live optimiser steps of
a fresh explainer (`live_pretraining`). Notebook 02: the transfer rule worked out for one player
(`transfer_by_hand`): ``h_y(Φ⁺_i) − h_y(Φ⁻_i)``, the exact ``f_y(x⊙W_i) − f_y(x⊙(1−W_i))`` from two
backbone calls, and the check that the first difference is what ``explain`` returns.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from tqdm.auto import tqdm

from ..explainers import tve
from ..gallery import show_image, show_map
from ..heads import head_logits
from ..masking import windows
from ..seeds import seeded


@dataclass
class WindowView:
    """What one window does to one image, and how well explainers predict its two embeddings."""

    player: int
    radius: int
    grid: int
    image: torch.Tensor  # raw [3, S, S] in [0, 1]
    keep_image: torch.Tensor  # x ⊙ W_i, de-normalised for display
    remove_image: torch.Tensor  # x ⊙ (1 − W_i)
    window: torch.Tensor  # [G, G] bool
    scores: pd.DataFrame  # explainer, branch, cosine, squared_error (empty when the radius is not the explainer's)


def _denormalise(bb, x: torch.Tensor) -> torch.Tensor:
    return (x * bb.std + bb.mean).clamp(0, 1)[0].cpu()


@torch.no_grad()
def _predict(model, bb, x: torch.Tensor, player: int) -> tuple[torch.Tensor, torch.Tensor]:
    inp, base = model.prepare(bb, x)
    pk, pr = tve.explainer_forward(model, bb, inp, base)
    return pk[0, player], pr[0, player]


def walk_player(profile: Any, bb: Any) -> int:
    """The player the walkthroughs follow: ``profile.walk.player``, by default the grid's centre."""
    p = profile.walk.player
    return bb.n_players // 2 + bb.grid // 2 if p is None else p


class Walkthrough:
    """One upstream validation image of ``backbone`` and the explainers to compare on it."""

    def __init__(self, suite: Any, backbone: str, image: int | None = None):
        self.suite, self.name = suite, backbone
        self.bb = bb = suite.backbone(backbone)
        val = suite.upstream_for(backbone)[1]
        idx = suite.profile.walk.image if image is None else image
        if not 0 <= idx < len(val):
            raise IndexError(f"image {idx} is outside the upstream validation set (0..{len(val) - 1})")
        self.raw = val.get(torch.tensor([idx]))[0][:1].to(suite.device)
        self.x = bb.normalize(self.raw)
        self.radius = suite.tve_radius(backbone)
        self.player = walk_player(suite.profile, bb)
        self._models: dict[str, Any] = {}

    @property
    def models(self) -> dict[str, Any]:
        """A fresh explainer (the pre-trained one's initialisation) and the pre-trained one."""
        if not self._models:
            with seeded(self.suite.seed):
                fresh = tve.build_explainer(self.bb, self.suite.profile.tve).eval()
            self._models = {"fresh": fresh, "pre-trained": self.suite.explainer(self.name).model}
        return self._models

    def window(self, player: int, radius: int | None = None) -> WindowView:
        """The window around ``player`` at ``radius`` (default the explainer's) and its scores."""
        bb, g = self.bb, self.bb.grid
        radius = self.radius if radius is None else radius
        if not 0 <= player < bb.n_players:
            raise IndexError(f"player {player} is outside the {g}x{g} grid (0..{bb.n_players - 1})")
        if not 0 <= radius < g:
            raise ValueError(f"radius must be in 0..{g - 1}, got {radius}")
        win = windows(g, radius, self.x.device)[player]  # [P] bool
        keep, rem = bb.mask(self.x, win.unsqueeze(0)), bb.mask(self.x, ~win.unsqueeze(0))
        rows = []
        if radius == self.radius:  # the explainers were trained for this radius only
            tk, tr = tve.window_targets(bb, self.x, torch.tensor([[player]], device=self.x.device), radius)
            for name, model in self.models.items():
                pk, pr = _predict(model, bb, self.x, player)
                for branch, p, t in (("keep", pk, tk[0, 0]), ("remove", pr, tr[0, 0])):
                    rows.append({"explainer": name, "branch": branch,
                                 "cosine": F.cosine_similarity(p, t, dim=0).item(),
                                 "squared_error": ((p - t) ** 2).mean().item()})
        return WindowView(player, radius, g, self.raw[0].cpu(), _denormalise(bb, keep), _denormalise(bb, rem),
                          win.view(g, g).cpu(), pd.DataFrame(rows, columns=["explainer", "branch", "cosine",
                                                                            "squared_error"]))


def _grid_lines(ax: plt.Axes, size: int, grid: int) -> None:
    step = size / grid
    for k in range(1, grid):
        ax.axhline(k * step - 0.5, color="white", lw=0.4, alpha=0.6)
        ax.axvline(k * step - 0.5, color="white", lw=0.4, alpha=0.6)


def window_figure(v: WindowView) -> plt.Figure:
    """Image with the player grid and the window, the two masked inputs, and the scores."""
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.3))
    size = v.image.shape[-1]
    show_image(axes[0], v.image)
    _grid_lines(axes[0], size, v.grid)
    rows, cols = v.window.nonzero(as_tuple=True)
    p = size / v.grid
    axes[0].add_patch(Rectangle((cols.min().item() * p - 0.5, rows.min().item() * p - 0.5),
                                (cols.max() - cols.min() + 1).item() * p, (rows.max() - rows.min() + 1).item() * p,
                                fill=False, ec="red", lw=2))
    axes[0].set_title(f"player {v.player}, window r={v.radius}")
    show_image(axes[1], v.keep_image)
    axes[1].set_title("x ⊙ W_i (window kept)")
    show_image(axes[2], v.remove_image)
    axes[2].set_title("x ⊙ (1 − W_i) (window removed)")
    ax = axes[3]
    if len(v.scores):
        import seaborn as sns

        sns.barplot(v.scores, x="branch", y="cosine", hue="explainer", ax=ax)
        ax.set_ylim(min(0.0, v.scores.cosine.min() - 0.05), 1.0)
        ax.set_title("cosine(prediction, target)")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "the explainers were trained\nfor another radius", ha="center", va="center")
    fig.tight_layout()
    return fig


def live_pretraining(suite: Any, backbone: str, progress: bool = True) -> pd.DataFrame:
    """A few optimiser steps of a fresh explainer on a handful of upstream images (``profile.walk.windows``
    windows of each, every window by default; targets computed on the fly), through the one training loop;
    rows ``step, loss_keep, loss_remove``."""
    wc, bb = suite.profile.walk, suite.backbone(backbone)
    steps_per_epoch = -(-wc.n_images // wc.batch_size)
    k = min(wc.windows, bb.n_players) if wc.windows > 0 else bb.n_players
    cfg = dataclasses.replace(suite.profile.tve, sampler="online", windows_per_image=k,
                              n_images=wc.n_images, batch_size=wc.batch_size, n_heldout=wc.batch_size,
                              epochs=-(-wc.steps // steps_per_epoch), warmup_frac=0.0, augment="none")
    rows: list[dict] = []
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=f"live TVE steps ({backbone})", disable=not progress)

    def on_step(step: int, lk: float, lr: float) -> None:
        rows.append({"step": step + 1, "loss_keep": lk, "loss_remove": lr})
        bar.update(1)
        bar.set_postfix(keep=f"{lk:.4f}", remove=f"{lr:.4f}")

    with seeded(suite.seed):
        model = tve.build_explainer(bb, cfg)
    train, val = suite.upstream_for(bb.name)
    with tempfile.TemporaryDirectory() as tmp:  # live: nothing cached, every run trains afresh
        tve.pretrain(model, bb, train, val, cfg, Path(tmp) / "walk.pt", suite.seed, progress=False, on_step=on_step)
    bar.close()
    return pd.DataFrame(rows)


def live_loss_figure(live: pd.DataFrame) -> plt.Figure:
    """The losses of `live_pretraining`, step by step."""
    import seaborn as sns

    long = live.melt(id_vars="step", value_vars=["loss_keep", "loss_remove"], var_name="branch", value_name="MSE")
    fig, ax = plt.subplots(figsize=(5, 3))
    sns.lineplot(long, x="step", y="MSE", hue="branch", marker="o", ax=ax)
    ax.set_yscale("log")
    ax.set_title("a fresh explainer's first optimiser steps")
    fig.tight_layout()
    return fig


#: `transfer_by_hand`: the rule's difference and ``explain``'s value agree to this relative precision
HAND_CHECK_RTOL = 1e-5


@torch.no_grad()
def transfer_by_hand(explainer: tve.TVE, head: torch.nn.Module, x: torch.Tensor, player: int) -> dict[str, float]:
    """The transfer rule for one image ``x [1, 3, S, S]``, one head and one player, number by number."""
    bb, model = explainer.backbone, explainer.model
    if x.shape[0] != 1:
        raise ValueError(f"transfer_by_hand takes one image [1, 3, S, S], got {tuple(x.shape)}")
    inp, emb = model.prepare(bb, x)
    y = int(head_logits(head, emb).argmax(-1))
    pk, pr = tve.explainer_forward(model, bb, inp, emb)  # as `explain` runs it (the same precision)
    win = windows(bb.grid, explainer.radius, x.device)[player].unsqueeze(0)
    h_keep, h_remove = head_logits(head, pk[:, player])[0, y].item(), head_logits(head, pr[:, player])[0, y].item()
    f_keep = head_logits(head, bb.embed(bb.mask(x, win)))[0, y].item()
    f_remove = head_logits(head, bb.embed(bb.mask(x, ~win)))[0, y].item()
    a = explainer.explain(x, head, torch.tensor([y], device=x.device))[0].flatten()[player].item()
    gap = abs(h_keep - h_remove - a)
    return {"class": y, "player": player, "h_y(Φ⁺_i)": h_keep, "h_y(Φ⁻_i)": h_remove,
            "TVE: difference": h_keep - h_remove, "f_y(x⊙W_i)": f_keep, "f_y(x⊙(1−W_i))": f_remove,
            "exact: difference": f_keep - f_remove, "explain(x)[i]": a, "|difference − explain|": gap,
            "agrees": gap <= HAND_CHECK_RTOL * max(1.0, abs(a))}


def map_pair_figure(image: torch.Tensor, tve_map: torch.Tensor, exact_map: torch.Tensor, player: int) -> plt.Figure:
    """TVE's map beside the exact window quantity for one image, the worked player outlined."""
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 3.3))
    g = tve_map.shape[-1]
    p = image.shape[-1] / g
    r, c = divmod(player, g)
    for ax, m, title in zip(axes, (tve_map, exact_map), ("TVE (zero-shot)", "exact window quantity")):
        show_map(ax, image, m)
        ax.add_patch(Rectangle((c * p - 0.5, r * p - 0.5), p, p, fill=False, ec="black", lw=2))
        ax.set_title(title)
    fig.tight_layout()
    return fig


class WalkthroughWidgets:
    """Sliders for the player and the radius, redrawing `window_figure` (``INTERACTIVE=True``)."""

    def __init__(self, walk: Walkthrough, player: int):
        import ipywidgets as w

        g = walk.bb.grid
        self.walk = walk
        self.controls = {"player": w.IntSlider(min=0, max=g * g - 1, value=player, description="player i"),
                         "radius": w.IntSlider(min=0, max=g - 1, value=walk.radius, description="radius r")}
        self.out = w.Output()
        self.box = w.VBox([w.HBox(list(self.controls.values())), self.out])
        self.view: WindowView | None = None
        for c in self.controls.values():
            c.observe(self.update, names="value")
        self.update()

    def update(self, change: dict | None = None) -> WindowView:
        """The callback of both sliders."""
        from IPython.display import clear_output, display

        self.view = self.walk.window(self.controls["player"].value, self.controls["radius"].value)
        fig = window_figure(self.view)
        plt.close(fig)  # shown through the Output widget only
        with self.out:
            clear_output(wait=True)
            display(fig)
        return self.view
