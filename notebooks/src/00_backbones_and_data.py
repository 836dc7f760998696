# %% [markdown]
# # 00 · Backbones and data
#
# Every later notebook explains models of the form `f = h ∘ g`: a **frozen backbone** `g` (ViT, DeiT,
# Swin from timm) and a downstream **head** `h` (a linear probe or a 2-layer MLP) trained on the frozen
# embeddings. This notebook shows the data of the profile, trains (or loads) the backbones and a linear and an
# MLP head per backbone × task the profile runs (`Suite.pairs`), and writes `results/<profile>/accuracy.csv`.
#
# * **upstream set**: used only to train the backbones (cpu/smoke), to pre-train the TVE explainers and as the
#   explainability vector's source task (notebook 06), never for downstream evaluation (cpu: Fashion-MNIST train,
#   from Debian's `dataset-fashion-mnist`);
# * **three downstream tasks** mirroring the paper's Cats-vs-dogs / CIFAR-10 / Imagenette: a binary task
#   on held-out Fashion-MNIST (Sneaker vs Ankle boot), scikit-learn's handwritten digits (a domain the
#   explainer never sees), and 2×2 mosaics whose label is decided by one known quadrant (outlined in red),
#   which gives localisation metrics a ground truth.
#
# The explanation grid is derived from each model's token strides (`tve_lib.token_grids.derive_grid`), never
# hard-coded; all sizes come from the profile (`tve_lib.config`).

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
from IPython.display import Markdown, display

from tve_lib import Suite
from tve_lib.gallery import sample_grid
from tve_lib.io import write_csv
from tve_lib.report.findings import accuracy_finding
from tve_lib.report.plots import accuracy_bars, savefig

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
prof = suite.profile
print(f"profile {prof.name}: {prof.img_size} px, backbones {suite.backbone_names}, tasks {list(prof.tasks)}, "
      f"device {suite.device}")

# %% [markdown]
# ## The data

# %%
sets = {"upstream (" + prof.upstream + ")": suite.upstream[0]}
sets.update({t: suite.task(t).test for t in prof.tasks})
fig = sample_grid(sets, n=6)
savefig(fig, suite.path("figures", "00_samples"))
sizes = pd.DataFrame([{"set": k, "split": s, "n_images": len(getattr(suite.task(k), s))}
                      for k in prof.tasks for s in ("train", "test")]
                     + [{"set": prof.upstream, "split": s, "n_images": len(d)}
                        for s, d in zip(("train", "val"), suite.upstream)])
display(sizes)

# %% [markdown]
# ## The backbones
# Trained once on the upstream set (cpu/smoke) or loaded from local pretrained weights (paper), then
# cached under `results/<profile>/checkpoints` and reused by every notebook.

# %%
arch = pd.DataFrame([{"backbone": b, "timm": prof.backbone(b).timm_name, "grid": suite.backbone(b).grid,
                      "patch_px": suite.backbone(b).patch, "embed_dim": suite.backbone(b).embed_dim,
                      "prefix_tokens": suite.backbone(b).num_prefix_tokens,
                      "params": sum(p.numel() for p in suite.backbone(b).parameters())}
                     for b in suite.backbone_names])
display(arch)
hist = pd.DataFrame([{"backbone": b, **h} for b in suite.backbone_names for h in suite.backbone_history(b)])
display(hist)

# %% [markdown]
# ## Heads and accuracy
# Each head must classify (targets `BACKBONE_ACCURACY_OK` for the backbones on the upstream test split,
# `HEAD_ACCURACY_OK` for the heads, in `tve_lib.report.claims`; the finding below states both): a head that cannot
# classify gives explanations of nothing. Heads are trained for the settings the profile runs: every
# backbone × task (the paper dry run pairs backbone i with task i, `Suite.pairs`).

# %%
acc = suite.accuracy_table()
write_csv(acc, suite.path("accuracy.csv"))
display(acc[acc.split == "test"].pivot_table(index=["task", "head"], columns="backbone", values="accuracy"))
fig = accuracy_bars(acc)
savefig(fig, suite.path("figures", "00_accuracy"))
display(Markdown(accuracy_finding(acc)))
