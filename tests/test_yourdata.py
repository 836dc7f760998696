"""The demo ImageFolder of notebook 09 round-trips through the loader a user's folder goes through."""

import dataclasses

import numpy as np
import torch

from tve_lib.config import get_profile
from tve_lib.data import Task, TensorImageSet, load_task
from tve_lib.studies.yourdata import demo_imagefolder, demo_sizes, demo_source, write_imagefolder


class _Suite:
    def __init__(self, n_fidelity=6, seed=0):
        prof = get_profile("smoke")
        self.profile = dataclasses.replace(prof, eval=dataclasses.replace(prof.eval, n_fidelity=n_fidelity))
        self.seed = seed
        g = torch.Generator().manual_seed(0)
        cls = ["zero", "one/two", "three", "four"]
        tr = TensorImageSet("src", torch.rand(40, 1, 32, 32, generator=g), torch.arange(40) % 4, cls)
        te = TensorImageSet("src", torch.rand(20, 1, 32, 32, generator=g), torch.arange(20) % 4, cls)
        self._task = Task("src", tr, te, cls)

    def task(self, name):
        assert name == "src"
        return self._task


def test_demo_source_and_sizes():
    cpu = get_profile("cpu")
    assert demo_source(cpu) == "digits"
    assert demo_sizes(cpu) == (cpu.eval.n_fidelity, -(-cpu.eval.n_fidelity // 3))
    paper = get_profile("paper")
    assert demo_source(paper) == paper.tasks[-1]


def test_demo_imagefolder_round_trips(tmp_path):
    suite = _Suite(n_fidelity=6)
    root = demo_imagefolder(suite, tmp_path / "folder", source="src")
    t = load_task(f"folder:{root}", suite.profile)
    # three classes ("/" in a class name cannot become a nested folder), train 6 per class (the source has 10),
    # test ceil(6 / 3) = 2 per class
    assert t.classes == ["one-two", "three", "zero"]
    assert len(t.train) == 18 and len(t.test) == 6
    assert torch.bincount(t.test.labels).tolist() == [2, 2, 2]
    raw, _, masks = t.test.get([0])
    assert raw.shape == (1, 3, 32, 32) and masks is None
    # pixel values survive the PNG round trip (8-bit) and come back as 3 equal channels
    src = suite.task("src").test
    ones = torch.nonzero(src.labels == 1).flatten()
    found = min((raw[0, 0] - src.get([int(i)])[0][0, 0]).abs().max().item() for i in ones)
    assert found <= 0.5 / 255 + 1e-6
    assert torch.equal(raw[0, 0], raw[0, 1])


def test_demo_imagefolder_is_written_once_and_replaced_when_settings_change(tmp_path):
    suite = _Suite(n_fidelity=6)
    root = demo_imagefolder(suite, tmp_path / "f", source="src")
    first = sorted(p.stat().st_mtime_ns for p in root.rglob("*.png"))
    demo_imagefolder(suite, root, source="src")
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*.png")) == first
    demo_imagefolder(_Suite(n_fidelity=3), root, source="src")
    assert len(list((root / "train").rglob("*.png"))) == 9  # 3 per class, old files gone


def test_write_imagefolder_rgb(tmp_path):
    """The files hold the pixels, channels in order and not transposed (a wrong array would still save), the
    same values within 8-bit rounding."""
    from PIL import Image

    imgs = torch.rand(2, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    imgs[0, 0], imgs[0, 2] = 1.0, 0.0  # a red image: a swapped channel order would write blue
    write_imagefolder(imgs, torch.tensor([0, 1]), ["a", "b"], tmp_path)
    files = sorted(tmp_path.rglob("*.png"))
    assert [p.parent.name for p in files] == ["a", "b"]
    for f, img in zip(files, imgs):
        with Image.open(f) as im:
            assert im.mode == "RGB" and im.size == (6, 8)  # PIL's size is (width, height)
            arr = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
        assert (arr - img).abs().max() <= 0.5 / 255 + 1e-6
    with Image.open(files[0]) as im:
        assert im.getpixel((0, 0))[0] == 255 and im.getpixel((0, 0))[2] == 0


def test_written_folder_has_the_same_fingerprint_in_every_run(tmp_path):
    """The demo folder's name (its fingerprint reads modification times) is the same for the same images written
    at another time, and differs for other images: two runs give the same CSVs."""
    import os
    import time

    from tve_lib.imagefolder import scan_imagefolder
    from tve_lib.studies.yourdata import write_imagefolder

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.arange(6) % 2
    a = write_imagefolder(x, y, ["a", "b"], tmp_path / "one")
    time.sleep(0.05)
    b = write_imagefolder(x, y, ["a", "b"], tmp_path / "two")
    assert scan_imagefolder(a).fingerprint == scan_imagefolder(b).fingerprint
    c = write_imagefolder(x.flip(0), y, ["a", "b"], tmp_path / "three")
    assert scan_imagefolder(c).fingerprint != scan_imagefolder(a).fingerprint
    assert os.stat(next((tmp_path / "one" / "a").iterdir())).st_mtime > 1e9  # a plausible time
