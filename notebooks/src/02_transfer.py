# %% [markdown]
# # 02 · Zero-shot transfer to downstream tasks
#
# With the explainer `ψ = (Φ⁺, Φ⁻)` of a backbone pre-trained once (notebook 01), any head `h` trained on
# that backbone is explained **without any downstream training**:
#
# `a_i(x) = λ⁺ · h_y(Φ⁺_i(x)) − λ⁻ · h_y(Φ⁻_i(x))`, `y` = the class predicted on the full image.
#
# This amortises `f_y(x ⊙ W_i) − f_y(x ⊙ (1 − W_i))`: how much the window alone supports `y`
# ("sufficiency") minus how much the image without it still does ("necessity"). This suite applies the
# **whole head** `h`, so MLP heads are explained correctly; the official code applies only the head's last
# Linear layer, which we show side by side. The optional `(2r+1)` average pooling gives the smoothed map of
# the official demo.
#
# Transfer error: for held-out images of every task we compute the exact amortised quantity by brute force
# (2·G² backbone passes per image, shared by both heads) and report, per image, the Spearman correlation
# and the top-10 % overlap with TVE's map, against the targets of `tve_lib.report.claims` (`SPEARMAN_OK`,
# `TOPK_OK`), in every setting, including the digits task, a domain the explainer never saw. How the error
# moves with pre-training compute is measured in notebook 03b (`tve/scaling.csv`).

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False

# %%
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown, display

from tve_lib import Suite
from tve_lib.explainers.tve import window_occlusion
from tve_lib.gallery import attribution_gallery
from tve_lib.io import write_csv
from tve_lib.report.claims import SPEARMAN_OK
from tve_lib.report.figures import transfer_boxes
from tve_lib.report.findings import branch_finding, transfer_finding
from tve_lib.report.plots import savefig
from tve_lib.report.tables import branch_table, transfer_summary
from tve_lib.studies.transfer import transfer_error
from tve_lib.studies.walkthrough import map_pair_figure, transfer_by_hand, walk_player

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
ev = suite.profile.eval
heads = {(b, t): {k: suite.head(b, t, k) for k in ("linear", "mlp")} for b, t in suite.pairs()}

# %% [markdown]
# ## The transfer rule by hand: one image, one head, one player
# For the first test image of the first task, the first backbone's linear head and the centre player `i`: the
# head applied to the two predicted embeddings, `h_y(Φ⁺_i)` and `h_y(Φ⁻_i)`, and their difference; the same
# player's exact quantity `f_y(x⊙W_i) − f_y(x⊙(1−W_i))` from two backbone calls; and the check that the first
# difference is exactly what `explain` returns for that player (`agrees`). Then TVE's whole map beside the exact
# one for that image (the player outlined).

# %%
b0, t0 = suite.backbone_names[0], suite.profile.tasks[0]
bb0, tve0, head0 = suite.backbone(b0), suite.explainer(b0), heads[(b0, t0)]["linear"]
raw0 = suite.task(t0, b0).test.get(torch.tensor([suite.profile.walk.image]))[0]
x0 = bb0.normalize(raw0.to(suite.device))
player = walk_player(suite.profile, bb0)
hand = transfer_by_hand(tve0, head0, x0, player)
display(pd.Series(hand, name=f"{b0} · {t0} · linear head"))
assert hand["agrees"], "the transfer rule by hand does not match explain()"
exact0 = window_occlusion(bb0, head0, x0, torch.tensor([hand["class"]], device=x0.device), tve0.radius)
fig = map_pair_figure(raw0[0], tve0.explain(x0, head0)[0].cpu(), exact0[0].cpu(), player)
savefig(fig, suite.path("figures", "02_transfer_by_hand"))

# %% [markdown]
# ## Gallery: TVE maps (raw and pooled) per task and backbone, linear heads (the settings the profile runs)
# Each map is blended over its image, centred on its own median player (`tve_lib.gallery.display_map`): TVE's
# window quantity carries a large per-image offset, so red = players above the image's median, blue = below; the
# caption under each gallery says so. On the mosaic task the known relevant quadrant is outlined.

# %%
for t in suite.profile.tasks:
    ds = suite.task(t).test
    raw, labels, masks = ds.get(torch.arange(ev.n_gallery))
    maps = {}
    for b in [b for b, tb in suite.pairs() if tb == t]:
        bb, tve = suite.backbone(b), suite.explainer(b)
        x = bb.normalize(suite.task(t, b).test.get(torch.arange(ev.n_gallery))[0].to(suite.device))
        maps[f"{b}"] = tve.explain(x, heads[(b, t)]["linear"]).cpu()
        maps[f"{b} pooled"] = tve.variant(pool=True).explain(x, heads[(b, t)]["linear"]).cpu()
    fig = attribution_gallery(raw, maps, masks, titles=[ds.classes[i] for i in labels])
    fig.suptitle(f"TVE zero-shot maps · {t}", y=1.02)
    savefig(fig, suite.path("figures", f"02_gallery_{t}"))

# %% [markdown]
# ## Transfer error against the brute-force quantity

# %%
frames = []
for b, t in suite.pairs():
    frames.append(transfer_error(suite.explainer(b), heads[(b, t)], suite.task(t, b).test, ev.n_transfer,
                                 seed=SEED, backbone=b, task=t, masked_batch_size=ev.masked_batch_size))
err = pd.concat(frames, ignore_index=True)
write_csv(err, suite.path("tve", "transfer_error.csv"))
summary = transfer_summary(err, n_boot=ev.bootstrap, seed=SEED)  # medians with 95 % intervals over images
write_csv(summary, suite.path("tve", "transfer_error_summary.csv"))
display(summary[summary.rule == "whole_head"].pivot_table(index=["task", "head"], columns="backbone",
                                                          values="median_spearman"))

# %%
savefig(transfer_boxes(err), suite.path("figures", "02_transfer_error"))

# %%
display(Markdown(transfer_finding(summary)))

# %% [markdown]
# ## Which branch the error comes from
# Each window's attribution reads two predicted embeddings: `Φ⁺` (the window alone) and `Φ⁻` (the image
# without it). Replacing one of them by the exact embedding, which the brute-force reference computed anyway,
# leaves only the other branch's error: the branch whose exact replacement gains more is where the transfer
# error comes from, and where a better explainer has to improve.

# %%
g = sns.catplot(data=branch_table(summary), x="task", y="median Spearman", hue="map", col="head", row="backbone",
                kind="point", height=2.6, aspect=1.9, linestyles="none", dodge=0.3)
g.refline(y=SPEARMAN_OK, ls="--", c="gray")
savefig(g.figure, suite.path("figures", "02_transfer_branches"))
display(Markdown(branch_finding(summary)))

# %% [markdown]
# ## Whole head vs the official last-layer rule (MLP heads)
# Applying only the last Linear layer of an MLP head to `Φ` treats embeddings as if they were the hidden
# activations; the whole-head rule composes `h` correctly.

# %%
mlp = summary[summary["head"] == "mlp"].pivot_table(index=["backbone", "task"], columns="rule",
                                                    values="median_spearman")
display(mlp)
suite.write_run_json("tve", {"PROFILE": PROFILE, "SEED": SEED, "DEVICE": DEVICE, "notebook": "02_transfer"})
