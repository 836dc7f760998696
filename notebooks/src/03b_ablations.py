# %% [markdown]
# # 03b · Ablations: which choices make TVE's zero-shot maps faithful
#
# The paper's ablation figure, on the metrics of notebook 03 (same images, removal operator, ranking rule
# and bootstrap; `tve_lib.fidelity.evaluate_maps`). One factor changes at a time (`tve_lib.ablations`):
#
# * **window radius r** of the meta-attribution targets (each radius is a separately pre-trained explainer);
# * **transfer rule**: keep-only (`λ⁻ = 0`, what the official demo shows), remove-only (`λ⁺ = 0`), both;
# * **map**: raw, or average-pooled with kernel `2r+1` (the official demo's smoothed map);
# * **head**: the whole head (this suite) or only its last Linear layer (the official code; differs for MLP heads);
# * **trunks**: one shared trunk with two heads, or two independent trunks (the official shape);
# * **explainer depth** (half, reference, double);
# * **pre-training set size**: a fixed 25 % / 50 % / 100 % of the pre-training images, with proportionally
#   more epochs so that every variant takes the same number of optimiser steps (data, not compute, varies);
# * **pre-training budget**: the reduced budget every variant uses here against the profile's full one.
#
# **Compute note.** To fit the cpu budget, every pre-trained variant (and the reference it is compared with)
# is pre-trained with a reduced budget, `eval.ablation_epochs` epoch(s) of `eval.ablation_images` upstream
# images, and evaluated on the first `eval.ablation_n_images` evaluation images of each task; the
# "full profile" row is the explainer of notebooks 01–03. Ablations run on the backbones listed in
# `ABLATION_BACKBONES` (cpu: ViT only).

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False
ABLATION_BACKBONES = ["vit"]

# %%
import time

from IPython.display import display

from tve_lib import Suite
from tve_lib.ablations import ablation_variants, reference_config, run_ablations
from tve_lib.fidelity_plots import ablation_bars
from tve_lib.io import upsert_csv
from tve_lib.plots import savefig

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
ev = suite.profile.eval
ref = reference_config(suite.profile)
print(f"reference for the ablations: {ref.arch} trunk(s), depth {ref.depth}, {ref.epochs} epoch(s) of "
      f"{ref.n_images} images (profile: {suite.profile.tve.epochs} epochs of {suite.profile.tve.n_images}); "
      f"{ev.ablation_n_images} test images per task")

# %% [markdown]
# ## Pre-train and evaluate every variant

# %%
path = suite.path("fidelity", "ablations.csv")
t0 = time.time()
for b in ABLATION_BACKBONES:
    variants = ablation_variants(suite.profile, suite.backbone(b).grid)
    abl = run_ablations(suite, b, variants)
    # a backbone's ablation is rerun whole: replace all its rows (variant labels move with the reference)
    table = upsert_csv(abl, path, ["backbone", "seed"])
print(f"ablations in {time.time() - t0:.0f} s")

# %% [markdown]
# ## The ablation figure
# Fidelity⁺ AUC (↑) and Fidelity⁻ AUC (↓) of each variant, per task (mean of the linear and MLP heads); then
# agreement with exact Shapley values, and `transfer_spearman`: the mean per-image Spearman correlation of the
# variant's map with the exact window quantity it amortises (notebook 02's transfer error, first
# `eval.n_transfer` images). The last one isolates the amortisation error: the pre-training-set and budget
# rows show how far more pre-training moves it.

# %%
table = table[(table.seed == SEED) & table.backbone.isin(ABLATION_BACKBONES)]
for metric in ("fid_plus_auc", "fid_minus_auc", "shapley_spearman", "transfer_spearman"):
    fig = ablation_bars(table, metric)
    savefig(fig, suite.path("figures", f"03b_ablation_{metric}"))

# %% [markdown]
# ## All metrics, per variant (mean over tasks and heads)
# Pre-training seconds are those of this run (0 when the variant was cached).

# %%
wide = table.pivot_table(index=["backbone", "ablation", "variant"], columns="metric", values="value")
wide["pretrain_s"] = table.groupby(["backbone", "ablation", "variant"]).seconds.first()
display(wide.round(3))
suite.write_run_json("ablations", {"backbones": ABLATION_BACKBONES},
                     reference=ref.__dict__, n_variants=int(table.variant.nunique()))
