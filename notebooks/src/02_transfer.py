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
# and the top-10 % overlap with TVE's map (cpu target: median Spearman ≥ 0.85 everywhere, including the
# digits task, a domain the explainer never saw).

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
from IPython.display import display

from tve_lib import Suite
from tve_lib.io import write_csv
from tve_lib.plots import attribution_gallery, savefig
from tve_lib.transfer import transfer_error

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
ev = suite.profile.eval
heads = {(b, t): {k: suite.head(b, t, k) for k in ("linear", "mlp")}
         for b in suite.backbone_names for t in suite.profile.tasks}

# %% [markdown]
# ## Gallery: TVE maps (raw and pooled) per task and backbone, linear heads
# Colours: blue = evidence against the predicted class, red = evidence for it. On the mosaic task the known
# relevant quadrant is outlined.

# %%
for t in suite.profile.tasks:
    ds = suite.task(t).test
    raw, labels, masks = ds.get(torch.arange(ev.n_gallery))
    maps = {}
    for b in suite.backbone_names:
        bb, tve = suite.backbone(b), suite.explainer(b)
        x = bb.normalize(raw.to(suite.device))
        maps[f"{b}"] = tve.explain(x, heads[(b, t)]["linear"]).cpu()
        maps[f"{b} pooled"] = tve.variant(pool=True).explain(x, heads[(b, t)]["linear"]).cpu()
    fig = attribution_gallery(raw, maps, masks, titles=[ds.classes[i] for i in labels])
    fig.suptitle(f"TVE zero-shot maps · {t}", y=1.02)
    savefig(fig, suite.path("figures", f"02_gallery_{t}"))

# %% [markdown]
# ## Transfer error against the brute-force quantity

# %%
frames = []
for b in suite.backbone_names:
    for t in suite.profile.tasks:
        frames.append(transfer_error(suite.explainer(b), heads[(b, t)], suite.task(t).test, ev.n_transfer,
                                     seed=SEED, backbone=b, task=t))
err = pd.concat(frames, ignore_index=True)
write_csv(err, suite.path("tve", "transfer_error.csv"))
summary = (err.groupby(["rule", "backbone", "task", "head"])
           .agg(median_spearman=("spearman", "median"), mean_topk_overlap=("topk_overlap", "mean"),
                n_images=("image_id", "nunique")).reset_index())
write_csv(summary, suite.path("tve", "transfer_error_summary.csv"))
display(summary[summary.rule == "whole_head"].pivot_table(index=["task", "head"], columns="backbone",
                                                          values="median_spearman"))

# %%
g = sns.catplot(data=err, x="task", y="spearman", hue="backbone", col="head", row="rule", kind="box",
                height=3, aspect=1.4, fliersize=1)
g.refline(y=0.85, ls="--", c="gray")
savefig(g.figure, suite.path("figures", "02_transfer_error"))

# %% [markdown]
# **Finding (cpu run of 2026-11-30, two-trunk explainer, 100 images per task).** The whole-head medians range
# from 0.22 to 0.71: the 0.85 target holds in none of the 18 backbone × task × head settings. By task: binary
# 0.46–0.71, digits (never seen by the explainer) 0.49–0.67, mosaics 0.22–0.45, so the unseen *domain* costs
# less than the unseen *layout* (four items per image, where pre-training saw one). The error is an
# amortisation error that shrinks with pre-training compute, not with data: in notebook 03b (ViT, mean over
# tasks and heads) the transfer Spearman is 0.29 after 63 optimiser steps and 0.49 after the profile's 470,
# while 25 %, 50 % or 100 % of the images at a fixed 63 steps give 0.29, 0.30, 0.29; two trunks beat one shared
# trunk (0.29 vs 0.11 at 63 steps), and a deeper trunk does not help at this budget. The keep branch is the
# harder one: its held-out MSE is 26–42 % of the trivial predictor's, against 9–18 % for the remove branch
# (notebook 01). A log-linear extrapolation of the two budgets (+0.07 per doubling of the steps) puts 0.85 at
# roughly 40× the cpu pre-training (about 18,000 steps, ~2 h per backbone on 2 cores): an extrapolation, not a
# measurement, and far beyond this profile's 60-minute budget.

# %% [markdown]
# ## Whole head vs the official last-layer rule (MLP heads)
# Applying only the last Linear layer of an MLP head to `Φ` treats embeddings as if they were the hidden
# activations; the whole-head rule composes `h` correctly.

# %%
mlp = summary[summary["head"] == "mlp"].pivot_table(index=["backbone", "task"], columns="rule",
                                                    values="median_spearman")
display(mlp)
suite.write_run_json("tve", {"PROFILE": PROFILE, "SEED": SEED, "DEVICE": DEVICE, "notebook": "02_transfer"})
