"""A continued budget of the scaling study (`Suite.continued_explainer`): it starts from the weights of the
explainer it continues, counts that explainer's training in its seconds, may change only images and epochs, and
is cached apart from an explainer trained from the start."""

import dataclasses

import pytest
import torch

from tve_lib.io import load_torch
from tve_lib.studies.suite import Suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return Suite("smoke", device="cpu", results_dir=str(tmp_path_factory.mktemp("continued")))


def test_continued_explainer_starts_from_the_base_weights_and_counts_its_seconds(suite):
    base = suite.profile.tve
    suite.explainer("vit", base)
    state = load_torch(suite.tve_checkpoint("vit", base))
    frozen = dataclasses.replace(base, lr=0.0)  # no step moves a weight: what comes out is what went in
    ckpt = suite.tve_checkpoint("vit", frozen, continues=base)
    out = suite.pretrained_tve("vit", frozen, ckpt, state["radius"], {}, init=state)
    trained = out.model.state_dict()
    assert trained.keys() == state["model"].keys()
    for k, v in state["model"].items():
        assert torch.equal(trained[k], v), k
    last, hist = state["history"][-1], load_torch(ckpt)["history"]
    # the base's training seconds, then this budget's targets and its own epochs
    assert hist[-1]["seconds"] > last["seconds"] - last["target_seconds"] + hist[-1]["target_seconds"]


def test_continued_budget_changes_only_images_and_epochs_and_is_cached_apart(suite):
    base = suite.profile.tve
    with pytest.raises(ValueError, match="only n_images and epochs"):
        suite.continued_explainer("vit", dataclasses.replace(base, depth=base.depth + 1))
    more = dataclasses.replace(base, epochs=base.epochs + 1)
    scratch, cont = suite.tve_checkpoint("vit", more), suite.tve_checkpoint("vit", more, continues=base)
    assert scratch != cont and cont.name.startswith("tve_vit_cont_")
    assert suite.tve_checkpoint("vit", base) != cont
