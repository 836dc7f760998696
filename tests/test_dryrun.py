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
    assert set(loader.what) == {"loader", "tve_step"}
