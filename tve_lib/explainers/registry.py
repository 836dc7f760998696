"""The explainer registry (as timm's ``register_model`` / ``create_model``).

Each explainer class registers itself with `register_explainer`; ``make_explainer(name, backbone,
**kw)`` builds one from its name (the ``method`` value in the CSVs) without a Suite, and never
trains: a trained explainer (TVE, FastSHAP, pLTX, LTX, the self-explaining model) is given its
trained network as a keyword argument. What a method needs is read from its class attributes
(`Explainer.training`, `.sampling`, `.compared`, `.supports`), never from its name.
"""

from __future__ import annotations

from typing import Any

from ..backbones import Backbone
from ..schema import METHOD_ORDER
from .base import Explainer

_REGISTRY: dict[str, type[Explainer]] = {}


def register_explainer(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: make ``cls`` buildable as ``make_explainer(cls.name, ...)``."""
    if not cls.name or cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"explainer name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _order(name: str) -> int:
    return METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER)


def registered(compared: bool | None = None) -> tuple[str, ...]:
    """Registered names in table order; ``compared=True``: only notebook 03/04's comparison set."""
    names = [n for n, c in _REGISTRY.items() if compared is None or c.compared == compared]
    return tuple(sorted(names, key=_order))


def explainer_class(name: str) -> type[Explainer]:
    """The class registered as ``name``; a KeyError lists the known names."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown explainer {name!r}; expected one of: {', '.join(registered())}")
    return _REGISTRY[name]


def supports(name: str, backbone: Backbone) -> bool:
    """Whether explainer ``name`` applies to ``backbone`` (rollout: a ViT/DeiT block stack only)."""
    return explainer_class(name).supports(backbone)


def make_explainer(name: str, backbone: Backbone, **kw: Any) -> Explainer:
    """Explainer ``name`` on ``backbone``; ``kw`` go to its constructor.

    ``seed`` (random, kernelshap, lime), ``budget`` (kernelshap, lime; required), ``radius``
    (occlusion), ``n_steps`` (ig); trained explainers take their trained network (``model=``
    for tve, ``net=`` and ``head=`` for fastshap and pLTX/LTX, ``model=`` for xvec).
    """
    cls = explainer_class(name)
    if not cls.supports(backbone):
        raise ValueError(f"{name} does not apply to {backbone.name} ({type(backbone.model).__name__}): it "
                         f"{cls.requires or 'does not support this architecture'}")
    if cls.sampling and "budget" not in kw:
        raise TypeError(f"{name} needs budget= (model calls per image)")
    missing = [k for k in cls.trained_args if k not in kw]
    if missing:
        raise TypeError(f"{name} is trained ({cls.training}): pass its trained {', '.join(missing)} "
                        "(a study obtains it: `Suite.make_explainer`)")
    return cls(backbone, **kw)
