"""The exact window quantity served per image from the cache: the same numbers as computing it, bit for bit."""

import pytest
import torch
from conftest import tiny_backbone

from tve_lib.cache import ItemCache, content_key
from tve_lib.explainers.tve import all_window_embeddings, exact_window_embeddings
from tve_lib.operators import make_operator


def _images(bb, n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return bb.normalize(torch.rand(n, 3, bb.img_size, bb.img_size, generator=g))


@pytest.mark.parametrize("name", ["vit", "deit", "swin"])
def test_cached_rows_equal_the_computed_ones_in_any_batch(tmp_path, name):
    bb = tiny_backbone(name)
    x = _images(bb)
    ref_k, ref_r = all_window_embeddings(bb, x, 1, chunk=64)
    bb.window_cache = ItemCache(tmp_path)
    # part of the images first, in another batch and order, with another chunk: the rest then comes from the files
    exact_window_embeddings(bb, x[[4, 1, 2]], 1, chunk=7)
    k, r = exact_window_embeddings(bb, x, 1, chunk=64)
    assert torch.equal(k, ref_k) and torch.equal(r, ref_r)
    assert len(list(tmp_path.rglob("*.pt"))) == len(x)


def test_only_missing_rows_are_computed_and_keys_follow_what_shapes_them(tmp_path, monkeypatch):
    bb = tiny_backbone("vit")
    bb.window_cache = ItemCache(tmp_path)
    x = _images(bb)
    calls = []
    real = all_window_embeddings

    def counting(b, xs, radius, chunk=1024):
        calls.append(len(xs))
        return real(b, xs, radius, chunk)

    monkeypatch.setattr("tve_lib.explainers.tve_targets.all_window_embeddings", counting)
    exact_window_embeddings(bb, x[:2], 1)
    exact_window_embeddings(bb, x, 1)
    exact_window_embeddings(bb, x, 1)
    assert calls == [2, 4]
    exact_window_embeddings(bb, x[:1], 2)  # another radius: other rows
    bb.operator = make_operator("mean")  # another removal operator: other rows
    k, _ = exact_window_embeddings(bb, x[:1], 1)
    assert calls == [2, 4, 1, 1]
    assert torch.equal(k, real(bb, x[:1], 1)[0])
    bb.operator = None
    with torch.no_grad():
        next(bb.model.parameters()).add_(0.5)  # other weights: other rows
    exact_window_embeddings(bb, x[:1], 1)
    assert calls[-1] == 1 and len(calls) == 5
    assert len({p.parent for p in tmp_path.rglob("*.pt")}) == 4


def test_a_damaged_row_is_computed_again(tmp_path, capsys):
    bb = tiny_backbone("vit")
    bb.window_cache = ItemCache(tmp_path)
    x = _images(bb, 2)
    exact_window_embeddings(bb, x, 1)
    damaged = next(tmp_path.rglob(f"{content_key(x[0])}.pt"))
    damaged.write_bytes(b"not a checkpoint")
    k, r = exact_window_embeddings(bb, x, 1)
    ref_k, ref_r = all_window_embeddings(bb, x, 1)
    assert torch.equal(k, ref_k) and torch.equal(r, ref_r)
    assert "unusable" in capsys.readouterr().out


def test_content_key_tells_images_apart():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[1, 0, 0, 0] = 1e-7
    assert content_key(x[0]) == content_key(y[0]) != content_key(y[1])
    assert content_key(x[0]) != content_key(x[0].double())


def test_reusing_occlusion_reads_the_exact_windows_and_matches_the_computed_map(tmp_path):
    """The explorer's occlusion (``reuse=True``) shows the map a study computed, without its 2·G² passes."""
    from tve_lib.explainers.simple import Occlusion

    bb = tiny_backbone("vit")
    x = _images(bb, 3)
    head = torch.nn.Linear(bb.embed_dim, 3)
    computed = Occlusion(bb, 1).explain(x, head)
    bb.window_cache = ItemCache(tmp_path)
    exact_window_embeddings(bb, x, 1)  # a study's exact reference of these images
    passes, embed = [], bb.embed
    bb.embed = lambda z: passes.append(len(z)) or embed(z)
    shown = Occlusion(bb, 1, reuse=True).explain(x, head)
    assert torch.equal(shown, computed) and sum(passes) == len(x)  # the predicted class's pass only
    Occlusion(bb, 1).explain(x, head)  # a compared method computes its own: its seconds are measured
    assert sum(passes) == 2 * len(x) + len(x) * 2 * bb.n_players
