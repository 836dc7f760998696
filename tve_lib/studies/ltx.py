"""Notebook 05: LTX (docs/method.md §3) against TVE's zero-shot transfer and KernelSHAP, on one task at a time.

pLTX is pre-trained once per backbone × task × head and cached (`pretrained_ltx`); `compare_task`
fine-tunes LTX on the first ``ltx.n_explain`` of notebook 03's evaluation images, explains the same
images with TVE and KernelSHAP, scores them all and times them. The method (network, loss,
fine-tuning, step selection) is `tve_lib.explainers.ltx`; rankings and figures are
`tve_lib.report.ltx`, the claim rule `tve_lib.report.claims`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from ..backbones import Backbone
from ..cache import cached, digest, file_safe
from ..config import EvalConfig, LTXConfig
from ..explainers.ltx import PRETRAIN_FIELDS, SELECTIONS, FineTuneResult, finetune, pretrain_ltx
from ..explainers.ltx_model import LTXNet
from ..heads import head_logits
from ..metrics import curve_base
from ..precision import dtype_name
from ..schema import NO_SELECTION
from ..seeds import seeded
from ..timing import time_call

if TYPE_CHECKING:
    from .suite import Suite


# ----------------------------------------------------------------------------- cached pLTX per task
def pltx_checkpoint(suite: Suite, backbone: str, task: str, kind: str = "linear",
                    cfg: LTXConfig | None = None) -> Path:
    """Cache file of a pLTX explainer: keyed on its config, the backbone, task and head."""
    cfg = cfg or suite.profile.ltx
    pre = tuple((f, getattr(cfg, f)) for f in PRETRAIN_FIELDS)  # fine-tuning settings do not invalidate it
    key = digest(pre, suite._bb_key(backbone), task, kind, suite.profile.digest("head_train"))
    return suite.ckpt_dir / f"pltx_{backbone}_{file_safe(task)}_{kind}_{key}.pt"


def pretrained_ltx(suite: Suite, backbone: str, task: str, kind: str = "linear",
                   cfg: LTXConfig | None = None) -> tuple[LTXNet, list[dict]]:
    """The pLTX explainer of (backbone, task, head kind), pre-trained once and cached."""
    cfg = cfg or suite.profile.ltx
    bb, head = suite.backbone(backbone), suite.head(backbone, task, kind)
    trained: list[LTXNet] = []

    def build() -> dict:
        with seeded(suite.seed):
            net = LTXNet(bb)
            hist = pretrain_ltx(net, bb, head, suite.task(task, bb.name).train, cfg, suite.seed)
        trained.append(net)
        return {"model": net.state_dict(), "history": hist, "cfg": cfg}

    def restore(s: dict) -> tuple[LTXNet, list[dict]]:
        if trained:  # just pre-trained: no second LTXNet (its init would draw from the global RNG)
            return trained[0], s["history"]
        net = LTXNet(bb)
        net.load_state_dict(s["model"])
        return net.eval(), s["history"]

    return cached(pltx_checkpoint(suite, backbone, task, kind, cfg), build, restore, "pLTX explainer")


# ----------------------------------------------------------------------------- scoring
def score_ltx(backbone: Backbone, head: nn.Module, images: torch.Tensor, result: FineTuneResult, cfg: LTXConfig,
              eval_cfg: EvalConfig | None = None, selections: tuple[str, ...] = ("loss",),
              masks: torch.Tensor | None = None, meta: dict | None = None, seed: int = 0,
              target: torch.Tensor | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fidelity rows of pLTX (the trajectory's step 0) and of LTX under each selection.

    Every row carries ``selection`` (``none`` for pLTX), so rows of the official
    ``test_metric`` selection can always be told apart and kept out of rankings. ``target``:
    the class scored (default: the one LTX was fine-tuned for).
    """
    from .fidelity import concat, evaluate_maps

    meta = dict(meta or {})
    runs = [("pltx", NO_SELECTION, result.masks[:, 0])]
    runs += [("ltx", sel, result.select(sel, cfg.stop_pos_auc)[0]) for sel in selections]
    curves, summary = [], []
    base = curve_base(backbone, images, (eval_cfg or EvalConfig()).masked_batch_size)  # shared by every run
    for method, sel, m in runs:
        c, sm = evaluate_maps(backbone, head, images, {method: m}, result.targets if target is None else target,
                              masks, eval_cfg,
                              meta=dict(meta, selection=sel), seed=seed, base=base)
        curves.append(c)
        summary.append(sm)
    return concat(curves), concat(summary)


