"""The row vocabulary of the suite: CSV paths, columns, keys and method labels, in one place.

Every table a notebook writes is tidy (one row per measurement). The paths and columns below are
a contract that other tools read: columns may be added, never renamed. ``*_KEYS`` identify a row
for `tve_lib.io.upsert_csv`, so a rerun replaces its own rows and leaves other notebooks' rows alone.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

#: table key -> CSV path under results/<profile>/ (written by notebooks 00–06)
TABLES = {
    "accuracy": "accuracy.csv",
    "pretrain": "tve/pretrain.csv",
    "scaling": "tve/scaling.csv",
    "transfer": "tve/transfer_error.csv",
    "curves": "fidelity/curves.csv",
    "summary": "fidelity/summary.csv",
    "per_image": "fidelity/per_image.csv",
    "ablations": "fidelity/ablations.csv",
    "amortized": "fidelity/amortized.csv",
    "throughput": "throughput/throughput.csv",
    "sweep": "xvec/lambda_sweep.csv",
    "ltx_trajectory": "ltx/trajectory.csv",
    "xvec_comparison": "xvec/comparison.csv",
    "operators": "fidelity/operators.csv",
    "operator_agreement": "fidelity/operator_agreement.csv",
    "operators_per_image": "fidelity/operators_per_image.csv",
}

# ---- fidelity (notebooks 03, 03b, 05, 06, 09)
CURVE_COLUMNS = ["backbone", "task", "head", "method", "budget", "metric", "sparsity", "value", "n_images", "seed"]
SUMMARY_COLUMNS = ["backbone", "task", "head", "method", "budget", "metric", "value", "ci_low", "ci_high",
                   "n_images", "seed"]
#: the keys that identify a row (`tve_lib.io.upsert_csv`). ``selection`` (notebook 05's LTX step selection)
#: and ``lambda`` (notebook 06's vector scale) are empty on notebook 03's rows: each notebook that shares
#: these tables replaces only its own rows
ROW_SCOPE = ["selection", "lambda"]
CURVE_KEYS = ["backbone", "task", "head", "method", "budget", "metric", "sparsity", "seed", *ROW_SCOPE]
SUMMARY_KEYS = ["backbone", "task", "head", "method", "budget", "metric", "seed", *ROW_SCOPE]
#: per-image values kept for paired comparisons (``fidelity/per_image.csv``)
PER_IMAGE_METRICS = ("fid_plus_auc", "fid_minus_auc")
PER_IMAGE_KEYS = ["backbone", "task", "head", "method", "budget", "metric", "image", "seed", *ROW_SCOPE]

CURVE_METRICS = ("fid_plus", "fid_minus", "pos", "neg", "deletion", "insertion")
#: summary metric name of each curve's AUC; the summary.csv contract
AUC_NAMES = {"fid_plus": "fid_plus_auc", "fid_minus": "fid_minus_auc", "pos": "pos_auc",
             "neg": "neg_auc", "deletion": "deletion_auc", "insertion": "insertion_auc"}
#: +1 when higher is better, -1 when lower is better (for tables and plots)
DIRECTION = {"fid_plus_auc": 1, "fid_minus_auc": -1, "pos_auc": -1, "neg_auc": 1, "deletion_auc": -1,
             "insertion_auc": 1, "shapley_spearman": 1, "shapley_topk": 1, "pointing_game": 1,
             "mass_in_region": 1}

# ---- removal operators (notebook 03c): notebook 03's maps scored with each operator removing players
OPERATOR_COLUMNS = ["backbone", "task", "head", "method", "budget", "operator", "metric", "value", "n_images", "seed"]
OPERATOR_KEYS = ["backbone", "task", "head", "method", "budget", "operator", "metric", "seed"]
OPERATOR_METRICS = ("fid_plus_auc", "fid_minus_auc", "deletion_auc", "insertion_auc")
OPERATORS_PER_IMAGE_KEYS = ["backbone", "task", "head", "method", "budget", "operator", "metric", "image", "seed"]
AGREEMENT_COLUMNS = ["backbone", "task", "head", "metric", "operator_a", "operator_b", "kendall_tau", "n_methods"]
AGREEMENT_KEYS = ["backbone", "task", "head", "metric", "operator_a", "operator_b"]

# ---- TVE scaling study (notebook 03b)
SCALING_COLUMNS = ["backbone", "sampler", "arch", "n_images", "epochs", "windows_per_image", "steps",
                   "targets_seen", "pretrain_seconds", "heldout_ratio", "transfer_spearman", "topk_overlap",
                   "fid_plus_ratio_to_occlusion", "seed"]

# ---- TVE pre-trained on a downstream task's training images, beside the upstream one (`studies.in_domain`)
IN_DOMAIN_COLUMNS = ["backbone", "trained_on", "n_images", "epochs", "task", "head", "spearman", "topk_overlap",
                     "fid_plus_ratio_to_occlusion", "pretrain_seconds", "heldout_ratio", "n_test_images", "seed"]
IN_DOMAIN_KEYS = ["backbone", "trained_on", "n_images", "epochs", "task", "head", "seed"]

# ---- throughput (notebooks 04, 05, 06)
NO_ARCH = "-"  # tve_arch of methods that are not TVE (a string, so CSV round trips keep keys equal)
THROUGHPUT_COLUMNS = ["device", "threads", "backbone", "size", "method", "budget", "batch_size", "n_tasks",
                      "images_per_s", "ms_per_image", "ratio_to_inference", "repeats"]
#: ``dtype``: what the timed model passes compute in (`Backbone.compute_dtype`): "float32", or "bfloat16" under
#: autocast (the profile's ``precision``; "auto" is bf16 on a GPU)
EXTRA_COLUMNS = ["tve_arch", "estimated", "basis", "shared_tasks", "ms_per_image_iqr", "warmup",
                 "model_images_per_image", "dtype", "device_name"]
THROUGHPUT_KEYS = ["device", "backbone", "size", "method", "budget", "tve_arch", "batch_size", "n_tasks"]
OVERHEAD_COLUMNS = ["device", "threads", "backbone", "size", "method", "budget", "batch_size",
                    "explainer_ms_per_image", "model_calls_ms_per_image", "overhead", "model_images_per_image",
                    "model_batches", "estimated"]

def continued_rows(scaling: pd.DataFrame) -> pd.Series:
    """Which rows of a scaling table are continued budgets (trained further from another explainer; rows written
    before the column existed are from the start)."""
    if "continued_from_images" not in scaling:
        return pd.Series(False, index=scaling.index)
    return scaling.continued_from_images.fillna(0).astype(int) > 0


def throughput_frame(df: pd.DataFrame, threads: int) -> pd.DataFrame:
    """Normalise rows to the throughput.csv contract: every named column, in order, with stable key
    types (``budget`` int, 0 when the method has none, as in the fidelity CSVs; ``tve_arch`` ``-`` for
    methods other than TVE). ``threads`` fills the thread count of rows that lack it (the measuring
    process's ``torch.get_num_threads()``)."""
    df = df.copy()
    missing = [c for c in ("device", "backbone", "size", "method", "batch_size", "images_per_s") if c not in df]
    if missing:
        raise ValueError(f"throughput rows lack columns {missing}")
    defaults = dict(threads=threads, budget=0, n_tasks=1, ms_per_image=float("nan"),
                    ratio_to_inference=float("nan"), repeats=0, tve_arch=NO_ARCH, estimated=False,
                    basis="measured", shared_tasks=False, ms_per_image_iqr=float("nan"), warmup=0,
                    model_images_per_image=float("nan"), dtype="float32", device_name="")
    for c, v in defaults.items():
        df[c] = df[c].fillna(v) if c in df else v
    df["budget"] = pd.to_numeric(df["budget"], errors="coerce").fillna(0).astype(int)
    df["tve_arch"] = df["tve_arch"].fillna(NO_ARCH).replace("", NO_ARCH).astype(str)
    df["ms_per_image"] = df["ms_per_image"].fillna(1000.0 / df["images_per_s"])
    df["estimated"] = df["estimated"].astype(bool)
    df["shared_tasks"] = df["shared_tasks"].astype(bool)
    for c in ("batch_size", "n_tasks", "repeats", "threads", "warmup"):
        df[c] = df[c].astype(int)
    cols = THROUGHPUT_COLUMNS + EXTRA_COLUMNS
    return df[cols + [c for c in df.columns if c not in cols]].reset_index(drop=True)


# ---- LTX (notebook 05)
NO_SELECTION = "none"  # the selection column of methods without step selection (pLTX, TVE, KernelSHAP)
SELECTIONS = ("loss", "test_metric")  # LTX's step selections (the selection column of its rows)

# ---- the explainability vector (notebook 06)
SWEEP_COLUMNS = ["task", "backbone", "lambda", "metric", "value", "seed"]
SWEEP_EXTRA = ["split", "ci_low", "ci_high", "n_images"]
SELF_HEAD = "self_explaining"  # `head` of rows that score a self-explaining model (its own linear head)
#: display names of the four trainings, keyed by (kind, on the source); the ``model`` column of training.csv
MODEL_NAMES = {("pred", True): "(a) source pred-only", ("expl", True): "(b) source pred+expl",
               ("pred", False): "(c) target pred-only", ("expl", False): "(d) target pred+expl"}

# ---- the report (notebook 07)
CLAIM_COLUMNS = ["id", "method", "claim", "verdict", "evidence", "rule"]

#: the order methods appear in tables and figures (the ``method`` column's values)
METHOD_ORDER = ("random", "ig", "gradcam", "rollout", "occlusion", "kernelshap", "lime", "fastshap", "tve",
                "pltx", "ltx", "xvec", "xvec_upper")
#: methods of notebooks 05/06 that append to fidelity/summary.csv beside notebook 03's
PEER_METHODS = ("pltx", "ltx", "xvec", "xvec_upper")
HEADS = ("linear", "mlp")


def _absent(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v in ("", NO_ARCH, NO_SELECTION)


def method_label(method: str, budget: Any = 0, variant: Any = None) -> str:
    """Display name of a row: ``kernelshap-150``, ``tve (shared)``, ``ltx (loss)``, ``ig``.

    ``budget`` (model calls per image of a sampling method; 0 or NaN otherwise) and ``variant``
    (a TVE architecture or an LTX step selection; ``-``, ``none``, empty or NaN: none) as in the CSVs.
    """
    out = method if _absent(budget) or not budget else f"{method}-{int(budget)}"
    return out if _absent(variant) else f"{out} ({variant})"
