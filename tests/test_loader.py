"""The paper loader (tve_lib.loader): worker processes change nothing but the speed; generated JPEGs."""

import dataclasses

import pandas as pd
import pytest
import torch
from conftest import tiny_backbone

from tve_lib.config import get_profile
from tve_lib.data import FolderImageSet, TensorImageSet, iter_batches
from tve_lib.explainers.tve_model import build_explainer
from tve_lib.explainers.tve_train import pretrain
from tve_lib.imagefolder import scan_imagefolder
from tve_lib.loader import load_batches, resolve_workers
from tve_lib.synthetic import write_jpeg_folder

SIZES = ((40, 48), (48, 36))


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory):
    root = write_jpeg_folder(tmp_path_factory.mktemp("jpegs"), 10, ["a", "b", "c"], seed=0, sizes=SIZES)
    return FolderImageSet("jpegs", scan_imagefolder(root, check=False), 32)


def test_generated_jpegs_are_deterministic_and_resume(tmp_path):
    a = write_jpeg_folder(tmp_path / "a", 3, ["x", "y"], seed=4, sizes=SIZES)
    b = write_jpeg_folder(tmp_path / "b", 3, ["x", "y"], seed=4, sizes=SIZES)
    files = sorted(p.relative_to(a) for p in a.rglob("*.JPEG"))
    assert len(files) == 6 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    (a / files[2]).unlink()  # an interrupted write: the missing file comes back the same
    write_jpeg_folder(a, 3, ["x", "y"], seed=4, sizes=SIZES)
    assert (a / files[2]).read_bytes() == (b / files[2]).read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_deliver_the_same_batches_in_order(jpeg_set, workers):
    batches = [torch.tensor([5, 0, 17]), torch.tensor([29, 3]), torch.tensor([11])]
    ref = [jpeg_set.get(b) for b in batches]
    state = torch.get_rng_state()
    got = list(load_batches(jpeg_set, batches, workers=workers))
    assert torch.equal(torch.get_rng_state(), state)  # loading draws nothing from the global stream
    assert len(got) == len(ref)
    for (x, y, m), (rx, ry, _) in zip(got, ref):
        assert torch.equal(x, rx) and torch.equal(y, ry) and m is None
    sub = jpeg_set.subset(torch.arange(10, 30))
    assert sub.file_backed and torch.equal(next(iter_batches(sub, 4))[0], jpeg_set.get(torch.arange(10, 14))[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_main_process_conversion_divides_as_totensor(dtype):
    """Every uint8 value converts to ToTensor's float (a true division: * (1/255) differs on 126 of 256)."""
    from tve_lib.loader import _to_float

    x = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        got = _to_float(x)
    finally:
        torch.set_default_dtype(old)
    assert got.dtype == dtype and torch.equal(got, x.to(dtype).div(255))


def test_workers_stack_batches_into_shared_memory(monkeypatch):
    """A worker's batch is built in shared memory (pickling it then copies nothing); in-process it is not."""
    import tve_lib.loader as L

    items = [(torch.randint(0, 256, (5, 4, 3), dtype=torch.uint8).permute(2, 0, 1), k) for k in range(3)]
    x, y, m = L._collate(items)
    assert not x.is_shared() and torch.equal(x, torch.stack([a for a, _ in items])) and y.tolist() == [0, 1, 2]
    monkeypatch.setattr(L, "get_worker_info", lambda: object())
    xs, ys, _ = L._collate(items)
    assert xs.is_shared() and xs.dtype == torch.uint8 and torch.equal(xs, x) and torch.equal(ys, y) and m is None


def test_pinned_batches_are_pinned_after_conversion(jpeg_set):
    """The float batch a step copies is the pinned one; without an accelerator pinning is skipped."""
    (x, y, _), = load_batches(jpeg_set, [torch.tensor([3, 1])], workers=1, pin_memory=True)
    pinned = torch.accelerator.is_available()
    assert x.is_pinned() == pinned and y.is_pinned() == pinned
    assert torch.equal(x, jpeg_set.get(torch.tensor([3, 1]))[0])


def test_in_memory_sets_never_start_workers(monkeypatch):
    import tve_lib.loader as L

    def boom(*a, **k):
        raise AssertionError("a DataLoader was built for an in-memory set")

    monkeypatch.setattr(L, "DataLoader", boom)
    ds = TensorImageSet("t", torch.rand(6, 1, 8, 8), torch.arange(6), [str(i) for i in range(6)])
    out = torch.cat([x for x, _, _ in load_batches(ds, [torch.tensor([0, 1]), torch.tensor([5])], workers=2)])
    assert torch.equal(out, ds.get(torch.tensor([0, 1, 5]))[0])


def test_worker_setting():
    assert resolve_workers(0) == 0 and resolve_workers(3) == 3 and resolve_workers(-1) >= 1
    with pytest.raises(ValueError, match="data workers"):
        resolve_workers(-2)


@pytest.mark.parametrize("sampler", ["online", "dense"])
def test_pretraining_from_loader_workers_equals_in_process(jpeg_set, tmp_path, sampler):
    """The images of each step come from worker processes in the same order: the same weights."""
    bb = tiny_backbone("vit")
    cfg = dataclasses.replace(get_profile("smoke").tve, sampler=sampler, arch="two", n_images=24, epochs=2,
                              batch_size=8, n_heldout=6, windows_per_image=2, augment="none",
                              centred_weight=1.0)
    weights = []
    for w in (0, 2):
        jpeg_set.workers = w
        torch.manual_seed(0)
        model = build_explainer(bb, cfg)
        pretrain(model, bb, jpeg_set, jpeg_set, cfg, tmp_path / f"{sampler}{w}.pt", seed=0, progress=False,
                 store_dir=tmp_path / f"store{w}")
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    jpeg_set.workers = -1
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_an_unreadable_upstream_file_fails_up_front_naming_it(tmp_path):
    root = write_jpeg_folder(tmp_path / "up", 3, ["a", "b"], seed=1, sizes=SIZES)
    bad = root / "a" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ValueError, match="broken.JPEG"):
        scan_imagefolder(root, check=False)


def test_a_file_broken_after_the_scan_is_named_when_decoded(jpeg_set, tmp_path):
    root = write_jpeg_folder(tmp_path / "up", 2, ["a", "b"], seed=2, sizes=SIZES)
    ds = FolderImageSet("x", scan_imagefolder(root, check=False), 32)
    ds.files[1].write_bytes(b"")
    with pytest.raises(ValueError, match=ds.files[1].name):
        ds.get(torch.tensor([0, 1]))


def test_weights_that_do_not_fit_the_timm_model_say_so(tmp_path):
    import timm
    from safetensors.torch import save_file

    from tve_lib.backbones import create_model

    spec = dataclasses.replace(get_profile("smoke").backbone("vit"), pretrained=True)
    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=4,
                              embed_dim=48, depth=1, num_heads=1)
    save_file(other.state_dict(), str(tmp_path / f"{spec.timm_name}.safetensors"))
    with pytest.raises(ValueError, match="do not fit timm model"):
        create_model(spec, 10, tmp_path)
    for name, content in ((f"{spec.timm_name}.safetensors", b"\x00\x01"), (f"{spec.timm_name}.pth", b"<html>")):
        bad = tmp_path / "bad" / name
        bad.parent.mkdir(exist_ok=True)
        for f in bad.parent.iterdir():
            f.unlink()
        bad.write_bytes(content)  # a truncated download, a page saved instead of the file
        with pytest.raises(ValueError, match=f"{name} is not a readable state_dict of {spec.timm_name}"):
            create_model(spec, 10, bad.parent)


