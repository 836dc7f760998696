"""Profiles, data, backbones, heads, the removal operator, checkpoints and bad input."""

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_backbone

from tve_lib import data as data_mod
from tve_lib.backbone_training import obtain_backbone
from tve_lib.backbones import Backbone, create_model, find_weights, wrap
from tve_lib.config import BackboneSpec, get_profile
from tve_lib.heads import check_head, fold_standardization, head_accuracy, make_head, train_head
from tve_lib.io import CorruptCheckpoint, load_torch, save_torch, upsert_csv
from tve_lib.masking import apply_mask, pool_map, top_k_mask, windows
from tve_lib.studies.suite import Suite
from tve_lib.token_grids import derive_grid


# ----------------------------------------------------------------------------- profiles
def test_unknown_profile_backbone_task_names(smoke):
    with pytest.raises(KeyError, match="unknown profile 'nope'.*smoke"):
        get_profile("nope")
    with pytest.raises(KeyError, match="unknown backbone 'resnet'.*vit, deit, swin"):
        smoke.backbone("resnet")
    with pytest.raises(KeyError, match="unknown task 'cats'"):
        data_mod.load_task("cats", smoke)
    with pytest.raises(KeyError, match="unknown profile field 'tve.nope'"):
        get_profile("smoke", {"tve.nope": 1})


def test_overrides_are_dotted_and_change_the_digest():
    a = get_profile("smoke")
    b = get_profile("smoke", {"tve.epochs": 7, "eval.sparsities": [0.0, 0.5]})
    assert b.tve.epochs == 7 and b.eval.sparsities == (0.0, 0.5)
    assert a.digest("tve") != b.digest("tve") and a.digest("backbones") == b.digest("backbones")


@pytest.mark.parametrize("key, value, expected", [("tve.epochs", "2", "int"), ("tve.epochs", 2.5, "int"),
                                                  ("tve.residual", 1, "bool"), ("tve.radius", "3", "int | None"),
                                                  ("tve.lr", "1e-3", "float"), ("eval.sparsities", 0.5, "tuple"),
                                                  ("scaling.dense", [[10, 2, 3]], "tuple"), ("tve", 3, "TVEConfig")])
def test_an_override_of_the_wrong_type_fails_when_the_profile_is_made(key, value, expected):
    """A value the field cannot hold (a string for epochs, a flag given as 1, a pair given as three) is refused
    at once, naming the field and its type, not deep in a notebook; lists become tuples, integers floats."""
    with pytest.raises(TypeError, match=f"profile field '{key}' takes {re.escape(expected)}.*, got "):
        get_profile("smoke", {key: value})
    ok = get_profile("smoke", {"tve.lr": 1, "tve.radius": None, "scaling.dense": [[10, 2]], "compile": "eager"})
    assert ok.tve.lr == 1.0 and isinstance(ok.tve.lr, float) and ok.scaling.dense == ((10, 2),)
    assert ok.digest("tve") == get_profile("smoke", {"tve.lr": 1.0}).digest("tve")
    sweep = get_profile("smoke", {"tve.epochs": np.int64(3), "tve.residual": np.bool_(False)})  # from a table
    assert type(sweep.tve.epochs) is int and sweep.tve.residual is False


@pytest.mark.parametrize("key, value", [("head_train.epochs", -2), ("head_train.lr", 0.0),
                                        ("backbone_train.epochs", 0), ("backbone_train.batch_size", -1),
                                        ("head_train.mlp_hidden", 0)])
def test_a_count_or_rate_that_is_not_positive_fails_when_the_profile_is_made(key, value):
    """A head trained for -2 epochs was an untrained head, silently; 0 backbone epochs a scheduler's error."""
    cls, field = {"head_train": "HeadTrain", "backbone_train": "BackboneTrain"}[key.split(".")[0]], key.split(".")[1]
    with pytest.raises(ValueError, match=f"{cls}.{field} must be > 0, got {value}"):
        get_profile("smoke", {key: value})
    assert get_profile("smoke", {"head_train.mlp_hidden": None}).head_train.mlp_hidden is None