# ----------------------------------------------------------------------------- notebook 05: the comparison
@dataclass
class TaskComparison:
    """Everything notebook 05 reports for one backbone × task × head (tidy frames)."""

    summary: pd.DataFrame  # evaluate_maps summary rows of every method, with `selection`
    curves: pd.DataFrame
    costs: pd.DataFrame  # method, selection, train_scope, train_s, explain_ms_per_image
    throughput: pd.DataFrame  # per-task timing rows (pltx, ltx, inference); merge with `throughput_table`
    history: pd.DataFrame  # pLTX pre-training per epoch
    trajectory: pd.DataFrame  # fine-tuning: mean loss / POS-AUC per step, share of images selecting it
    gallery: dict  # raw images, region masks and maps of the first images


@dataclass
class _Batch:
    """The evaluation images of one task: raw, normalised, labels, regions, predicted class."""

    raw: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor
    regions: torch.Tensor | None
    y: torch.Tensor


@dataclass
class _Explained:
    """Every method's explanation of a `_Batch`, and its cost (ms per image, timed repeats)."""

    res: FineTuneResult
    tve_map: torch.Tensor
    ks_map: torch.Tensor
    budget: int
    ms: dict[str, float]
    repeats: dict[str, int]


def _timed(fn, n: int, device: torch.device, repeats: int) -> tuple[object, float, int]:
    """Run ``fn`` once for its result, then time it (median of ``repeats`` runs, `time_call`)."""
    out = fn()
    if repeats < 1:
        return out, float("nan"), 0
    t = time_call(fn, n, device, repeats=repeats, warmup=0)
    return out, t.ms_per_image, t.repeats


def _evaluation_batch(suite: Suite, bb: Backbone, head: nn.Module, task: str, n_explain: int) -> _Batch:
    """The first ``n_explain`` of notebook 03's evaluation images of ``task``, with their prediction."""
    from .fidelity import evaluation_indices

    t = suite.task(task, bb.name)
    idx = evaluation_indices(t.test, n_explain, suite.seed)
    raw, labels, regions = t.test.get(idx)
    x, labels = bb.normalize(raw.to(suite.device)), labels.to(suite.device)
    regions = regions.to(suite.device) if regions is not None else None
    with torch.inference_mode():
        y = head_logits(head, bb.embed(x)).argmax(-1)
    return _Batch(raw, x, labels, regions, y)


def _explain_all(suite: Suite, backbone: str, bb: Backbone, head: nn.Module, net: LTXNet, b: _Batch,
                 progress: bool) -> _Explained:
    """Inference and pLTX (timed), LTX fine-tuning, TVE (timed) and KernelSHAP, in this order."""
    cfg, ev, dev = suite.profile.ltx, suite.profile.eval, suite.device
    x, n = b.x, len(b.x)

    def infer():
        with torch.inference_mode():
            return head(bb.embed(x))

    def pltx_call():
        with torch.inference_mode():
            return net(x)

    ms, rep = {}, {}
    _, ms["inference"], rep["inference"] = _timed(infer, n, dev, cfg.time_repeats)
    _, ms["pltx"], rep["pltx"] = _timed(pltx_call, n, dev, cfg.time_repeats)
    res = finetune(net, bb, head, x, cfg, labels=b.labels, pos_auc=True, eval_cfg=ev, progress=progress)
    tve = suite.explainer(backbone)
    tve_map, ms["tve"], rep["tve"] = _timed(lambda: tve.explain(x, head), n, dev, cfg.time_repeats)
    budget = max(ev.budgets)
    ks = suite.make_explainer("kernelshap", backbone, budget=budget)
    t0 = time.perf_counter()
    ks_map = ks.explain(x, head)
    ms["kernelshap"] = 1000 * (time.perf_counter() - t0) / n
    ms["ltx"] = 1000 * res.seconds / n
    ms["ltx_test_metric"] = ms["ltx"] + 1000 * res.extra.get("pos_auc_seconds", float("nan")) / n
    return _Explained(res, tve_map, ks_map, budget, ms, rep)