def test_generated_paper_layouts_load_as_the_paper_tasks(tmp_path):
    """CIFAR-10's python batches, Oxford-IIIT Pets and Imagenette in the layouts torchvision expects,
    loaded by the paper profile's task code (file-backed, decoded by loader workers)."""
    from tve_lib.data import load_task
    from tve_lib.synthetic import write_cifar10, write_imagenette, write_oxford_pets

    write_cifar10(tmp_path, (12, 6), seed=0)
    write_oxford_pets(tmp_path, (6, 4), seed=0)
    write_imagenette(tmp_path, (1, 1), seed=0)
    prof = dataclasses.replace(get_profile("paper"), img_size=32, data_workers=2)
    sizes = {"cifar10": (12, 6, 10), "pets_binary": (6, 4, 2), "imagenette": (10, 10, 10)}
    for name, (n_train, n_test, n_classes) in sizes.items():
        task = load_task(name, prof, tmp_path)
        assert (len(task.train), len(task.test), task.num_classes) == (n_train, n_test, n_classes), name
        assert task.train.file_backed and task.train.workers == 2
        x = torch.cat([b for b, _, _ in iter_batches(task.test, 4)])
        assert x.shape == (n_test, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
        assert torch.equal(x, task.test.get(torch.arange(n_test))[0])
    with pytest.raises(FileNotFoundError, match="cifar10"):
        load_task("cifar10", prof, tmp_path / "nowhere")


def test_loader_benchmark_rows_and_finding(tmp_path):
    from tve_lib.explainers.tve_train import step_seconds
    from tve_lib.report.throughput import loader_finding
    from tve_lib.studies.loading import LOADER_COLUMNS, loader_rows

    rows = loader_rows(tmp_path / "jpegs", 8, (0, 2), batch_size=4, img_size=32)
    assert list(rows.columns) == LOADER_COLUMNS and list(rows.workers) == [0, 2]
    assert (rows.n_images == 8).all() and (rows.images_per_s > 0).all()
    bb = tiny_backbone("vit")
    cfg = dataclasses.replace(get_profile("smoke").tve, sampler="online", batch_size=4, centred_weight=1.0)
    model = build_explainer(bb, cfg)
    before = [p.clone() for p in model.parameters()]
    ds = TensorImageSet("t", torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), ["x"])
    secs = step_seconds(model, bb, ds, cfg, steps=2)
    assert len(secs) == 2 and min(secs) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no optimiser step taken"
    table = rows.assign(what="loader")
    step = {"what": "tve_step", "backbone": "vit", "batch_size": 4, "device": "cpu", "images_per_s": 1e-6}
    text = loader_finding(pd.concat([table, pd.DataFrame([step])], ignore_index=True))
    assert "2 workers deliver" in text and "0 worker(s) keep up" in text
