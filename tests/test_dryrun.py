"""The paper profile's dry run (`./run_all.sh --profile paper --dry-run`) on tiny models: generated data in
torchvision's layouts and an upstream ImageFolder of JPEGs, file-backed loading, the online sampler, every
notebook end to end. The true-size dry run itself is not part of CI (docs/benchmarks.md has its time)."""

import json

import pandas as pd
import pytest

from tve_lib import runner

pytestmark = pytest.mark.notebooks


def test_the_paper_dry_run_path_end_to_end_on_tiny_models(tmp_path):
    code = runner.main(["--profile", "paper-dry-tiny", "--results-dir", str(tmp_path), "--device", "cpu"])
    root = tmp_path / "paper-dry-tiny"
    assert code == 0, sorted(p.name for p in (root / "notebooks").glob("*.ipynb"))
    for d in ("cifar-10-batches-py", "oxford-iiit-pet", "imagenette2", "upstream"):
        assert (root / "data" / d).is_dir(), d
    run = json.loads((root / "run.json").read_text())
    assert {nb.stem for nb in runner.notebook_list()} <= set(run["notebook_wall_s"])
    acc = pd.read_csv(root / "accuracy.csv")
    assert set(acc.task) >= {"pets_binary", "imagenette", "cifar10"}
    assert len(pd.read_csv(root / "fidelity" / "summary.csv")) and len(pd.read_csv(root / "tve" / "scaling.csv"))
    loader = pd.read_csv(root / "throughput" / "loader.csv")
    assert set(loader.what) == {"loader", "tve_step", "fidelity_batch"}
    mem = loader[loader.what != "loader"]
    assert (mem.peak_memory_mib > 0).all() and (mem.memory_growth_mib >= 0).all()
    # the dry run's diagonal: each backbone with one task, each task once (notebooks 02, 03, 03b, 05)
    pairs = {("vit", "pets_binary"), ("deit", "imagenette"), ("swin", "cifar10")}
    for name in ("fidelity/timing.csv", "tve/transfer_error.csv", "ltx/comparison.csv", "ltx/costs.csv"):
        df = pd.read_csv(root / name)
        assert set(zip(df.backbone, df.task)) == pairs, name
    # the exact window quantity's rows, one file per image, shared by 02 and 03b (tests/test_window_cache.py)
    assert list((root / "checkpoints" / "windows").rglob("*.pt"))


def test_pairs_and_radii(tmp_path):
    from tve_lib.config import get_profile
    from tve_lib.masking import default_radius
    from tve_lib.studies.ablations import ablation_variants
    from tve_lib.studies.suite import Suite

    s = Suite("smoke", results_dir=str(tmp_path), device="cpu")
    assert s.pairs() == [(b, t) for b in s.backbone_names for t in s.profile.tasks]
    d = Suite("paper-dry-tiny", results_dir=str(tmp_path), device="cpu")
    assert d.pairs() == [("vit", "pets_binary"), ("deit", "imagenette"), ("swin", "cifar10")]
    assert d.pairs(["vit"], ["cifar10", "imagenette"]) == [("vit", "cifar10"), ("vit", "imagenette")]
    assert d.tasks_of("deit") == ["imagenette"]
    radii = lambda p: [v.variant for v in ablation_variants(p, 14) if v.ablation == "radius"]  # noqa: E731
    r0 = default_radius(14)
    assert r0 >= 2 and radii(get_profile("smoke")) == [f"r={r0 - 1}", f"r={r0} (ref)", f"r={r0 + 1}", f"r={r0 + 2}"]
    assert radii(get_profile("paper-dry-tiny")) == [f"r={r0} (ref)", f"r={r0 + 1}"]
    with pytest.raises(ValueError, match="'all' or 'diagonal'"):
        Suite("smoke", results_dir=str(tmp_path), device="cpu", overrides={"pairs": "some"}).pairs()
