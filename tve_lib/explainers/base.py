"""The one protocol every explainer follows (Captum-style): ``explain(images, head, target)``.

``images`` are normalised model inputs ``[B, 3, S, S]``; ``head`` is the downstream head ``h``
on the frozen backbone ``g`` (the explained model is ``f = h ∘ g``); ``target`` is the class to
explain per image (default: the class predicted on the full image). The result is a signed,
unnormalised ``[B, G, G]`` map on the input's device, one value per player (pixel patch).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Backbone
from ..heads import check_head, check_targets, head_logits


class Explainer:
    """Base class: holds the frozen backbone and implements target selection.

    Capabilities are class attributes, read by the registry and the studies:
    ``training`` (None; "pretrain": task-agnostic, once per backbone; "task": once per task and
    head), ``trained_args`` (the constructor arguments that carry the trained network),
    ``sampling`` (its cost is a budget of model calls per image, the ``budget`` column) and
    ``compared`` (part of the fidelity and throughput comparison of notebooks 03 and 04).
    """

    name = "explainer"
    training: str | None = None
    trained_args: tuple[str, ...] = ()
    sampling = False
    shares_tasks = False  # overrides `explain_tasks` to share model calls across heads
    compared = True
    class_conditional = True  # False: ``target`` is ignored (the map explains the class the net was trained for)
    requires = ""  # what `supports` checks, for the error message ("needs a ViT/DeiT block stack")

    @classmethod
    def supports(cls, backbone: Backbone) -> bool:
        """Whether this explainer applies to ``backbone`` (all do unless they say otherwise)."""
        return True

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    @property
    def grid(self) -> int:
        return self.backbone.grid

    def model_fn(self, head: nn.Module):
        """``f = h ∘ g`` as a callable on normalised images, returning logits."""
        return lambda x: head_logits(head, self.backbone.embed(x))

    def check_call(self, images: torch.Tensor, heads: list[nn.Module],
                   targets: list[torch.Tensor | int | None] | None = None) -> None:
        """The protocol's inputs, checked before any pass, for explainers whose map reads neither the head nor the
        target (random, rollout): a wrong head or class is the caller's mistake whichever method it calls."""
        self.backbone.check_input(images)
        for h, t in zip(heads, targets or [None] * len(heads)):
            check_head(h, self.backbone.embed_dim)
            if t is not None:
                check_targets(t, len(images), h)

    @torch.no_grad()
    def resolve_target(self, images: torch.Tensor, head: nn.Module,
                       target: torch.Tensor | int | None) -> torch.Tensor:
        """``[B]`` long: the given class(es), or the class predicted on the full image."""
        check_head(head, self.backbone.embed_dim)
        if target is None:
            return head(self.backbone.embed(images)).argmax(-1)
        return check_targets(target, len(images), head).to(images.device)

    def given_targets(self, images: torch.Tensor, heads: list[nn.Module],
                      targets: list[torch.Tensor | int | None] | None) -> list[torch.Tensor | None]:
        """Per head: the given target checked (`resolve_target`), or None where the prediction decides; called
        before an explainer's passes, so a bad target fails before the long work."""
        return [None if t is None else self.resolve_target(images, h, t)
                for h, t in zip(heads, targets or [None] * len(heads))]

    def explain(self, images: torch.Tensor, head: nn.Module,
                target: torch.Tensor | int | None = None) -> torch.Tensor:
        """Signed maps ``[B, G, G]`` of ``head``'s class ``target`` (default: the prediction)."""
        raise NotImplementedError

    def explain_tasks(self, images: torch.Tensor, heads: list[nn.Module],
                      targets: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Maps of several heads of one task; explainers that share model calls override this."""
        targets = targets or [None] * len(heads)
        return [self.explain(images, h, t) for h, t in zip(heads, targets)]
