"""The self-explaining model of the explainability vector behind the common Explainer protocol."""

from __future__ import annotations

import torch
from torch import nn

from ..xvec import SelfExplainingModel
from .base import Explainer


class SelfExplainer(Explainer):
    """Maps from one inference of a self-explaining model (`tve_lib.xvec`).

    The explained model is the self-explaining model itself: ``backbone`` is its fine-tuned
    backbone copy and the head to pass is its ``cls_head`` (any head reading the same
    embedding works: the explanation vectors are read out through that head's last Linear).
    """

    name = "xvec"

    def __init__(self, model: SelfExplainingModel):
        super().__init__(model.backbone)
        self.model = model.eval()

    @torch.no_grad()
    def explain(self, images: torch.Tensor, head: nn.Module | None = None,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        head = head if head is not None else self.model.cls_head
        logits, vec = self.model(images)  # one inference: prediction and explanation vectors
        if target is None and head is self.model.cls_head:
            t = logits.argmax(-1)
        else:
            t = self.resolve_target(images, head, target)
        return self.model.readout(vec, t, head)
