# %% [markdown]
# # 09 · Your dataset: explain a new task with the pre-trained TVE explainer
#
# Copy this notebook and change **one parameter**: `TASK = "folder:/path/to/imagefolder"`, a folder with one
# sub-folder of images per class (split 70/30 into train and test by a fixed seed), or with `train/` and `test/`
# sub-folders that each hold one sub-folder per class. Images of any size and format that PIL reads are
# resized and centre-cropped to the profile's input size.
#
# What happens, and what does not:
# 1. a **head** (linear, or `HEAD = "mlp"`) is trained on the frozen backbone's embeddings of your training
#    images, cached under `results/<profile>/checkpoints`;
# 2. the backbone's **TVE explainer, pre-trained once on the upstream set (notebook 01), explains it as is**:
#    no explainer is trained on your data;
# 3. its maps are scored against **KernelSHAP** at the profile's budgets of model calls per image (and a
#    random map as the floor) with the suite's fidelity metrics, and TVE's agreement with KernelSHAP's maps
#    is measured;
# 4. a gallery of the maps is saved.
#
# With `TASK = ""` (as in `run_all.sh`) the notebook first writes a small ImageFolder itself, from held-out
# data the explainer never saw (`tve_lib.studies.yourdata.demo_imagefolder`: three classes of the profile's
# less-related domain, the handwritten digits in cpu/smoke), so this walkthrough is always tested.
#
# Results go to `results/<profile>/yourdata/` (`summary.csv`, `curves.csv`) and `figures/09_*`.
# The folder is checked once, up front: unreadable files (empty, truncated, not images) are skipped and listed
# in `results/<profile>/data/skipped_*.csv`, hidden folders such as `.ipynb_checkpoints/` are ignored, and a
# class without a readable image is an error naming it. Heads and embeddings are cached by the folder's
# **fingerprint** (every image's relative path, size and modification time): change, add or remove an image and
# they are recomputed; the same images at another path reuse them. In the CSVs the task is named
# `folder:<folder name>@<fingerprint>`; the full path is only in `yourdata/run.json`.

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False
TASK = ""
BACKBONE = "vit"
HEAD = "linear"

# %%
import time

import pandas as pd
import torch
from IPython.display import display

from tve_lib import Suite
from tve_lib.gallery import attribution_gallery, sample_grid
from tve_lib.heads import head_accuracy
from tve_lib.io import upsert_csv
from tve_lib.metrics import spearman, topk_overlap
from tve_lib.report.fidelity_plots import auc_bars, metric_table
from tve_lib.report.plots import savefig
from tve_lib.schema import CURVE_KEYS, SUMMARY_KEYS
from tve_lib.studies.fidelity import concat, evaluate_maps
from tve_lib.studies.yourdata import demo_imagefolder

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
ev = suite.profile.eval
task_name = TASK or "folder:" + str(demo_imagefolder(suite, suite.path("yourdata", "imagefolder")).resolve())
task = suite.task(task_name)
print(f"task {task.name}: classes {task.classes}; {len(task.train)} train and {len(task.test)} test images"
      + (f"; {len(task.skipped)} unreadable files skipped (data/skipped_*.csv)" if task.skipped else ""))

# %%
fig = sample_grid({"your data (test)": task.test}, n=6)
savefig(fig, suite.path("figures", "09_samples"))

# %% [markdown]
# ## 1 · A head on the frozen backbone
# The only training on your data. The explainer below works for any head trained on this backbone.

# %%
head = suite.head(BACKBONE, task_name, HEAD)
acc = pd.DataFrame([{"split": s, "accuracy": head_accuracy(head, *suite.embeddings(BACKBONE, task_name, s)),
                     "n_images": len(getattr(task, s))} for s in ("train", "test")])
display(acc)