def test_a_field_parsed_from_text_is_typed_by_its_annotation():
    """Command-line text (``--tve FIELD=VALUE``) is read as the field's annotation says, as an override is
    checked: the literal where it fits, the text itself for a str field, an error naming the type otherwise."""
    from tve_lib.config import EvalConfig, TVEConfig, parse_field

    assert parse_field(TVEConfig, "radius", "None") is None and parse_field(TVEConfig, "radius", "3") == 3
    assert parse_field(TVEConfig, "augment", "none") == "none" and parse_field(TVEConfig, "arch", "1") == "1"
    assert parse_field(TVEConfig, "residual", "FALSE") is False
    assert parse_field(EvalConfig, "sparsities", "0,0.5") == (0.0, 0.5)
    assert parse_field(EvalConfig, "shapley_groups", "3,4") == (3, 4)
    for field, text, expected in (("residual", "no", "bool"), ("epochs", "2.0", "int"), ("lr", "fast", "float")):
        with pytest.raises(ValueError, match=f"TVEConfig field '{field}' takes {expected}, got '{text}'"):
            parse_field(TVEConfig, field, text)
    with pytest.raises(ValueError, match="takes tuple"):
        parse_field(EvalConfig, "shapley_groups", "3,4,5")
    with pytest.raises(ValueError, match="unknown TVEConfig field 'width'"):
        parse_field(TVEConfig, "width", "3")


# ----------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name,prefix", [("vit", 1), ("deit", 2), ("swin", 0)])
def test_tiny_backbone_shapes_and_grid(name, prefix):
    bb = tiny_backbone(name)
    assert (bb.grid, bb.patch) == (8, 4)
    assert bb.num_prefix_tokens == prefix
    x = torch.randn(3, 3, 32, 32)
    assert bb.embed(x).shape == (3, bb.embed_dim)


@pytest.mark.parametrize("timm_name,grid,patch", [
    ("vit_base_patch16_224", 14, 16), ("deit_base_distilled_patch16_224", 14, 16),
    ("swin_base_patch4_window7_224", 14, 16)])
def test_paper_grids_derived_from_model_config(timm_name, grid, patch):
    import timm

    with torch.device("meta"):
        m = timm.create_model(timm_name, pretrained=False)
    assert derive_grid(m, 224, 16) == (grid, patch)


def test_embed_rejects_wrong_channels_size_and_nans():
    bb = tiny_backbone("vit")
    with pytest.raises(ValueError, match=r"expected normalised images \[B, 3, 32, 32\]"):
        bb.embed(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\], got \(2, 3, 28, 28\)"):
        bb.embed(torch.randn(2, 3, 28, 28))
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bb.embed(x)
    with pytest.raises(ValueError, match="expected 32x32"):
        bb.normalize(torch.rand(2, 1, 28, 28))
    # images not yet scaled to [0, 1] (a PIL array, torchvision's uint8 tensors) fail at once, saying what to do
    raw8 = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match="expected normalised float images, got torch.uint8"):
        bb.embed(raw8.expand(-1, 3, -1, -1))
    with pytest.raises(TypeError, match="got torch.uint8 .uint8 images: divide by 255 first"):
        bb.normalize(raw8)
    with pytest.raises(ValueError, match="expected raw images in \\[0, 1\\], got values up to 255"):
        bb.normalize(raw8.float().index_fill_(0, torch.tensor([0]), 255.0))
    assert bb.normalize(torch.rand(2, 1, 32, 32) * 1.05).shape == (2, 3, 32, 32)  # a resize's overshoot is fine


def test_train_head_checks_its_data_before_training():
    from tve_lib.config import HeadTrain

    cfg, emb = HeadTrain(epochs=1), torch.randn(6, 8)
    for e, y, msg in ((emb, torch.tensor([0, 1, 2, 0, 1, 5]), r"labels must lie in \[0, 3\), got 0..5"),
                      (emb, torch.zeros(5, dtype=torch.long), r"embeddings \[N, D\] and labels \[N\]"),
                      (emb.index_fill(0, torch.tensor([2]), float("nan")), torch.zeros(6, dtype=torch.long), "NaN")):
        with pytest.raises(ValueError, match=msg):
            train_head(e, y, "linear", 3, cfg, 0)


