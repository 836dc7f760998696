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
# Each step draws `K` window centres per image, computes both targets with the frozen backbone (no grad)
# and minimises the two mean squared errors. The explainer never sees a label or a head: that is what makes
# it transferable to any task on the same backbone (notebook 02).
#
# **Suite choices** (configurable in `tve_lib.config.TVEConfig`): the profile's explainer is a ViT trunk on
# the backbone's player grid, initialised from the backbone's weights where names and shapes agree, with
# token/channel-mixing heads; `arch="two"` (the official two independent trunks) in every profile, or
# `arch="shared"` (one trunk, two heads: cheaper; notebook 03b compares them, and two trunks win clearly); `K` windows per image (`K=1` is the official setting); radius
# `r = round(2G/14)` (the official `r=2` at 14×14). Multi-GPU: `torchrun --nproc_per_node=N -m
# tve_lib.distributed --profile paper` runs this same loop under DistributedDataParallel.

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

from IPython.display import display

from tve_lib import Suite
from tve_lib.io import write_csv
from tve_lib.plots import loss_curves, savefig
from tve_lib.transfer import pretrain_table, trivial_ratio

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
cfg = suite.profile.tve
display(dataclasses.asdict(cfg))
print({b: {"grid": suite.backbone(b).grid, "radius": suite.tve_radius(b)} for b in suite.backbone_names})

# %% [markdown]
# ## Pre-train (or load) the three explainers
# Checkpoints are written atomically after every epoch; an interrupted run resumes from the last one.

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
# explainer captures (cpu target ≤ 0.3).

# %%
ratios = trivial_ratio(pre)
display(ratios)
write_csv(ratios, suite.path("tve", "pretrain_ratio.csv"))
suite.write_run_json("tve", {"PROFILE": PROFILE, "SEED": SEED, "DEVICE": DEVICE, "notebook": "01_pretrain_tve"})
