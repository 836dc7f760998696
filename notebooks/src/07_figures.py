# %% [markdown]
# # 07 · Every figure from the CSVs, and which claims reproduce
#
# This notebook loads **no model**: it reads the tidy CSVs that notebooks 00–06 wrote under
# `results/<profile>/` and rebuilds every figure from them, so it is quick and
# `./run_all.sh --figures-only` reruns just this notebook after any change to a figure. Each figure is saved
# as PNG and PDF under `results/<profile>/figures/` with a stable name (`fig1_tve_overview`,
# `fig2a_fid_plus_auc`, …), and `results/<profile>/REPORT.md` embeds them all beside the claims table.
#
# A figure whose CSV does not exist yet (a notebook that has not run) is skipped with a note; the report
# lists what was not generated and why.
#
# | figure | what it shows | from |
# |---|---|---|
# | 1 | TVE's Fidelity⁺ AUC per architecture × dataset; its ratio to the strongest method | `fidelity/per_image.csv` |
# | 2a–c | Fidelity⁺ / Fidelity⁻ AUC per method and dataset; their curves | `fidelity/summary.csv`, `curves.csv` |
# | 3 | task-specific training (FastSHAP-style) against epochs vs TVE zero-shot | `fidelity/amortized.csv` |
# | 4 | ablations of TVE | `fidelity/ablations.csv` |
# | 5, 5b | throughput per architecture; cost against the number of tasks | `throughput/throughput.csv` |
# | 6 | explanation galleries (tiled from the notebooks' gallery PNGs) | `figures/03_gallery_*.png` |
# | 7, 7b | LTX vs pLTX, TVE, KernelSHAP; LTX's fine-tuning steps | `fidelity/summary.csv` (`selection` set), |
# |  |  | `ltx/trajectory.csv` |
# | 8a, 8b | explainability vector against λ, and at λ* | `xvec/lambda_sweep.csv`, `xvec/comparison.csv` |
# | A–C | transfer error, accuracy of the explained models, TVE pre-training | `tve/*.csv`, `accuracy.csv` |

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False

# %%
from IPython.display import Markdown, display

from tve_lib import Suite
from tve_lib.report.book import FigureBook, markdown_table
from tve_lib.report.claims import claims_table

suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
book = FigureBook(suite.root)
print(f"results: {suite.root}; tables found: {', '.join(book.tables) or 'none'}")

# %% [markdown]
# ## Figure 1 · TVE's fidelity per architecture × dataset
# Left: Fidelity⁺ AUC of TVE's zero-shot maps (linear heads). Right: TVE's value over that of the strongest
# other method on that backbone and task, both averaged over the same images (a sampling method at a large
# budget runs on a subset of the images), with that method's name; ≥ `COMPETITIVE` (`tve_lib.report.claims`)
# counts as competitive.

# %%
book.render("fig1_tve_overview")

# %% [markdown]
# ## Figure 2 · Fidelity⁺ / Fidelity⁻ AUC per method and dataset
# Fidelity⁺ (higher is better) removes the top-ranked players, Fidelity⁻ (lower is better) keeps only them;
# bars carry 95 % bootstrap intervals over images, TVE in red.

# %%
book.render("fig2a_fid_plus_auc")

# %%
book.render("fig2b_fid_minus_auc")

# %%
book.render("fig2c_fidelity_curves")

# %% [markdown]
# ## Figure 3 · What task-specific training buys over transfer
# The amortised FastSHAP-style explainer is trained on each task; TVE (dashed) never saw the task.

# %%
book.render("fig3_task_training_vs_zero_shot")

# %% [markdown]
# ## Figure 4 · Ablations

# %%
book.render("fig4_ablations")

# %% [markdown]
# ## Figure 5 · Throughput per architecture, and task scaling
# `inference` is the backbone's own forward pass: no explainer that needs it can be faster.

# %%
book.render("fig5_throughput")

# %%
book.render("fig5b_task_scaling")

# %% [markdown]
# ## Figure 6 · Explanation galleries

# %%
book.render("fig6_galleries")

# %% [markdown]
# ## Figure 7 · LTX
# Hatched bars: LTX with the official step selection, which peeks at the evaluation metric with the true
# label; it is shown, never ranked.

# %%
book.render("fig7_ltx")

# %%
book.render("fig7b_ltx_finetuning")

# %% [markdown]
# ## Figure 8 · The explainability vector

# %%
book.render("fig8a_xvec_lambda")

# %%
book.render("fig8b_xvec_comparison")

# %% [markdown]
# ## Supporting figures: transfer error, accuracy, pre-training

# %%
book.render("figA_transfer_error")

# %%
book.render("figB_accuracy")

# %%
book.render("figC_pretrain")

# %% [markdown]
# ## Which claims of the seed papers reproduce here
# Every verdict is decided by the rule in its row, applied to the numbers shown (the thresholds are
# constants in `tve_lib/report/claims.py`): a rule that counts settings (backbone × task × head, or device × size ×
# backbone × batch size) says **reproduces** when all of them pass, **partly** when at least half do,
# **does not reproduce** otherwise; **not measured** means the CSV it needs is missing. The verdicts are
# about this run's profile: small models and few images in `smoke` and `cpu`, so read them with the
# `n_images` of the CSVs in mind.

# %%
claims = claims_table(book.tables, suite.profile)
display(Markdown(markdown_table(claims, ["method", "claim", "verdict", "evidence"])))
print(claims.verdict.value_counts().to_string())

# %% [markdown]
# ## The report
# `REPORT.md` embeds every figure rendered above, the claims table (also `claims.csv`), links to every gallery
# the notebooks saved, and the list of figures that could not be built.

# %%
report = book.write_report(claims)
print(f"wrote {report} with {len(book.rendered)} figures; skipped: {', '.join(book.skipped) or 'none'}")