def test_seeded_library_calls_leave_the_callers_random_stream():
    from tve_lib.config import HeadTrain
    from tve_lib.studies.throughput import random_heads

    emb, y = torch.randn(12, 8, generator=torch.Generator().manual_seed(1)), torch.arange(12) % 3
    out = []
    for state in (5, 6):  # whatever state the caller is in, the same head; the caller's stream moves not at all
        torch.manual_seed(state)
        before = torch.get_rng_state()
        out.append(train_head(emb, y, "mlp", 3, HeadTrain(epochs=2), 0)[0].state_dict())
        out.append(random_heads(8, [3], "cpu", seed=4)[0].state_dict())
        assert torch.equal(torch.get_rng_state(), before)
    for a, b in ((out[0], out[2]), (out[1], out[3])):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_head_embedding_mismatch_is_reported():
    bb = tiny_backbone("vit")
    check_head(make_head("mlp", bb.embed_dim, 3), bb.embed_dim)
    with pytest.raises(ValueError, match=f"head expects 7-dim inputs but the backbone's embedding is {bb.embed_dim}"):
        check_head(make_head("linear", 7, 3), bb.embed_dim)
    with pytest.raises(KeyError, match="unknown head kind"):
        make_head("conv", 4, 2)


# ----------------------------------------------------------------------------- removal operator
def test_removal_operator_exact_pixels():
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    keep = torch.ones(2, 64, dtype=torch.bool)
    keep[0, 9] = False  # row 1, col 1 of the 8x8 grid: pixels 4..7 x 4..7
    y = apply_mask(x, keep, 8)
    assert torch.equal(y[1], x[1])
    assert (y[0, :, 4:8, 4:8] == 0).all()
    ref = x[0].clone()
    ref[:, 4:8, 4:8] = 0
    assert torch.equal(y[0], ref)
    assert (apply_mask(x, torch.zeros(64), 8) == 0).all()
    assert torch.equal(apply_mask(x, torch.zeros(64), 8, removal_value=0.5), torch.full_like(x, 0.5))
    # K masks per image and soft masks blend toward the removal value
    assert apply_mask(x, keep.unsqueeze(1).expand(2, 5, 64), 8).shape == (2, 5, 3, 32, 32)
    half = apply_mask(x, torch.full((2, 64), 0.5, dtype=torch.float64), 8)
    assert torch.allclose(half, x / 2)


def test_windows_are_clipped_chebyshev_balls():
    w = windows(8, 1)
    assert w.shape == (64, 64) and w.diagonal().all()
    counts = w.sum(1).view(8, 8)
    assert counts[0, 0] == 4 and counts[0, 3] == 6 and counts[3, 3] == 9
    assert torch.equal(w, w.T)
    assert windows(14, 2).sum(1).max() == 25


def test_pool_map_and_top_k():
    a = torch.full((1, 8, 8), 3.0)
    assert torch.allclose(pool_map(a, 2), a)
    delta = torch.zeros(1, 8, 8)
    delta[0, 3, 3] = 9.0
    p = pool_map(delta, 1)  # each cell: the mean over its 3x3 neighbourhood inside the grid
    assert torch.allclose(p[0, 2:5, 2:5], torch.ones(3, 3)) and p.sum() == pytest.approx(9.0)
    corner = torch.zeros(1, 8, 8)
    corner[0, 0, 0] = 4.0
    assert pool_map(corner, 1)[0, 0, 0] == pytest.approx(1.0)  # 4 cells inside the grid at the corner
    s = torch.tensor([[0.1, 0.9, 0.5, 0.9]])
    assert top_k_mask(s, 2).tolist() == [[False, True, False, True]]


