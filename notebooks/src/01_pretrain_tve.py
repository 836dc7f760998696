# %% [markdown]
# # 01 · TVE meta-attribution pre-training
#
# TVE (Transferable Vision Explainer, ICML 2024; arXiv 2312.15359) pre-trains **one explainer per
# backbone** on unlabelled upstream images. For every player (pixel patch) `i` it predicts, in one forward
# pass, two backbone embeddings:
#
# * `Φ⁺_i(x) ≈ g(x ⊙ W_i)`: only the window `W_i` (Chebyshev radius `r` around `i`) visible;
# * `Φ⁻_i(x) ≈ g(x ⊙ (1 − W_i))`: the window occluded (removed pixels → 0 in normalised space, the mean
#   colour: the suite's single removal operator).
#
# The backbone is frozen, so both targets are a fixed function of the image. With the **dense** sampler (the
# cpu default) every window of every pre-training image supervises each step: the `2·G²` target embeddings
# per image are computed once into a target store (`results/<profile>/checkpoints/targets_*`, float16 shards
# written atomically, keyed on the backbone's weights, the radius and the images; an interrupted build
# resumes) and reused over many epochs. The **online** sampler (the official one, and the `paper` profile's,
# where ImageNet is too large to store) draws `K` window centres per image per step and computes their
# targets on the fly. One training loop serves both (`tve_lib.explainers.tve_train`), minimising the two mean squared
# errors. The explainer never sees a label or a head: that is what makes it transferable to any task on the
# same backbone (notebook 02).
#
# **Suite choices** (configurable in `tve_lib.config.TVEConfig`, compared in notebook 03b, specified in
# `docs/method.md`): the explainer shape (`arch`): `"tapped_global"` (the default), a few transformer blocks on the
# frozen backbone's own last token maps (timm's `forward_intermediates`, resized to the player grid) plus each
# player's pixels, and one more token, the full-image embedding `g(x)`, so that explaining costs one backbone
# pass plus the explainer's blocks (measured against inference in notebook 04); `"tapped"`, the same without
# `g(x)`; or `"two"` independent ViT trunks on
# the player grid (the official shape), or one `"shared"` trunk; a loss that weights the within-image part of
# the squared error (`centred_weight`; 1 is the plain MSE); upstream augmentation by composites of half-size
# upstream images, zooms and generated letters, never a downstream image (`augment`); radius `r = round(2G/14)`
# (the official `r=2` at 14×14). Multi-GPU: `torchrun
# --nproc_per_node=N -m tve_lib.studies.distributed --profile paper` runs this same loop under DistributedDataParallel.

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False

# %%
import dataclasses

from IPython.display import Markdown, display

from tve_lib import Suite
from tve_lib.io import write_csv
from tve_lib.report.findings import pretrain_finding
from tve_lib.report.plots import loss_curves, savefig
from tve_lib.studies.transfer import pretrain_table, trivial_ratio
from tve_lib.studies.walkthrough import (
    Walkthrough,
    WalkthroughWidgets,
    live_loss_figure,
    live_pretraining,
    window_figure,
)

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
cfg = suite.profile.tve
display(dataclasses.asdict(cfg))
print({b: {"grid": suite.backbone(b).grid, "radius": suite.tve_radius(b)} for b in suite.backbone_names})

# %% [markdown]
# ## Walkthrough: one image, one window
# One upstream validation image of the first backbone with its `G×G` player grid, the window `W_i` (radius `r`)
# around player `i`, and the two inputs the backbone sees: `x ⊙ W_i` and `x ⊙ (1 − W_i)`, removed players at
# the removal value (0 in normalised space: the dataset's mean colour, as drawn). Their embeddings are the two
# targets; the bars compare them with what a fresh explainer (the pre-trained one's initialisation) and the
# pre-trained explainer (the next section's, loaded or trained now) predict for player `i`. With
# `INTERACTIVE=True`, sliders for `i` and `r` redraw the panels (the explainers are scored only at their own `r`).

# %%
walk = Walkthrough(suite, suite.backbone_names[0])
view = walk.window(walk.player)
savefig(window_figure(view), suite.path("figures", "01_walkthrough_window"))
display(view.scores.round(4))
if INTERACTIVE:
    display(WalkthroughWidgets(walk, walk.player).box)

# %% [markdown]
# A few live optimiser steps of a fresh explainer on a handful of upstream images (every window of each unless
# `profile.walk.windows` draws fewer, as the paper dry run does; targets computed on the fly; `profile.walk` sets the
# sizes), through the same training loop as below: the loss falls.

# %%
live = live_pretraining(suite, suite.backbone_names[0])
savefig(live_loss_figure(live), suite.path("figures", "01_walkthrough_live"))
display(live.iloc[[0, -1]].round(4))

# %% [markdown]
# ## Pre-train (or load) the three explainers
# Checkpoints are written atomically after every epoch; an interrupted run resumes from the last one.
# `seconds` counts training plus what the stored targets of these images cost (`target_seconds`), also when
# an earlier run built them.

# %%
explainers = {b: suite.explainer(b) for b in suite.backbone_names}
pre = pretrain_table({b: suite.tve_history(b) for b in suite.backbone_names})
write_csv(pre, suite.path("tve", "pretrain.csv"))
display(pre)

# %% [markdown]
# ## Loss curves
# Train loss is the running mean over each epoch; held-out loss is measured on a fixed probe of upstream
# validation images with fixed window centres.

# %%
fig = loss_curves(pre)
savefig(fig, suite.path("figures", "01_pretrain_loss"))

# %% [markdown]
# ## Against the trivial predictor
# The trivial predictor always outputs the mean target embedding; its MSE is the targets' variance. The
# ratio (held-out MSE / trivial MSE, both branches pooled) says how much of the targets' variation the
# explainer captures. The finding below is rendered from this run's tables.

# %%
ratios = trivial_ratio(pre)
display(ratios)
write_csv(ratios, suite.path("tve", "pretrain_ratio.csv"))
display(Markdown(pretrain_finding(pre, ratios)))
suite.write_run_json("tve", {"PROFILE": PROFILE, "SEED": SEED, "DEVICE": DEVICE, "notebook": "01_pretrain_tve"})
