"""Notebook 06's evaluation of self-explaining models: accuracy, the choice of λ, the comparison at λ*
and the cost per explanation (`tve_lib.studies.xvec.XVecStudy` calls these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from ..explainers import make_explainer
from ..explainers.xvec import SelfExplainingModel
from ..heads import head_accuracy
from ..imagesets import ImageSet, iter_batches
from ..metrics import DIRECTION
from ..schema import SELF_HEAD
from ..timing import time_call

if TYPE_CHECKING:
    from .xvec import XVecStudy

SELECT_METRICS = ("fid_gap", "accuracy", *DIRECTION)


@torch.no_grad()
def predict_and_explain(model: SelfExplainingModel, x: torch.Tensor, batch_size: int = 256
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`SelfExplainingModel.explain` in chunks: logits ``[B, C]`` and maps ``[B, G, G]``."""
    out = [model.explain(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


@torch.no_grad()
def accuracy(model: SelfExplainingModel, data: ImageSet, batch_size: int = 256,
             idx: torch.Tensor | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (restricted to ``idx``)."""
    device = model.backbone.mean.device
    ok = n = 0
    for raw, y, _ in iter_batches(data, batch_size, idx):
        logits = model.cls_head(model.backbone.embed(model.backbone.normalize(raw.to(device))))
        ok += (logits.argmax(1).cpu() == y).sum().item()
        n += len(y)
    return ok / max(n, 1)


def select_lambda(source: pd.DataFrame, metric: str = "fid_gap", max_acc_drop: float = 0.02) -> float:
    """The λ of the source-validation sweep with the best ``metric`` among those whose accuracy is
    within ``max_acc_drop`` of λ = 0's (ties: the smallest λ). ``source``: sweep rows."""
    if metric not in SELECT_METRICS:
        raise KeyError(f"unknown λ-selection metric {metric!r}; expected one of: {', '.join(SELECT_METRICS)}")
    piv = source.pivot_table(index="lambda", columns="metric", values="value").sort_index()
    for need in (metric, "accuracy"):
        if need not in piv:
            raise ValueError(f"the source sweep has no {need!r} rows")
    if 0.0 not in piv.index:
        raise ValueError("the λ grid must contain 0 (the reference accuracy)")
    ok = piv[piv["accuracy"] >= piv.loc[0.0, "accuracy"] - max_acc_drop]
    sign = DIRECTION.get(metric, 1)
    return float((sign * ok[metric]).idxmax())


def with_gap(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``fid_gap = fid_plus_auc − fid_minus_auc`` rows (one per method, no interval)."""
    piv = summary.set_index("metric")
    if not {"fid_plus_auc", "fid_minus_auc"} <= set(piv.index):
        return summary
    row = summary[summary.metric == "fid_plus_auc"].copy()
    row["metric"] = "fid_gap"
    row["value"] = row["value"].to_numpy() - summary[summary.metric == "fid_minus_auc"]["value"].to_numpy()
    row[["ci_low", "ci_high"]] = float("nan")
    return pd.concat([summary, row], ignore_index=True)


# ----------------------------------------------------------------------------- the comparison at λ*
@dataclass
class _Comparison:
    """The comparison's rows (with ``lambda``, ``label`` and optional ``accuracy`` rows) and gallery."""

    n_test: int
    seed: int
    frames: list[pd.DataFrame] = field(default_factory=list)
    gallery: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, rows: pd.DataFrame, lam_m: float, label: str, acc: float | None = None) -> None:
        rows = rows.copy()
        if acc is not None:
            ids = rows.iloc[0][["backbone", "task", "head", "method", "budget"]].to_dict()
            acc_row = dict(ids, metric="accuracy", value=acc, n_images=self.n_test, seed=self.seed)
            rows = pd.concat([rows, pd.DataFrame([acc_row])], ignore_index=True)
        rows["lambda"], rows["label"] = lam_m, label
        self.frames.append(rows)


def _add_lambdas(st: XVecStudy, out: _Comparison, task: str, lam: float, x: torch.Tensor) -> None:
    """The sweep's own rows at λ* and λ = 0, with their gallery maps."""
    bs, n_gal = st.eval_cfg.batch_size, st.eval_cfg.n_gallery
    for lam_m, label in dict.fromkeys([(float(lam), f"xvec (λ={lam:g})"), (0.0, "target model, λ=0")]):
        out.add(st.evaluate_lambda(lam_m, task), lam_m, label)
        out.gallery[label] = predict_and_explain(st.at_lambda(lam_m, task), x[:n_gal], bs)[1]


def _add_kernelshap(st: XVecStudy, out: _Comparison, task: str, lam: float, x: torch.Tensor,
                    masks: torch.Tensor | None, meta: dict) -> None:
    """KernelSHAP-``compare_budget`` of the same model θ(λ*) (its accuracy row is θ(λ*)'s)."""
    bs, budget = st.eval_cfg.batch_size, st.cfg.compare_budget
    star = st.at_lambda(lam, task)
    t_star = predict_and_explain(star, x, bs)[0].argmax(1)
    ks = make_explainer("kernelshap", star.backbone, budget=budget, seed=st.seed, batch_size=bs)
    ks_maps = ks.explain(x, star.cls_head, t_star)
    acc_star = st.evaluate_lambda(lam, task).set_index("metric").loc["accuracy", "value"]
    label = f"KernelSHAP-{budget}"
    out.add(st.score(("lambda", task, float(lam)), star.backbone, star.cls_head, x, {"kernelshap": ks_maps},
                     t_star, masks, meta, st.cfg.n_shapley, {"kernelshap": budget}), float(lam), label, acc_star)
    out.gallery[label] = ks_maps[:st.eval_cfg.n_gallery]


def _add_upper(st: XVecStudy, out: _Comparison, task: str, x: torch.Tensor, masks: torch.Tensor | None,
               meta: dict, acc_idx: torch.Tensor) -> None:
    """The upper bound (d): the target model trained with target explanation supervision."""
    bs = st.eval_cfg.batch_size
    upper = st.model("expl", task)
    lg, mp = predict_and_explain(upper, x, bs)
    label = "upper bound (target supervision)"
    out.add(st.score(("upper", task), upper.backbone, upper.cls_head, x, {"xvec_upper": mp}, lg.argmax(1),
                     masks, meta, st.cfg.n_shapley), float("nan"), label,
            accuracy(upper, st.suite.task(task, st.name).test, bs, acc_idx))
    out.gallery[label] = mp[:st.eval_cfg.n_gallery]


def _add_tve(st: XVecStudy, out: _Comparison, task: str, x: torch.Tensor, masks: torch.Tensor | None,
             meta: dict, acc_idx: torch.Tensor) -> None:
    """TVE zero-shot, on the model it is built for: the frozen backbone with the task's linear probe."""
    bs = st.eval_cfg.batch_size
    head, tve = st.suite.head(st.name, task, "linear"), st.suite.explainer(st.name)
    with torch.no_grad():
        t_tve = head(st.backbone.embed_batched(x, bs)).argmax(1)
    tv_maps = torch.cat([tve.explain(x[i:i + bs], head, t_tve[i:i + bs]) for i in range(0, len(x), bs)])
    e, y = st.suite.embeddings(st.name, task, "test")
    label = "TVE zero-shot (frozen backbone + linear probe)"
    out.add(st.score(("tve", task), st.backbone, head, x, {"tve": tv_maps}, t_tve, masks,
                     dict(meta, head="linear"), st.cfg.n_shapley), float("nan"), label,
            head_accuracy(head, e[acc_idx], y[acc_idx]))
    out.gallery["TVE zero-shot"] = tv_maps[:st.eval_cfg.n_gallery]


def compare(st: XVecStudy, task: str, lam: float) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """At λ*: the vector-equipped model, λ = 0, KernelSHAP-``compare_budget`` of the same model,
    the upper bound (d) and TVE zero-shot (on the frozen backbone's linear probe).

    Returns summary rows (with ``lambda``, ``label`` and ``accuracy`` rows; the λ rows are the
    sweep's own) and the maps of the first ``n_gallery`` images per label.
    """
    x, _, masks = st.eval_set(task)
    acc_idx = st.accuracy_indices(task)
    meta = {"backbone": st.name, "task": task, "head": SELF_HEAD}
    out = _Comparison(len(acc_idx), st.seed)
    _add_lambdas(st, out, task, lam, x)
    _add_kernelshap(st, out, task, lam, x, masks, meta)
    _add_upper(st, out, task, x, masks, meta, acc_idx)
    _add_tve(st, out, task, x, masks, meta, acc_idx)
    return pd.concat(out.frames, ignore_index=True), out.gallery


# ----------------------------------------------------------------------------- cost per explanation
def throughput(st: XVecStudy, task: str, lam: float) -> pd.DataFrame:
    """Cost per explanation at the profile's size: the self-explaining model's one inference
    (``xvec``), KernelSHAP-``compare_budget`` of it, and the frozen backbone's inference (only
    used when ``throughput.csv`` has no inference row at this batch size yet)."""
    x, _, _ = st.eval_set(task)
    b = st.cfg.bench_batch_size
    xb = x.repeat(-(-b // len(x)), 1, 1, 1)[:b]
    star = st.at_lambda(lam, task)
    ks = make_explainer("kernelshap", star.backbone, budget=st.cfg.compare_budget, seed=st.seed,
                        batch_size=st.eval_cfg.batch_size)
    head = st.suite.head(st.name, task, "linear")
    calls = {("inference", 0): lambda: head(st.backbone.embed(xb)),
             ("xvec", 0): lambda: star.explain(xb),
             ("kernelshap", st.cfg.compare_budget): lambda: ks.explain(xb, star.cls_head)}
    # the frozen backbone's passes (and KernelSHAP's, on the vector-equipped copy) run at the profile's
    # precision; the self-explaining model's own forward in fp32
    dtypes = {"inference": st.backbone.compute_dtype, "kernelshap": star.backbone.compute_dtype}
    rows = []
    with torch.no_grad():
        for (method, budget), fn in calls.items():
            t = time_call(fn, b, st.suite.device, st.cfg.bench_repeats, dtype=dtypes.get(method, torch.float32))
            rows.append(dict(device=str(st.suite.device), threads=t.threads, backbone=st.name,
                             size="profile", method=method, budget=budget, batch_size=b, n_tasks=1,
                             images_per_s=t.images_per_s, ms_per_image=t.ms_per_image,
                             repeats=t.repeats, ms_per_image_iqr=t.ms_per_image_iqr, warmup=t.warmup,
                             dtype=t.dtype))
    df = pd.DataFrame(rows)
    inf = df.loc[df.method == "inference", "images_per_s"].iloc[0]
    df["ratio_to_inference"] = df.images_per_s / inf
    return df


def append_throughput(df: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Append notebook 06's throughput rows with `tve_lib.studies.throughput.append_throughput`; the inference
    row is only added where the file has none for this device, backbone, size and batch size (the
    benchmark notebook's own measurement is kept)."""
    from .throughput import append_throughput as bench_append

    path = Path(path)
    if path.exists():
        old = pd.read_csv(path)
        keys = ["device", "backbone", "size", "batch_size"]
        have = set(map(tuple, old[old.method == "inference"][keys].astype(str).values.tolist()))
        mine = [tuple(r) in have for r in df[keys].astype(str).values.tolist()]
        df = df[~((df.method == "inference") & pd.Series(mine, index=df.index))]
    return bench_append(df, path)
