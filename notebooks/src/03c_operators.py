# %% [markdown]
# # 03c · Do the verdicts survive another way of removing a player?
#
# Every metric of notebook 03 removes a player one way: its pixels set to 0 in normalised space, the dataset
# mean colour (and TVE's pre-training targets use the same operator). The evaluation literature warns that
# this choice can decide the result: pixel-flipping rankings of attribution methods change with the occlusion
# strategy (Blücher et al., arXiv 2401.06654), and masked inputs are out of distribution for the model
# (F-Fidelity, arXiv 2410.02970). Here notebook 03's maps are scored again with three **removal operators**
# (`tve_lib.operators`), in the metrics only:
#
# * `mean`: the default, the removal value (the dataset mean colour);
# * `blur`: each removed patch takes the pixels of a Gaussian-blurred copy of the image (sigma: one patch, a
#   suite choice: a patch's detail is gone, its colour kept);
# * `other`: each removed patch takes the same patch of another image of the same test split, chosen per image
#   by seed (never the image itself).
#
# The maps are notebook 03's, made with the default operator (read from its cache, computed when absent); TVE
# stays pre-trained with the default operator, so how its maps fare under the others is part of the finding.
# Images: the first `operators.n_images` of notebook 03's evaluation images per task (a reduced count).
#
# Writes `fidelity/operators.csv` (`backbone, task, head, method, budget, operator, metric, value, n_images,
# seed`), the per-image values in `fidelity/operators_per_image.csv`, the Kendall τ between the method rankings
# of each pair of operators in `fidelity/operator_agreement.csv` (`backbone, task, head, metric, operator_a,
# operator_b, kendall_tau, n_methods`), and shows the verdicts of notebook 03's fidelity claims under each operator
# (notebook 07 recomputes them from these tables for the report).

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False
METHODS = ["random", "ig", "gradcam", "rollout", "occlusion", "kernelshap", "lime", "fastshap", "tve"]
BACKBONES = []  # empty: every backbone of the profile
TASKS = []  # empty: every task of the profile

# %%
import time

import pandas as pd
from IPython.display import Markdown, display

from tve_lib import Suite
from tve_lib.io import upsert_csv
from tve_lib.report.claims import OPERATOR_RULES
from tve_lib.report.operators import (
    operator_agreement,
    operator_figure,
    operator_finding,
    operator_robustness,
    operator_verdicts,
)
from tve_lib.report.plots import savefig
from tve_lib.schema import AGREEMENT_KEYS, OPERATOR_KEYS, OPERATORS_PER_IMAGE_KEYS
from tve_lib.studies.operators import operator_rows, run_operator_task

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
cfg = suite.profile.operators
backbones = BACKBONES or suite.backbone_names
tasks = TASKS or list(suite.profile.tasks)
print(f"operators {cfg.names} on the first {cfg.n_images} evaluation images per task; 'other' draws from "
      f"{cfg.pool_size} test images; blur sigma {cfg.blur_sigma or 'one patch'}")

# %% [markdown]
# ## Scoring notebook 03's maps under each operator

# %%
paths = {name: suite.path("fidelity", f"{name}.csv") for name in ("operators", "operators_per_image",
                                                                  "operator_agreement")}
t0 = time.time()
for b, t in suite.pairs(backbones, tasks):
    per = run_operator_task(suite, b, t, METHODS)
    upsert_csv(per, paths["operators_per_image"], OPERATORS_PER_IMAGE_KEYS)
    upsert_csv(operator_rows(per), paths["operators"], OPERATOR_KEYS)
print(f"operator study in {time.time() - t0:.0f} s")

ops = pd.read_csv(paths["operators"])
ops = ops[(ops.seed == SEED) & ops.backbone.isin(backbones) & ops.task.isin(tasks) & ops.method.isin(METHODS)]
per_image = pd.read_csv(paths["operators_per_image"])
per_image = per_image[(per_image.seed == SEED) & per_image.backbone.isin(backbones) & per_image.task.isin(tasks)
                      & per_image.method.isin(METHODS)]
display(ops.pivot_table(index=["metric", "method", "budget"], columns="operator", values="value").round(3))

# %% [markdown]
# ## Do the rankings of the methods agree?
#
# Per backbone × task × head and metric, the methods are ranked by their mean AUC under each operator and the
# rankings compared by Kendall τ (1: the same order; 0: unrelated). A sampling method at its large budget runs on
# fewer images and is left out of the ranking (`n_methods` counts the methods ranked).

# %%
agreement = operator_agreement(ops)
upsert_csv(agreement.assign(seed=SEED), paths["operator_agreement"], AGREEMENT_KEYS + ["seed"])
display(agreement.pivot_table(index=["operator_a", "operator_b"], columns="metric", values="kendall_tau",
                              aggfunc="median").round(2))
for head in ("linear", "mlp"):
    fig = operator_figure(ops, agreement, head)
    savefig(fig, suite.path("figures", f"03c_operators_{head}"))

# %% [markdown]
# ## Do the fidelity claims hold under every operator?
#
# Notebook 03's fidelity claims (`tve_lib.report.claims`: competitive fidelity against the baselines; no
# training on downstream data needed) decided by the same rules on each operator's rows. The claims table
# (notebook 07) carries the result in its `operators` column.

# %%
verdicts = operator_verdicts(per_image, OPERATOR_RULES)
display(verdicts.pivot_table(index="id", columns="operator", values="verdict", aggfunc="first"))
robust = operator_robustness(verdicts)
display(Markdown(operator_finding(agreement, robust, cfg.n_images)))