# ----------------------------------------------------------------------------- data
def test_tasks_are_deterministic_and_have_regions(smoke):
    t1 = data_mod.load_task("fashion_mosaic", smoke)
    t2 = data_mod.load_task("fashion_mosaic", smoke)
    x1, y1, m1 = t1.test.get([0, 1, 2])
    x2, y2, m2 = t2.test.get([0, 1, 2])
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(m1, m2)
    assert t1.has_regions and m1.shape == (3, 32, 32)
    assert (m1.flatten(1).sum(1) == 16 * 16).all()  # one quadrant
    d = data_mod.load_task("digits", smoke)
    assert d.num_classes == 10 and d.train.get([0])[0].shape == (1, 1, 32, 32)
    b = data_mod.load_task("fashion_binary", smoke)
    assert set(b.test.labels.tolist()) == {0, 1}


def test_upstream_and_downstream_are_disjoint(smoke):
    up_tr, up_va = data_mod.load_upstream(smoke)
    assert len(up_tr) + len(up_va) == 60000  # Fashion-MNIST train only
    # downstream tasks come from the test split: no image of task 1 is an upstream image
    b = data_mod.load_task("fashion_binary", smoke)
    xb = b.test.get(range(20))[0].flatten(1)
    xu = up_tr.get(range(2000))[0].flatten(1)
    assert torch.cdist(xb, xu).min() > 0