def _cost_rows(suite: Suite, backbone: str, hist: list[dict], e: _Explained, n: int,
               meta: dict[str, Any]) -> pd.DataFrame:
    """One row per method: training time and its scope, explanation time, ratio to inference."""
    train_s = hist[-1]["seconds"] if hist else float("nan")
    ms = e.ms
    costs = pd.DataFrame([
        dict(method="pltx", selection=NO_SELECTION, budget=0, train_scope="task", train_s=train_s,
             explain_ms_per_image=ms["pltx"]),
        dict(method="ltx", selection="loss", budget=0, train_scope="task", train_s=train_s,
             explain_ms_per_image=ms["ltx"]),
        dict(method="ltx", selection="test_metric", budget=0, train_scope="task", train_s=train_s,
             explain_ms_per_image=ms["ltx_test_metric"]),
        dict(method="tve", selection=NO_SELECTION, budget=0, train_scope="backbone",
             train_s=_tve_seconds(suite, backbone), explain_ms_per_image=ms["tve"]),
        dict(method="kernelshap", selection=NO_SELECTION, budget=e.budget, train_scope="none", train_s=0.0,
             explain_ms_per_image=ms["kernelshap"]),
        dict(method="inference", selection=NO_SELECTION, budget=0, train_scope="none", train_s=0.0,
             explain_ms_per_image=ms["inference"]),
    ]).assign(**meta, n_images=n, seed=suite.seed)
    costs["ratio_to_inference"] = ms["inference"] / costs["explain_ms_per_image"]
    return costs


def _throughput_rows(suite: Suite, backbone: str, task: str, e: _Explained, n: int) -> pd.DataFrame:
    """Per-task timing rows of inference, pLTX and LTX (`throughput_table` merges the tasks)."""
    cfg = suite.profile.ltx
    base = dict(device=str(suite.device), threads=torch.get_num_threads(), backbone=backbone, size="profile",
                n_tasks=1, basis="measured", estimated=False)
    # the frozen backbone's passes (inference; LTX's masked images) run at the profile's precision, pLTX's
    # own encoder in fp32
    bb_dtype = dtype_name(suite.backbone(backbone).compute_dtype)
    tp = pd.DataFrame([
        base | dict(method="inference", budget=None, batch_size=n, ms_per_image=e.ms["inference"],
                    repeats=e.repeats["inference"], dtype=bb_dtype),
        base | dict(method="pltx", budget=None, batch_size=n, ms_per_image=e.ms["pltx"], repeats=e.repeats["pltx"],
                    dtype="float32"),
        # ``budget`` is model calls per image of a sampling method in every CSV; LTX's cost is its steps
        base | dict(method="ltx", budget=None, ft_steps=cfg.ft_steps, batch_size=min(cfg.ft_batch, n),
                    ms_per_image=e.ms["ltx"], repeats=1, dtype=bb_dtype),
    ])
    tp["images_per_s"] = 1000.0 / tp["ms_per_image"]
    tp["task"] = task  # for the record; `throughput_table` merges the tasks
    return tp


def _trajectory(res: FineTuneResult, cfg: LTXConfig, meta: dict[str, Any]) -> pd.DataFrame:
    """Per fine-tuning step: mean loss and POS-AUC, and the share of images each selection stops at."""
    steps = torch.arange(res.n_steps)
    sel = {s: res.select(s, cfg.stop_pos_auc)[1].cpu() for s in SELECTIONS}
    return pd.DataFrame(dict(step=steps.numpy(), loss=res.losses.mean(0).cpu().numpy(),
                             pos_auc=res.pos_auc.mean(0).cpu().numpy(),
                             **{f"selected_{s}": (v.unsqueeze(1) == steps).float().mean(0).numpy()
                                for s, v in sel.items()})).assign(**meta)


