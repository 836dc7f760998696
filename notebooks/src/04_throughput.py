# %% [markdown]
# # 04 · Throughput: explanations per second across architectures and methods
#
# **The question:** what does an explanation cost per image, and how does that cost grow with the number of
# downstream tasks? Users pick an explainer by its cost at a given quality (notebook 03 gives the quality);
# the paper's Figure 5 compares explanation throughput across architectures.
#
# **What is timed** (`tve_lib.studies.throughput`): every registered explainer (`tve_lib.explainers.EXPLAINERS`: random,
# Integrated Gradients, Grad-CAM, attention rollout, window occlusion, KernelSHAP and LIME at two budgets of
# model calls per image, the amortised task-specific explainer `fastshap`, and TVE in every shape of `bench.tve_archs`
# (the profile's own first; the `tve_arch` column)) on each backbone, at every batch size of the profile. Each
# explanation **includes the forward passes it needs**: the prediction that picks the explained class is part
# of every timed call. The **reference** is the backbone's own inference `h(g(x))` at the same batch size;
# `ratio_to_inference` is every method's images/s over it.
#
# **How** (`tve_lib.timing.time_call`): warm-up runs, then `bench.repeats` timed repeats (fewer at paper size on CPU),
# the median and the inter-quartile range; `torch.cuda.synchronize` around every timer on GPU; threads, device and dtype
# recorded in every row. Two sections:
# * `size = profile`: the profile's trained backbones, their linear heads of the profile's tasks, test images;
# * `size = paper`: ViT-B/16, DeiT-B and Swin-B at 224 px with **random weights** (throughput needs no
#   trained weights), the paper profile's explainer sizes, batch sizes and repeats reduced on CPU.
#
# **Estimated rows.** KernelSHAP at its largest budget at ViT-B size is that many ViT-B forwards per image, far
# beyond a CPU's time budget. Rather than drop such rows, a row whose measurement is predicted to exceed the profile's
# cap (`bench.max_measure_s`, warm-up included), or that comes after its backbone's share of the section's time budget,
# is **estimated** and says how (`estimated`, `basis`): from the per-image time measured at a smaller batch size, from
# one untimed run, or, for methods with many model calls, from a *stand-in run*: the explainer runs once with the
# backbone swapped for a near-free linear map, which gives its exact model-call count and its own time; the estimate is
# its own time plus the count times the measured inference time per image (×`tve_lib.timing.GRAD_FACTOR` for calls with
# a backward pass). Never compare estimated rows with the same care as measured ones.
#
# **Task scaling:** the same images explained for 1 to `bench.n_tasks` downstream heads. TVE runs ψ once and only
# applies each head (`explain_tasks`); the perturbation methods also share their backbone calls across heads
# (the backbone is frozen, so `g(masked x)` does not depend on the task); gradient methods back-propagate per
# head, and the amortised explainer is trained per task and head, so it runs once per task.
#
# **Targets** (ratios within one run; the thresholds are `tve_lib.report.claims.TARGETS`, and every row of the
# checks table below carries its own): TVE's throughput over KernelSHAP's at its largest budget, on every
# architecture; TVE over the backbone's inference (`tve_ratio_to_inference`: TVE costs a few forward
# passes); TVE's cost for several tasks over one; KernelSHAP's time over its model calls alone.

# %% tags=["parameters"]
PROFILE = "cpu"
SEED = 0
DEVICE = "auto"
DATA_DIR = ""
WEIGHTS_DIR = ""
RESULTS_DIR = "results"
INTERACTIVE = False
METHODS = []  # empty: every registered explainer
BACKBONES = []  # empty: every backbone of each section
THREADS = 0  # CPU threads; 0: torch's default (on a shared machine, the number of idle cores)

# %%
import time

import pandas as pd
import torch
from IPython.display import Markdown, display

from tve_lib import Suite
from tve_lib.io import device_info, write_csv
from tve_lib.report import claims
from tve_lib.report import throughput as report
from tve_lib.report.plots import savefig
from tve_lib.schema import method_label
from tve_lib.studies import loading
from tve_lib.studies import throughput as bench
from tve_lib.studies.throughput_runs import run_plan

