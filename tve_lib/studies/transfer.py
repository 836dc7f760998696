"""Zero-shot transfer studies: TVE maps against the exact window quantity they amortise."""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..explainers.tve import TVE, exact_window_embeddings, transfer_rule
from ..heads import head_logits
from ..imagesets import ImageSet
from ..masking import MASKED_BATCH
from ..metrics import spearman, topk_overlap


def pretrain_table(histories: dict[str, list[dict]]) -> pd.DataFrame:
    """Tidy pre-training rows ``backbone, epoch, split, loss_keep, loss_remove, seconds`` (+ trivial)."""
    return pd.DataFrame([{"backbone": b, **h} for b, hist in histories.items() for h in hist])


def trivial_ratio(pretrain: pd.DataFrame) -> pd.DataFrame:
    """Final held-out loss over the trivial predictor's (always the mean target), per backbone."""
    last = pretrain[pretrain.split == "heldout"].sort_values("epoch").groupby("backbone").tail(1)
    out = last[["backbone", "epoch"]].copy()
    out["ratio_keep"] = last.loss_keep / last.trivial_keep
    out["ratio_remove"] = last.loss_remove / last.trivial_remove
    out["ratio"] = (last.loss_keep + last.loss_remove) / (last.trivial_keep + last.trivial_remove)
    return out.reset_index(drop=True)


@torch.no_grad()
def transfer_error(explainer: TVE, heads: dict[str, nn.Module], ds: ImageSet, n_images: int,
                   batch_size: int = 32, topk: float = 0.1, seed: int = 0, backbone: str = "",
                   task: str = "", progress: bool = True, masked_batch_size: int = MASKED_BATCH) -> pd.DataFrame:
    """Per-image agreement of TVE maps with the brute-force ``f_y(x⊙W_i) − f_y(x⊙(1−W_i))``.

    The first ``n_images`` of ``ds`` (a held-out split) are explained for every head; the exact
    window embeddings (2·G² backbone passes per image) are computed once and shared by all
    heads. Both the whole-head rule (this suite) and the last-layer-only rule (the official
    code) are scored where the latter is defined. Returns rows ``backbone, task, head,
    image_id, spearman, topk_overlap, seed, rule``, and which branch the error comes from:
    ``spearman_exact_keep`` scores the map with TVE's keep branch replaced by the exact one (what is
    left is the remove branch's error), ``spearman_exact_remove`` the map with the exact remove branch.
    """
    bb = explainer.backbone
    device = bb.mean.device
    rows = []
    idx = torch.arange(min(n_images, len(ds)))
    last = explainer.variant(last_layer_only=True)
    for s in tqdm(range(0, len(idx), batch_size), desc=f"transfer {backbone}/{task}", disable=not progress,
                  leave=False):
        ids = idx[s:s + batch_size]
        x = bb.normalize(ds.get(ids)[0].to(device))
        ek, er = exact_window_embeddings(bb, x, explainer.radius, masked_batch_size)  # fp32, the reference
        pk, pr, emb = explainer.window_predictions(x)  # emb: g(x) from the same pass, no second embed
        for kind, head in heads.items():
            y = head_logits(head, emb).argmax(-1)
            exact = transfer_rule(ek, er, head, y).view(len(x), bb.grid, bb.grid)
            rules = {"whole_head": explainer}
            if kind != "linear":
                rules["last_layer"] = last
            for rule, ex in rules.items():
                a = ex.map_from(pk, pr, head, y)
                scores = zip(spearman(a, exact).tolist(), topk_overlap(a, exact, topk).tolist(),
                             spearman(ex.map_from(ek, pr, head, y), exact).tolist(),
                             spearman(ex.map_from(pk, er, head, y), exact).tolist())
                for i, (sp, ov, sp_k, sp_r) in zip(ids.tolist(), scores):
                    rows.append({"backbone": backbone, "task": task, "head": kind, "image_id": i,
                                 "spearman": sp, "topk_overlap": ov, "seed": seed, "rule": rule,
                                 "spearman_exact_keep": sp_k, "spearman_exact_remove": sp_r})
    return pd.DataFrame(rows)
