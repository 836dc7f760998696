# %% [markdown]
# # 08 · Explorer: step through the method on one image
#
# Pick a backbone, a task, a head (linear or MLP), a test image and a baseline. The explorer shows
# **TVE's zero-shot map next to the baseline's**, both computed live from the cached explainers (TVE from
# notebook 01's pre-training, baselines from `tve_lib.explainers`), and, for a **sparsity** `s`, the image
# with only the top `(1 − s)·G²` players of each map kept (the others set to the removal value, the dataset
# mean colour) with the probability of the predicted class this keeps. "p without" is the probability when
# those players are removed instead: the two numbers behind Fidelity⁻ and Fidelity⁺ at that sparsity.
#
# * `INTERACTIVE = True` (in JupyterLab): dropdowns for backbone, task, head, baseline and its budget of
#   model calls, and sliders for the image and the sparsity. Maps are cached, so moving the sparsity slider
#   only re-masks; a sampling baseline (KernelSHAP, LIME) takes a moment per new image.
# * `INTERACTIVE = False` (papermill, `run_all.sh`): the same code renders a static grid for the selection of
#   the parameters cell (every listed baseline × every sparsity of the profile) and saves it as
#   `figures/08_explorer`.
#
# Empty names in the parameters mean: the first backbone of the profile, the first task with known relevant
# regions (outlined in red), the first baseline that applies.

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False
BACKBONE = ""
TASK = ""
HEAD = "linear"
IMAGE = 0
BASELINES = ["occlusion", "kernelshap", "gradcam", "ig", "rollout", "random"]
SPARSITY = 0.5

# %%
from IPython.display import display

from tve_lib import Suite
from tve_lib.report.plots import savefig
from tve_lib.studies.explorer import Explorer

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
explorer = Explorer(suite, BASELINES)
sel = explorer.selection(BACKBONE, TASK, HEAD, IMAGE, sparsity=SPARSITY)
print(f"{sel}; baselines for {sel.backbone}: {explorer.methods(sel.backbone)}; sampling budget "
      f"{max(explorer.budgets)} model calls per image")

# %% [markdown]
# ## The explorer
# Rows: TVE, then the baselines. Columns: the image (known region in red), the map (red: players above the
# image's median player, blue: below; each map scaled by the 99th percentile of its |values|), then the masked image
# at each sparsity with the probability kept.

# %%
shown = explorer.render(sel, INTERACTIVE)
if INTERACTIVE:
    display(shown.box)
else:
    savefig(shown, suite.path("figures", "08_explorer"))

# %% [markdown]
# ## The numbers behind the grid
# The probability of the predicted class with only the top `(1 − s)` of each method's players kept (higher
# is better at a given `s`) and with them removed (lower is better). A map that ranks the players the model
# relies on keeps the probability high with few players and drops it fast when they are removed.

# %%
view = explorer.view(sel, ["tve", *explorer.methods(sel.backbone)], suite.profile.eval.sparsities)
print(f"predicted {view.predicted} (p = {view.p_full:.3f}), label {view.label}")
for r in view.rows:
    keep = " ".join(f"{p:.2f}" for p in r.p_keep)
    rem = " ".join(f"{p:.2f}" for p in r.p_remove)
    print(f"{r.method:>11}  keep: {keep}   |   remove: {rem}")