torch.set_num_threads(THREADS or torch.get_num_threads())
suite = Suite(PROFILE, SEED, DEVICE, DATA_DIR, WEIGHTS_DIR, RESULTS_DIR)
cfg = suite.profile.bench
plans = bench.plans(suite.profile, suite.device)
print(f"profile {suite.profile.name} on {device_info(suite.device)}")
display(pd.DataFrame([{k: v for k, v in vars(p).items() if k != "profile"} for p in plans]))

# %% [markdown]
# ## Profile size
# The suite's backbones (cached by notebook 00) and their linear heads; untrained TVE and amortised
# explainers of the profile's sizes (weights do not change the cost).

# %%
t0 = time.time()
results = {plans[0].size: run_plan(suite, plans[0], METHODS or None, BACKBONES or None)}
print(f"profile-size section: {time.time() - t0:.0f} s")

# %% [markdown]
# ## Paper size
# ViT-B/16, DeiT-B and Swin-B at 224 px with random weights, one at a time, with the paper profile's explainer
# sizes (the two-trunk TVE is two ViT-B trunks, the official shape). Skipped when the profile is the paper
# profile (its own section already is paper size).

# %%
t0 = time.time()
for plan in plans[1:]:
    results[plan.size] = run_plan(suite, plan, METHODS or None, BACKBONES or None)
print(f"paper-size section: {time.time() - t0:.0f} s" if len(plans) > 1 else "no paper-size section")

# %% [markdown]
# ## The table
# `throughput/throughput.csv` (one row per device, backbone, size, method, budget, TVE variant, batch size and
# number of tasks; other notebooks add their methods' rows with `bench.append_throughput`). Below: images/s at
# each section's largest batch size, one task; `*` marks an estimated value.

# %%
throughput = pd.concat([r.throughput for r in results.values()], ignore_index=True)
overhead = pd.concat([r.overhead for r in results.values()], ignore_index=True)
skipped = pd.concat([r.skipped for r in results.values()], ignore_index=True)
bench.append_throughput(throughput, suite.path("throughput", "throughput.csv"))
write_csv(overhead, suite.path("throughput", "overhead.csv"))
top = throughput[(throughput.n_tasks == 1)
                 & (throughput.batch_size == throughput.groupby("size").batch_size.transform("max"))].copy()
top["label"] = [method_label(m, b, a) for m, b, a in zip(top.method, top.budget, top.tve_arch)]
top["value"] = [f"{v:.3g}{'*' if e else ''}" for v, e in zip(top.images_per_s, top.estimated)]
display(top.pivot_table(index="label", columns=["size", "backbone"], values="value", aggfunc="first"))
top["ratio"] = [f"{v:.3g}{'*' if e else ''}" for v, e in zip(top.ratio_to_inference, top.estimated)]
display(top.pivot_table(index="label", columns=["size", "backbone"], values="ratio", aggfunc="first"))
if len(skipped):
    display(skipped)

# %% [markdown]
# ## Figure 5: explanations per second
# Log scale, each section's largest batch size; `(est.)` marks estimated bars. Then images/s against batch
# size (× and dashes: estimated).

# %%
fig = report.throughput_bars(throughput)
savefig(fig, suite.path("figures", "04_throughput"))

# %%
fig = report.batch_scaling(throughput)
savefig(fig, suite.path("figures", "04_batch_scaling"))

# %% [markdown]
# ## Task scaling
# Cost of explaining the same images for n tasks over the cost for one. Dashed: TVE's target
# (`TARGETS["tve_tasks_cost"]`, printed below); dotted:
# linear growth (a method that re-runs per task).

# %%
fig = report.task_scaling(throughput)
savefig(fig, suite.path("figures", "04_task_scaling"))
print(f"TVE's target: n tasks cost <= {claims.TARGETS['tve_tasks_cost']:g}x one task")
ts = throughput[throughput.groupby(["backbone", "size", "method", "budget", "tve_arch"]).n_tasks.transform("max") > 1]
display(ts.pivot_table(index=["size", "method", "budget", "tve_arch"], columns=["backbone", "n_tasks"],
                       values="ms_per_image").round(3))

