"""The report's tables: every CSV of `tve_lib.schema.TABLES` under ``results/<profile>``, and the row
selections that figures and claims share (notebook 03's own rows, notebook 05's rows, throughput).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..schema import HEADS, PEER_METHODS, TABLES, throughput_frame


class MissingData(LookupError):
    """A figure or claim cannot be built: a CSV it needs is missing or lacks the rows."""


def load_tables(root: str | Path, verbose: bool = True) -> dict[str, pd.DataFrame]:
    """Every CSV of ``TABLES`` that exists and has rows under ``root`` (= results/<profile>)."""
    root = Path(root)
    out, missing = {}, []
    for key, rel in TABLES.items():
        p = root / rel
        df = pd.read_csv(p) if p.exists() and p.stat().st_size > 0 else None
        if df is None or df.empty:
            missing.append(rel)
        else:
            out[key] = df
    if verbose and missing:
        print(f"note: not found under {root} (what needs them is skipped): {', '.join(missing)}")
    return out


def need(tables: dict[str, pd.DataFrame], *keys: str) -> list[pd.DataFrame]:
    """The named tables, or `MissingData` naming the CSVs that are absent."""
    absent = [TABLES.get(k, k) for k in keys if k not in tables]
    if absent:
        raise MissingData(f"{', '.join(absent)} missing")
    return [tables[k] for k in keys]


def _unset(df: pd.DataFrame, col: str) -> pd.Series:
    """True where ``col`` is empty (everywhere when the column is absent)."""
    if col not in df:
        return pd.Series(True, index=df.index)
    return df[col].isna() | (df[col].astype(str) == "")


def main_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """Notebook 03's rows of a summary (curves, per-image) table: the methods on the linear / MLP heads, without
    the rows notebooks 05 (``selection`` set) and 06 (``lambda`` set, self-explaining heads) append."""
    d = summary[summary["head"].isin(HEADS) & ~summary.method.isin(PEER_METHODS)
                & _unset(summary, "selection") & _unset(summary, "lambda")]
    keys = [c for c in ("backbone", "task", "head", "method", "budget", "metric", "sparsity", "image", "seed")
            if c in d]
    return d.drop_duplicates(keys, keep="last")


def ltx_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Notebook 05's rows: every row with a ``selection`` (pLTX, LTX and the references it re-scores)."""
    if "selection" not in summary:
        return summary.iloc[:0]
    return summary[~_unset(summary, "selection")]


def _throughput(t: dict[str, pd.DataFrame]) -> pd.DataFrame:
    (tp,) = need(t, "throughput")
    return throughput_frame(tp, threads=0)  # a written CSV has its threads


def median_interval(values: Sequence[float] | np.ndarray | pd.Series, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of ``values`` (NaNs dropped): how far a setting's median
    could move with another draw of test images of the same size. ``(nan, nan)`` without values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return float("nan"), float("nan")
    draws = np.random.default_rng(seed).integers(0, len(v), size=(n_boot, len(v)))
    meds = np.median(v[draws], axis=1)
    a = (1.0 - level) / 2
    return float(np.quantile(meds, a)), float(np.quantile(meds, 1.0 - a))


def transfer_summary(err: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Notebook 02's ``transfer_error_summary.csv`` from its per-image ``transfer_error.csv``: per rule, backbone,
    task and head the median Spearman with its 95 % bootstrap interval over the test images
    (``median_spearman_low`` / ``_high``, `median_interval`, ``n_boot`` resamples from ``seed``), the mean top-10 %
    overlap, and (where the per-image table has them) the median Spearman with the keep or the remove branch made
    exact (`tve_lib.studies.transfer.transfer_error`)."""
    keys = ["rule", "backbone", "task", "head"]
    aggs = dict(median_spearman=("spearman", "median"), mean_topk_overlap=("topk_overlap", "mean"),
                n_images=("image_id", "nunique"))
    aggs |= {f"median_{c}": (c, "median") for c in ("spearman_exact_keep", "spearman_exact_remove") if c in err}
    groups = err.groupby(keys)
    ci = groups.spearman.apply(lambda v: median_interval(v, n_boot, seed=seed))
    return groups.agg(**aggs).assign(median_spearman_low=ci.map(lambda c: c[0]),
                                     median_spearman_high=ci.map(lambda c: c[1])).reset_index()


BRANCH_MAPS = {"median_spearman": "TVE", "median_spearman_exact_keep": "exact keep: remove branch's error only",
               "median_spearman_exact_remove": "exact remove: keep branch's error only"}


def branch_table(summary: pd.DataFrame) -> pd.DataFrame:
    """`transfer_summary`'s whole-head rows in long form, one row per setting and map (`BRANCH_MAPS`):
    TVE's median Spearman beside the ones with one branch made exact (column ``median Spearman``)."""
    s = summary[summary.rule == "whole_head"]
    long = s.melt(id_vars=["backbone", "task", "head"], value_vars=list(BRANCH_MAPS), var_name="map",
                  value_name="median Spearman")
    return long.assign(map=long["map"].map(BRANCH_MAPS))
