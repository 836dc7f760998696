"""The FastSHAP-style amortised explainers of a task's heads: trained once per task and head, cached."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..cache import cached, digest, file_safe
from ..explainers import make_explainer
from ..explainers.amortized import Amortized, build_net, train_amortized
from ..imagesets import iter_batches

if TYPE_CHECKING:
    from .suite import Suite


def obtain_amortized(suite: Suite, backbone: str, task: str, kinds: tuple[str, ...] = ("linear", "mlp"),
                     eval_images: torch.Tensor | None = None) -> dict[str, Amortized]:
    """The amortised explainers of ``task``'s heads on ``backbone`` (trained once, cached).

    Trains on the first ``fastshap_images`` of a seeded permutation of the task's training split;
    ``eval_images`` (normalised test images) give the per-epoch Fidelity⁺ AUC of the history.
    """
    cfg, bb = suite.profile.eval, suite.backbone(backbone)
    t = suite.task(task, backbone)
    heads = [suite.head(backbone, task, k) for k in kinds]
    fields = {k: v for k, v in cfg.__dict__.items() if k.startswith("fastshap") or k in ("sparsities",)}
    key = digest(fields, suite.profile.digest("img_size", "backbones", "backbone_train", "head_train"),
                 backbone, task, kinds, suite.seed,
                 None if eval_images is None else float(eval_images.double().sum()))
    ckpt = suite.ckpt_dir / f"amortized_{backbone}_{file_safe(task)}_{key}.pt"

    def build() -> dict[str, Amortized]:
        g = torch.Generator().manual_seed(suite.seed)
        idx = torch.randperm(len(t.train), generator=g)[: cfg.fastshap_images]
        x = torch.cat([bb.normalize(r.to(suite.device)) for r, _, _ in iter_batches(t.train, cfg.batch_size, idx)])
        return dict(zip(kinds, train_amortized(bb, heads, x, cfg, suite.seed, eval_images)))

    def dump(expl: dict[str, Amortized]) -> dict:
        return {k: {"net": e.net.state_dict(), "history": e.history} for k, e in expl.items()}

    def restore(s: dict) -> dict[str, Amortized]:
        out = {}
        for k, h in zip(kinds, heads):
            net = build_net(bb, t.num_classes, cfg.fastshap_depth)
            net.load_state_dict(s[k]["net"])
            out[k] = make_explainer("fastshap", bb, net=net.requires_grad_(False), head=h, history=s[k]["history"])
        return out

    return cached(ckpt, build, restore, "amortised explainers", dump=dump)