# %% [markdown]
# ## 2 · Explain: TVE zero-shot, KernelSHAP, random
# All methods explain the class the model predicts on the full image, on the same test images: a seeded random
# sample of the test split, as many as the profile evaluates at its largest sampling budget. TVE costs one pass
# of its explainer; KernelSHAP costs its budget of model calls per image. The times below are one run each,
# first-call overheads included (notebook 04 measures throughput properly).

# %%
bb = suite.backbone(BACKBONE)
n = min(len(task.test), min(ev.budget_images))
idx = torch.randperm(len(task.test), generator=torch.Generator().manual_seed(SEED))[:n]
raw, labels, masks = task.test.get(idx)
x = bb.normalize(raw.to(suite.device))
explainers = {(m, 0): suite.make_explainer(m, BACKBONE) for m in ("tve", "random")}
explainers.update({("kernelshap", b): suite.make_explainer("kernelshap", BACKBONE, budget=b) for b in ev.budgets})
maps, seconds = {}, {}
for key, ex in explainers.items():
    t0 = time.perf_counter()
    maps[key] = ex.explain(x, head)
    seconds[key] = time.perf_counter() - t0
display(pd.DataFrame([{"method": m, "budget": b, "ms_per_image": 1000 * s / n} for (m, b), s in seconds.items()]))

# %% [markdown]
# ## 3 · Fidelity against KernelSHAP
# The suite's metrics (`tve_lib.metrics`; notebook 03 explains them): Fidelity⁺ AUC (↑) removes each map's
# top players, Fidelity⁻ AUC (↓) keeps only them, POS (↓) / NEG (↑) track the top-1 agreement, deletion (↓) /
# insertion (↑) the probability of the predicted class. Intervals are 95 % bootstrap intervals over images.

# %%
meta = {"backbone": BACKBONE, "task": task.name, "head": HEAD}  # portable: folder name @ fingerprint
scored = [evaluate_maps(bb, head, x, {m: a}, masks=masks, cfg=ev, budget=b, meta=meta, seed=SEED)
          for (m, b), a in maps.items()]
curves, summary = concat([c for c, _ in scored]), concat([s for _, s in scored])
upsert_csv(curves, suite.path("yourdata", "curves.csv"), CURVE_KEYS)
upsert_csv(summary, suite.path("yourdata", "summary.csv"), SUMMARY_KEYS)
display(metric_table(summary, ["fid_plus_auc", "fid_minus_auc", "pos_auc", "neg_auc", "insertion_auc",
                               "deletion_auc"], HEAD))
fig = auc_bars(summary, "fid_plus_auc", HEAD)
savefig(fig, suite.path("figures", "09_fid_plus_auc"))

# %% [markdown]
# ### Agreement with KernelSHAP's maps
# Spearman correlation and top-`eval.shapley_topk` overlap of each map with KernelSHAP at the largest budget, per image
# (KernelSHAP is itself an estimate: its two budgets' agreement shows how noisy it is at this budget).

# %%
ref = maps[("kernelshap", max(ev.budgets))]
agree = pd.DataFrame([{"method": f"{m}-{b}" if b else m, "median_spearman": spearman(a, ref).median().item(),
                       "mean_topk_overlap": topk_overlap(a, ref, ev.shapley_topk).mean().item()}
                      for (m, b), a in maps.items() if (m, b) != ("kernelshap", max(ev.budgets))])
display(agree)

# %% [markdown]
# ## 4 · Gallery

# %%
k = min(ev.n_gallery, n)
fig = attribution_gallery(raw[:k], {f"{m}-{b}" if b else m: a[:k].cpu() for (m, b), a in maps.items()},
                          None if masks is None else masks[:k], titles=[task.classes[i] for i in labels[:k]])
fig.suptitle(f"{BACKBONE} · {task.name}", y=1.02)
savefig(fig, suite.path("figures", "09_gallery"))
suite.write_run_json("yourdata", {"PROFILE": PROFILE, "SEED": SEED, "TASK": task_name, "BACKBONE": BACKBONE,
                                  "HEAD": HEAD, "notebook": "09_your_dataset"})