def test_missing_dataset_and_folders(tmp_path, monkeypatch, smoke):
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION", tmp_path / "none")
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise RuntimeError("no internet")

    monkeypatch.setattr(tvd, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data_mod.load_fashion_mnist("train", tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data_mod.load_task(f"folder:{tmp_path / 'missing'}", smoke)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a usable ImageFolder"):
        data_mod.load_task(f"folder:{tmp_path / 'empty'}", smoke)
    with pytest.raises(FileNotFoundError, match="CIFAR10"):
        data_mod.load_task("cifar10", get_profile("paper"), tmp_path)


def write_image_folder(root: Path, n_per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_folder_task_splits_and_resizes(tmp_path, smoke):
    write_image_folder(tmp_path / "imgs", n_per_class=5)
    t = data_mod.load_task(f"folder:{tmp_path / 'imgs'}", smoke)
    assert t.classes == ["a", "b"] and len(t.train) + len(t.test) == 10
    assert t.test.get([0])[0].shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------- weights (paper path)
def test_missing_weights_error_names_the_file(tmp_path):
    spec = BackboneSpec("vit", "vit_base_patch16_224", pretrained=True)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/vit_base_patch16_224.safetensors"):
        find_weights(spec, tmp_path)


def test_paper_path_loads_local_weights(tmp_path):
    """The paper loading code with a tiny random model saved where the suite looks for weights."""
    p = get_profile("smoke")
    spec = p.backbone("deit")
    torch.manual_seed(3)
    src = create_model(spec, 5)
    torch.save(src.state_dict(), tmp_path / f"{spec.timm_name}.pth")
    loaded = create_model(dataclasses.replace(spec, pretrained=True), 5, tmp_path)
    got = loaded.state_dict()
    body = [k for k in src.state_dict() if not k.startswith("head")]  # timm re-inits classifiers
    assert len(body) > 10
    for k in body:
        assert torch.equal(src.state_dict()[k], got[k]), k


# ----------------------------------------------------------------------------- checkpoints
def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "ck.pt"
    save_torch({"a": 1}, p)

    def boom(obj, f):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_torch({"a": 2}, p)
    monkeypatch.undo()
    assert load_torch(p) == {"a": 1}
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_truncated_checkpoint_is_detected_and_retrained(tmp_path):
    prof = get_profile("smoke", {"backbone_train.n_images": 64, "backbone_train.epochs": 1})
    up = data_mod.load_upstream(prof)[0]
    bb, _ = obtain_backbone(prof, "vit", tmp_path, torch.device("cpu"), 0, upstream=up)
    ck = next(tmp_path.glob("backbone_vit_*.pt"))
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(CorruptCheckpoint, match="unreadable"):
        load_torch(ck)
    bb2, _ = obtain_backbone(prof, "vit", tmp_path, torch.device("cpu"), 0, upstream=up)
    for a, b in zip(bb.state_dict().values(), bb2.state_dict().values()):
        assert torch.equal(a, b)  # retrained, deterministically by seed
    load_torch(ck)


def test_backbone_training_resumed_after_a_kill_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    """Swin's drop-path draws from the global generator: seeded per epoch, a resumed run is exact."""
    import tve_lib.backbone_training as bbs

    prof = get_profile("smoke", {"backbone_train.n_images": 64, "backbone_train.epochs": 2})
    up = data_mod.load_upstream(prof)[0]
    ref, _ = obtain_backbone(prof, "swin", tmp_path / "a", torch.device("cpu"), 0, upstream=up)
    real = bbs.checkpoint

    def killed_after_first_epoch(part, objs, **state):
        real(part, objs, **state)
        raise KeyboardInterrupt  # the process dies right after epoch 1's checkpoint

    monkeypatch.setattr(bbs, "checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        obtain_backbone(prof, "swin", tmp_path / "b", torch.device("cpu"), 0, upstream=up)
    monkeypatch.undo()
    torch.rand(7)  # the resumed process starts with another global generator state
    got, hist = obtain_backbone(prof, "swin", tmp_path / "b", torch.device("cpu"), 0, upstream=up)
    assert len(hist) == 2
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------- determinism
def test_head_training_is_deterministic_by_seed(smoke):
    e = torch.randn(50, 8)
    y = (e[:, 0] > 0).long()
    h1, _ = train_head(e, y, "mlp", 2, smoke.head_train, seed=1)
    h2, _ = train_head(e, y, "mlp", 2, smoke.head_train, seed=1)
    h3, _ = train_head(e, y, "mlp", 2, smoke.head_train, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(h1.parameters(), h2.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(h1.parameters(), h3.parameters()))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_folded_standardization_is_exact(kind):
    torch.manual_seed(0)
    e = torch.randn(40, 6, dtype=torch.float64) * torch.tensor([1e-3, 1, 10, 100, 0.5, 3.0]) + 7
    mean, std = e.mean(0), e.std(0)
    head = make_head(kind, 6, 3).double()
    z_out = head((e - mean) / std)
    fold_standardization(head, mean, std)
    torch.testing.assert_close(head(e), z_out, rtol=1e-10, atol=1e-10)
    assert isinstance(head if kind == "linear" else head[0], torch.nn.Linear)


def test_standardized_probe_learns_badly_scaled_features(smoke):
    g = torch.Generator().manual_seed(0)
    e = torch.randn(400, 4, generator=g) * torch.tensor([1e-3, 1.0, 1.0, 1.0])
    y = (e[:, 0] > 0).long()  # the decisive feature is 1000x smaller than the others
    cfg = dataclasses.replace(smoke.head_train, epochs=150)
    h, _ = train_head(e, y, "linear", 2, cfg, seed=0)
    assert head_accuracy(h, e, y) > 0.95  # evaluated on raw embeddings: the fold is exact
    h_raw, _ = train_head(e, y, "linear", 2, dataclasses.replace(cfg, standardize=False), seed=0)
    assert head_accuracy(h_raw, e, y) < 0.9


def test_upsert_csv_replaces_rows_by_key(tmp_path):

    p = tmp_path / "s.csv"
    upsert_csv(pd.DataFrame({"method": ["a", "b"], "v": [1, 2]}), p, ["method"])
    df = upsert_csv(pd.DataFrame({"method": ["b", "c"], "v": [5, 6]}), p, ["method"])
    assert sorted(zip(df.method, df.v)) == [("a", 1), ("b", 5), ("c", 6)]


def test_suite_resolves_device_and_paths(tmp_path, monkeypatch):
    s = Suite("smoke", results_dir=str(tmp_path), device="cpu")
    assert s.path("tve", "x.csv") == tmp_path / "smoke" / "tve" / "x.csv"
    assert (tmp_path / "smoke" / "tve").is_dir()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, wherever this runs
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        Suite("smoke", results_dir=str(tmp_path), device="cuda")
    for bad in ("1", 1.0, True, None):  # "1" gave a string-formatting error deep in a cache name
        with pytest.raises(TypeError, match=r"seed must be a whole number \(got .*\); e.g. Suite\('cpu', seed=1\)"):
            Suite("smoke", seed=bad, results_dir=str(tmp_path), device="cpu")
    assert Suite("smoke", seed=np.int64(3), results_dir=str(tmp_path), device="cpu").seed == 3


def test_a_mistyped_tve_setting_fails_before_pretraining(tmp_path, monkeypatch):
    """A typo in a transfer setting used to surface after pre-training (and then blamed the cache); a fastshap
    keyword it does not take was dropped silently."""
    s = Suite("smoke", results_dir=str(tmp_path), device="cpu")

    def no_training(*a, **k):
        raise AssertionError("pre-training started before the settings were checked")

    monkeypatch.setattr(Suite, "pretrained_tve", no_training)
    with pytest.raises(TypeError, match=r"unknown TVE setting\(s\) \['lam_plsu'\]; expected some of: lam_plus"):
        s.make_explainer("tve", "vit", lam_plsu=2.0)
    with pytest.raises(TypeError, match="TVE's lam_plus takes a number, got 'a'"):
        s.explainer("vit", lam_plus="a")
    with pytest.raises(TypeError, match=r"fastshap takes task=, head=, eval_images=; got \['hed'\]"):
        s.make_explainer("fastshap", "vit", task="digits", hed="mlp")


def test_the_runner_refuses_a_bad_device_or_notebook_list_before_it_starts(tmp_path, capsys, monkeypatch):
    """An empty --only ran every notebook; a device torch cannot name, or CUDA on a machine without it, gave a raw
    traceback after the results folder was made."""
    from tve_lib import runner

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for args, msg in ((["--only"], "expected at least one argument"),
                      (["--device", "gpu"], "DEVICE='gpu': expected 'auto', 'cpu', 'cuda'"),
                      (["--device", "cuda"], "CUDA is not available"), (["--only", "99"], "no notebook matches")):
        with pytest.raises(SystemExit):
            runner.main(["--profile", "smoke", "--results-dir", str(tmp_path / "r"), *args])
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_backbone_wrapper_validates_raw_images():
    bb: Backbone = tiny_backbone("swin")
    with pytest.raises(ValueError, match="expected raw images"):
        bb.normalize(torch.rand(2, 4, 32, 32))
    assert bb.normalize(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    assert isinstance(wrap(create_model(get_profile("smoke").backbone("vit"), 2), get_profile("smoke").backbone("vit"),
                           get_profile("smoke")), Backbone)


def test_a_notebooks_rerun_replaces_only_its_own_summary_rows(tmp_path):
    """Regression: rerunning notebook 03 alone deleted notebook 05's and 06's rows of fidelity/summary.csv."""
    from tve_lib.schema import SUMMARY_KEYS

    p = tmp_path / "summary.csv"
    base = dict(backbone="vit", task="t", head="linear", budget=0, metric="fid_plus_auc", seed=0)
    nb03 = pd.DataFrame([base | dict(method=m, value=v) for m, v in (("tve", 0.5), ("occlusion", 0.6))])
    nb05 = pd.DataFrame([base | dict(method=m, selection=s, value=v)
                         for m, s, v in (("tve", "none", 0.4), ("ltx", "loss", 0.7))])
    nb06 = pd.DataFrame([base | dict(method="xvec", head="self_explaining", value=0.3, **{"lambda": 1.0}),
                         base | dict(method="tve", value=0.45, **{"lambda": 1.0})])
    for rows in (nb03, nb05, nb06):
        upsert_csv(rows, p, SUMMARY_KEYS)
    before = pd.read_csv(p)
    after = upsert_csv(nb03.assign(value=[0.55, 0.65]), p, SUMMARY_KEYS)  # notebook 03 alone, again
    assert len(after) == len(before) == 6
    others = before[before.selection.notna() | before["lambda"].notna()]
    kept = pd.read_csv(p)
    kept = kept[kept.selection.notna() | kept["lambda"].notna()]
    pd.testing.assert_frame_equal(others.reset_index(drop=True), kept.reset_index(drop=True))
    assert sorted(pd.read_csv(p).query("selection != selection and `lambda` != `lambda`").value) == [0.55, 0.65]


def test_bad_input_at_every_entry_point_a_notebook_calls(tmp_path):
    """A user's value is checked before any work: task, folder, backbone, head kind, method, budget, images."""
    s = Suite("smoke", results_dir=str(tmp_path), device="cpu")
    bb = tiny_backbone("vit")
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        s.task("nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        s.task(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(KeyError, match="unknown backbone 'resnet'"):
        s.backbone("resnet")
    with pytest.raises(KeyError, match="unknown head kind 'svm'"):
        s.head("vit", "fashion_binary", "svm")
    with pytest.raises(KeyError, match="unknown explainer 'shap'"):
        s.make_explainer("shap", "vit")
    from tve_lib.explainers import make_explainer

    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="budget must be a whole number"):
            make_explainer("kernelshap", bb, budget=bad)
    with pytest.raises(ValueError, match="expected raw images"):
        bb.normalize(torch.rand(2, 4, 32, 32))
    with pytest.raises(ValueError, match="expected 32x32 images"):
        bb.normalize(torch.rand(2, 3, 28, 28))
    x = bb.normalize(torch.rand(2, 1, 32, 32))
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make_explainer("random", bb).explain(x, make_head("linear", bb.embed_dim, 2))


def test_a_kill_during_a_csv_write_leaves_the_old_table(tmp_path):
    """SIGKILL between writing a table and renaming it into place: the old table stays whole, and the
    leftover temporary file is hidden (``.name.*.tmp``) so no reader takes it for a table."""
    import signal
    import subprocess
    import sys
    import time

    from tve_lib.io import write_csv
    from tve_lib.report.tables import load_tables

    root = tmp_path / "smoke"
    path = root / "fidelity" / "summary.csv"
    old = pd.DataFrame({"method": ["tve"], "metric": ["fid_plus_auc"], "value": [0.5]})
    write_csv(old, path)
    child = (f"import os, time, pandas as pd\nos.replace = lambda *a: time.sleep(600)\n"
             f"from tve_lib.io import write_csv\nwrite_csv(pd.DataFrame({{'value': range(100000)}}), {str(path)!r})")
    p = subprocess.Popen([sys.executable, "-c", child])
    t0 = time.time()
    while not any(path.parent.glob(".summary.csv.*.tmp")):
        assert p.poll() is None and time.time() - t0 < 120, "the writer never reached its rename"
        time.sleep(0.02)
    time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    pd.testing.assert_frame_equal(pd.read_csv(path), old)
    assert [t.name.startswith(".") for t in path.parent.iterdir() if t.suffix == ".tmp"] == [True]
    pd.testing.assert_frame_equal(load_tables(root, verbose=False)["summary"], old)
    write_csv(old.assign(value=0.6), path)  # the next write succeeds beside the leftover
    assert pd.read_csv(path).value.tolist() == [0.6]


# ----------------------------------------------------------------------------- setup
def test_setup_refuses_a_disk_too_small_for_the_venv_before_pip_starts(tmp_path):
    """`./run_all.sh` says how much space the venv needs, and where, instead of failing half-way in pip."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TVE_VENV=str(tmp_path / "venv"), TVE_VENV_NEEDS_GB="10000000")
    r = subprocess.run([str(root / "run_all.sh"), "--setup-only"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert "needs about 10000000 GB free" in r.stderr and "set TVE_VENV" in r.stderr
    assert not (tmp_path / "venv").exists()  # nothing was created


def test_runner_skips_a_notebook_only_when_its_stamp_matches_a_clean_commit(tmp_path):
    from tve_lib.io import write_json
    from tve_lib.runner import _is_complete

    out, stamp, params = tmp_path / "00.ipynb", tmp_path / "00.stamp.json", {"PROFILE": "smoke", "SEED": 0}
    assert not _is_complete(stamp, out, "abc", params)  # never run
    write_json({"commit": "abc", "parameters": params, "wall_s": 1.0}, stamp)
    assert not _is_complete(stamp, out, "abc", params)  # stamped, but its executed copy is gone
    out.write_text("{}")
    assert _is_complete(stamp, out, "abc", params)
    assert not _is_complete(stamp, out, "abd", params)
    assert not _is_complete(stamp, out, "abc-dirty", params)
    assert not _is_complete(stamp, out, "abc", {**params, "SEED": 1})
