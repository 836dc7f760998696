"""A user's ImageFolder: validated up front, bad files skipped and listed, images decoded as a viewer shows
them, and named and cached by content, not by path (regressions of the reliability issue)."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tve_lib import data as data_mod
from tve_lib.config import get_profile
from tve_lib.imagefolder import check_image, load_image, scan_imagefolder, to_rgb


@pytest.fixture(scope="module")
def smoke():
    return get_profile("smoke")


def _folder(root: Path, n: int = 4, size: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _damage(root: Path) -> None:
    """What a real folder holds: a zero-byte PNG, a truncated JPEG, JupyterLab's checkpoints, a hidden file."""
    (root / "cat" / "empty.png").write_bytes(b"")
    buf = root / "dog" / "cut.jpg"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(buf, quality=90)
    buf.write_bytes(buf.read_bytes()[: len(buf.read_bytes()) // 2])
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")  # a format PIL does not read


def test_bad_files_are_skipped_and_listed_up_front(tmp_path, smoke):
    root = _folder(tmp_path / "imgs")
    _damage(root)
    with pytest.warns(UserWarning, match="skipped 4 unreadable or non-image file"):
        scan = scan_imagefolder(root)
    assert scan.classes == ["cat", "dog"]  # .ipynb_checkpoints is no class
    # hidden files are not the user's images; every other file that is not read is listed, with its reason
    assert sorted(s["file"] for s in scan.skipped) == ["cat/empty.png", "cat/phone.HEIC", "dog/cut.jpg",
                                                       "dog/notes.txt"]
    reasons = {s["file"]: s["reason"] for s in scan.skipped}
    assert "truncated" in reasons["dog/cut.jpg"].lower() and "empty" in reasons["cat/empty.png"]
    assert "'.HEIC' is not read" in reasons["cat/phone.HEIC"] and ".png" in reasons["cat/phone.HEIC"]
    assert "'.txt' is not read" in reasons["dog/notes.txt"]
    assert len(scan.files) == 8 and all(not p.name.startswith(".") for p in scan.files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = data_mod.load_task(f"folder:{root}", smoke)
    x, y, _ = t.train.get(torch.arange(len(t.train)))  # every kept image decodes: nothing fails later
    assert x.shape[1:] == (3, 32, 32) and len(t.train) + len(t.test) == 8
    assert len(t.skipped) == 4 and {"dog/cut.jpg", "cat/phone.HEIC"} <= {s["file"] for s in t.skipped}


def test_suite_writes_the_skipped_files(tmp_path):
    from tve_lib import Suite

    root = _folder(tmp_path / "imgs")
    (root / "cat" / "empty.png").write_bytes(b"")
    s = Suite("smoke", results_dir=str(tmp_path / "res"), device="cpu")
    with pytest.warns(UserWarning):
        t = s.task(f"folder:{root}")
    listed = list((tmp_path / "res" / "smoke" / "data").glob("skipped_*.csv"))
    assert len(listed) == 1 and pd.read_csv(listed[0]).file.tolist() == ["cat/empty.png"]
    assert t.name.startswith("folder:imgs@")


def test_a_class_without_readable_images_is_an_error(tmp_path):
    root = _folder(tmp_path / "imgs")
    for f in (root / "dog").iterdir():
        f.write_bytes(b"")
    with pytest.raises(ValueError, match="'dog' have no readable image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan_imagefolder(root)
    shutil.rmtree(root / "dog")
    (root / "dog").mkdir()
    (root / "dog" / "a.heic").write_bytes(b"heic")  # the error says why the class came out empty
    (root / "cat" / "notes.txt").write_text("another class's file is not the reason")
    with pytest.raises(ValueError, match=r"'dog' have no readable image \(skipped: dog/a.heic: extension '.heic'") as e:
        scan_imagefolder(root)
    assert "notes.txt" not in str(e.value)


def test_folder_layouts_a_head_could_not_learn_from_are_errors(tmp_path, smoke):
    """Split folders taken for classes (train/ + val/), one class, or a class missing from a split: refused when the
    task is made, saying what was expected, before any head is trained on it."""
    _folder(tmp_path / "trainval" / "train")
    _folder(tmp_path / "trainval" / "val")
    with pytest.raises(ValueError, match=r"has train/ but no test/ \(found: val/\); expected .*/train/<class>/"):
        data_mod.make_folder_task(tmp_path / "trainval", smoke)
    for split in ("val", "validation"):  # no train/ or test/, but split folders all the same
        _folder(tmp_path / "splits" / split)
    with pytest.raises(ValueError, match=r"class folders are \['val', 'validation'\], split names"):
        data_mod.make_folder_task(tmp_path / "splits", smoke)
    one = tmp_path / "one"
    _folder(one)
    shutil.rmtree(one / "dog")
    with pytest.raises(ValueError, match=r"needs at least 2 class sub-folders, found \['cat'\]"):
        data_mod.make_folder_task(one, smoke)
    tiny = _folder(tmp_path / "tiny", n=1)  # one image per class: 70/30 leaves a class out of a split
    with pytest.raises(ValueError, match=r"have no image in the (train|test) split"):
        data_mod.make_folder_task(tiny, smoke)
    assert data_mod.make_folder_task(_folder(tmp_path / "fine"), smoke).classes == ["cat", "dog"]


def test_checks_are_cached_by_fingerprint(tmp_path, monkeypatch):
    import tve_lib.imagefolder as imf

    root = _folder(tmp_path / "imgs")
    first = scan_imagefolder(root, tmp_path / "cache")
    monkeypatch.setattr(imf, "check_image", lambda p: pytest.fail("re-checked a cached folder"))
    assert scan_imagefolder(root, tmp_path / "cache").fingerprint == first.fingerprint
    monkeypatch.undo()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "cat" / "0.png")  # an image changes
    assert scan_imagefolder(root, tmp_path / "cache").fingerprint != first.fingerprint


def test_folder_tasks_are_named_and_cached_by_content_not_path(tmp_path, smoke):
    """Regression: the task was named folder:<absolute path>, so two clones wrote different CSVs."""
    a = _folder(tmp_path / "one" / "imgs")
    b = tmp_path / "two" / "imgs"
    shutil.copytree(a, b, copy_function=shutil.copy2)  # same bytes, same mtimes, another path
    ta, tb = (data_mod.load_task(f"folder:{p}", smoke) for p in (a, b))
    assert ta.name == tb.name and str(tmp_path) not in ta.name and ta.name.startswith("folder:imgs@")
    assert data_mod.content_digest(ta.train) == data_mod.content_digest(tb.train)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(b / "dog" / "3.png")
    tb2 = data_mod.load_task(f"folder:{b}", smoke)
    assert tb2.name != ta.name and data_mod.content_digest(tb2.test) != data_mod.content_digest(ta.test)


def test_images_decode_as_a_viewer_shows_them(tmp_path):
    # EXIF orientation 6 (rotate 90° clockwise to view): a 2x3 image becomes 3x2
    img = Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3) * 40).convert("RGB")
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    with Image.open(tmp_path / "rot.jpg") as im:
        assert to_rgb(im).size == (2, 3)
    # alpha composited on white, palette with transparency, CMYK, 16-bit
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    pal = rgba.convert("P")
    pal.info["transparency"] = 0
    assert to_rgb(pal).mode == "RGB"
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert check_image(tmp_path / "deep.png") is None
    assert load_image(tmp_path / "deep.png", 4).min() == pytest.approx(1.0)