def _gallery(b: _Batch, e: _Explained, k: int) -> dict:
    """The first ``k`` images, their regions and labels, and every method's map of them."""

    def centred(m: torch.Tensor) -> torch.Tensor:  # masks lie in (0, 1): show them around their mean
        return (m - m.mean((1, 2), keepdim=True)).cpu()

    res = e.res
    return dict(images=b.raw[:k].cpu(), regions=None if b.regions is None else b.regions[:k].cpu(),
                labels=b.labels[:k].cpu(),
                maps={"pLTX": centred(res.masks[:k, 0]), "LTX (loss)": centred(res.select("loss")[0][:k]),
                      "TVE": e.tve_map[:k].cpu(), f"KernelSHAP-{e.budget}": e.ks_map[:k].cpu()})


def compare_task(suite: Suite, backbone: str, task: str, kind: str = "linear",
                 progress: bool = True) -> TaskComparison:
    """Pre-train (or load) pLTX, fine-tune LTX on ``ltx.n_explain`` test images, explain the same
    images with TVE (zero-shot) and KernelSHAP (largest ``eval.budgets``), and score them all.

    LTX is scored under both selections from one fine-tuning trajectory; the costs are the
    pre-training time per task and the explanation time per image (pLTX, TVE and the inference
    reference timed with ``cfg.time_repeats`` repeats; LTX and KernelSHAP from their one run).
    """
    from .fidelity import concat, evaluate_maps

    cfg, ev = suite.profile.ltx, suite.profile.eval
    bb, head = suite.backbone(backbone), suite.head(backbone, task, kind)
    meta = dict(backbone=backbone, task=task, head=kind)
    net, hist = pretrained_ltx(suite, backbone, task, kind, cfg)
    b = _evaluation_batch(suite, bb, head, task, cfg.n_explain)
    n = len(b.x)
    e = _explain_all(suite, backbone, bb, head, net, b, progress)
    # every method is scored on the class predicted on the full image (also in LTX's "target" mode)
    c_l, s_l = score_ltx(bb, head, b.x, e.res, cfg, ev, SELECTIONS, b.regions, meta, suite.seed, target=b.y)
    c_o, s_o = evaluate_maps(bb, head, b.x, {"tve": e.tve_map, "kernelshap": e.ks_map}, b.y, b.regions, ev,
                             budget={"kernelshap": e.budget}, meta=dict(meta, selection=NO_SELECTION),
                             seed=suite.seed)
    return TaskComparison(concat([s_l, s_o]), concat([c_l, c_o]), _cost_rows(suite, backbone, hist, e, n, meta),
                          _throughput_rows(suite, backbone, task, e, n), pd.DataFrame(hist).assign(**meta),
                          _trajectory(e.res, cfg, meta), _gallery(b, e, min(ev.n_gallery, n)))


def _tve_seconds(suite: Suite, backbone: str) -> float:
    """TVE's pre-training time (per backbone, shared by every task); NaN when unrecorded."""
    try:
        h = suite.tve_history(backbone)
        return float(h[-1]["seconds"]) if h else float("nan")
    except (KeyError, IndexError, TypeError):
        return float("nan")


# ----------------------------------------------------------------------------- throughput.csv
def throughput_table(tp: pd.DataFrame) -> pd.DataFrame:
    """One throughput row per device × backbone × method from the per-task rows of `compare_task`:
    the median ms/image over tasks (throughput does not depend on the task), repeats summed."""
    keys = ["device", "threads", "backbone", "size", "method", "budget", "batch_size", "n_tasks", "basis",
            "estimated", *[c for c in ("ft_steps", "dtype") if c in tp]]
    out = tp.groupby(keys, dropna=False, sort=False).agg(ms_per_image=("ms_per_image", "median"),
                                                         repeats=("repeats", "sum")).reset_index()
    out["images_per_s"] = 1000.0 / out["ms_per_image"]
    return out


def missing_inference(tp: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """``tp`` without its inference rows where throughput.csv already has one for the same device,
    backbone, size and batch size (notebook 04's measurement is kept; ours fills gaps only)."""
    path = Path(path)
    if not path.exists():
        return tp
    old = pd.read_csv(path)
    if "method" not in old:
        return tp
    keys = ["device", "backbone", "size", "batch_size"]
    have = set(map(tuple, old.loc[old.method == "inference", keys].astype(str).values.tolist()))
    known = pd.Series([tuple(r) in have for r in tp[keys].astype(str).values.tolist()], index=tp.index)
    dup = (tp.method == "inference") & known
    return tp[~dup]