# %% [markdown]
# ## KernelSHAP's overhead over its model calls
# `overhead` = the explainer's time over the time of its recorded model calls replayed alone, minus 1
# (`tve_lib.timing.record_model_calls` + `tve_lib.timing.time_model_calls`): the cost of coalition sampling,
# masking and the least-squares solve. Rows marked `estimated` come from the stand-in run (paper size on CPU).

# %%
display(overhead.round(3))

# %% [markdown]
# ## The targets
# One row per target, backbone, size, batch size and TVE variant; `estimated` when an input row was. The
# KernelSHAP targets use the largest budget of the profile (`bench.budgets`).

# %%
checks = claims.target_checks(throughput, overhead, max(cfg.budgets))
write_csv(checks, suite.path("throughput", "targets.csv"))
display(checks.groupby(["target", "size", "tve_arch"]).agg(
    met=("met", "mean"), worst=("value", "min"), best=("value", "max"), any_estimated=("estimated", "any")).round(3))
for r in checks[~checks.met].itertuples():
    print(f"missed: {r.target} {r.backbone}/{r.size} batch {r.batch_size} {r.tve_arch}: {r.value:.3g} "
          f"(target {r.op} {r.threshold}){' [estimated]' if r.estimated else ''}")
suite.write_run_json("throughput", {"PROFILE": PROFILE, "SEED": SEED, "DEVICE": DEVICE, "METHODS": METHODS,
                                    "BACKBONES": BACKBONES, "THREADS": THREADS, "notebook": "04_throughput"},
                     device_info=device_info(suite.device), n_rows=len(throughput),
                     n_estimated=int(throughput.estimated.sum()), targets_met=int(checks.met.sum()),
                     targets=len(checks))

# %% [markdown]
# ## The paper loader: how many workers does a device need?
#
# At paper size every image set that decodes files (ImageNet, Pets, Imagenette) is read through a
# `torch.utils.data.DataLoader` (`tve_lib.loader`: worker processes, prefetching, pinned memory on CUDA; the
# worker count is the profile's `data_workers`, default the cores available). Below, the images per second it
# delivers on generated ImageNet-like JPEGs (decode, resize, centre crop to 224 px; the time includes starting
# the workers) for each worker count, beside the images per second that one pre-training step of the paper
# profile's TVE explainer consumes on this device (ViT-B/16, random weights). A device needs about as many
# workers as it takes for the loader to keep up with the step. The same table gives the peak memory of that
# step and of one fidelity batch (`bench.fidelity_batch` images with half their players removed, through
# ViT-B and a head): the allocator's peak on a GPU, the process's peak resident set on a CPU.

# %%
loader = loading.loader_rows(suite.path("checkpoints", "loader_bench_jpegs"), cfg.loader_images, cfg.loader_workers,
                             cfg.loader_batch_size, seed=SEED)
step = loading.step_row(suite.device, "vit", cfg.loader_step_batch, seed=SEED, precision=suite.profile.precision)
fid = loading.fidelity_batch_row(suite.device, "vit", cfg.fidelity_batch, seed=SEED,
                                 precision=suite.profile.precision)
loader_table = pd.concat([loader.assign(what="loader"),
                          pd.DataFrame([dict(step, what="tve_step", img_size=224),
                                        dict(fid, what="fidelity_batch", img_size=224)])], ignore_index=True)
write_csv(loader_table.assign(seed=SEED), suite.path("throughput", "loader.csv"))
display(loader_table[["what", "workers", "batch_size", "images_per_s"]].round(2))
display(Markdown(report.loader_finding(loader_table)))

# %% [markdown]
# **Reading the numbers.** On a shared CPU the timings are noisy (other processes compete for the cores; the
# IQR column says how much); compare ratios within one run, not absolute numbers across runs. At the profile
# size the models are tiny, so fixed per-call costs (Python, masking, the solve) weigh more than they would at
# ViT-B size, which inflates every explainer's cost relative to inference; the paper-size section is the one
# that speaks to the paper's setting. `docs/benchmarks.md` says how to reproduce these figures on a GPU.
