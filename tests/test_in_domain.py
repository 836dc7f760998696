"""The in-domain ceiling (`tve_lib.studies.in_domain`): the same steps as the profile's budget, pre-trained on a
downstream task's training split only, cached apart from the upstream explainer, and scored beside it."""

import pandas as pd
import pytest
import torch

from tve_lib.config import TVEConfig
from tve_lib.schema import IN_DOMAIN_COLUMNS
from tve_lib.studies.in_domain import UPSTREAM, in_domain_config, in_domain_set, main, mixed_set
from tve_lib.studies.suite import Suite


def test_in_domain_budget_keeps_the_optimiser_steps_and_drops_the_upstream_augmentation():
    cfg = TVEConfig(n_images=3000, epochs=80, augment="composite")
    c = in_domain_config(cfg, 1000, 55000)
    assert (c.n_images, c.epochs, c.augment) == (1000, 240, "none")
    assert c.n_images * c.epochs == cfg.n_images * cfg.epochs
    assert (in_domain_config(cfg, 9000, 55000).n_images, in_domain_config(cfg, 9000, 55000).epochs) == (3000, 80)
    # an upstream set smaller than cfg.n_images: the steps it actually gives
    assert in_domain_config(cfg, 500, 1000).epochs == 160


def test_cli_scores_both_explainers_on_one_probe_and_keeps_their_checkpoints_apart(tmp_path, capsys):
    args = ["--profile", "smoke", "--backbone", "vit", "--task", "digits", "--test-images", "2",
            "--results-dir", str(tmp_path), "--device", "cpu"]
    main(args)
    df = pd.read_csv(tmp_path / "smoke" / "tve" / "in_domain.csv")
    assert list(df.columns[:len(IN_DOMAIN_COLUMNS)]) == IN_DOMAIN_COLUMNS
    assert sorted(df.trained_on.unique()) == ["digits", UPSTREAM]
    per = df.groupby("trained_on").size()
    assert per["digits"] == per[UPSTREAM] == 2 * df.task.nunique()  # every task x head, for both
    assert df.spearman.between(-1, 1).all() and (df.pretrain_seconds > 0).all() and df.backbone_weights.nunique() == 1
    ckpts = sorted(p.name for p in (tmp_path / "smoke" / "checkpoints").glob("tve_vit_*.pt"))
    assert len(ckpts) == 2 and sum(n.startswith("tve_vit_in_digits_") for n in ckpts) == 1
    assert "digits" in capsys.readouterr().out
    main(args)  # cached: the same rows replaced, not appended
    assert len(pd.read_csv(tmp_path / "smoke" / "tve" / "in_domain.csv")) == len(df)


def test_in_domain_set_is_the_training_split_and_unknown_tasks_are_refused(tmp_path, capsys):
    suite = Suite("smoke", 0, "cpu", "", "", str(tmp_path))
    task = suite.task("digits", "vit")
    train = in_domain_set(suite, "digits", "vit")
    assert train is task.train and len(train) != len(task.test)
    x = train.get(torch.arange(4))[0]
    assert torch.equal(x, task.train.get(torch.arange(4))[0])
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--task", "cifar", "--results-dir", str(tmp_path), "--device", "cpu"])
    assert "unknown task 'cifar'" in capsys.readouterr().err


def test_in_domain_finding_sets_each_task_against_its_zero_shot_score():
    from tve_lib.report.claims import SPEARMAN_OK
    from tve_lib.report.findings import in_domain_finding

    rows = []
    for trained_on, vals in ((UPSTREAM, (0.90, 0.80, 0.93)), ("digits", (0.96, SPEARMAN_OK + 0.01, 0.40))):
        for (task, head), v in zip((("digits", "linear"), ("digits", "mlp"), ("fashion_binary", "linear")), vals):
            rows.append(dict(backbone="vit", trained_on=trained_on, n_images=1000 if trained_on == "digits" else 3000,
                             epochs=240 if trained_on == "digits" else 80, task=task, head=head, spearman=v))
    text = in_domain_finding(pd.DataFrame(rows))
    assert "vit, pre-trained on the training images of digits (1000 images × 240 epochs)" in text
    assert "0.960 / 0.860 against 0.900 / 0.800 zero-shot" in text and "in 2/2 against 1/2" in text
    assert "the other tasks move from 0.930 to 0.400" in text
    assert "No in-domain explainer" in in_domain_finding(None)


def test_mixed_set_puts_drawn_pretraining_images_before_the_task_images_and_is_kept_apart(tmp_path, capsys):
    suite = Suite("smoke", 0, "cpu", "", "", str(tmp_path))
    mix, train = mixed_set(suite, "digits", "vit", 40), suite.task("digits", "vit").train
    up = suite.pretrain_set(None, "vit")
    assert len(mix) == 40 + len(train) and mix.classes == list(up.classes) + list(train.classes)
    x, y, _ = mix.get(torch.arange(len(mix)))
    assert torch.equal(x[40:], train.get(torch.arange(len(train)))[0])
    assert (y[40:] >= len(up.classes)).all() and (y[:40] < len(up.classes)).all()
    ux = up.get(torch.arange(len(up)))[0].flatten(1)
    assert all((ux == row).all(1).any() for row in x[:40].flatten(1))  # every drawn image is a pre-training image
    assert torch.equal(x, mixed_set(suite, "digits", "vit", 40).get(torch.arange(len(mix)))[0])  # by seed
    with pytest.raises(ValueError, match="takes 1.."):
        mixed_set(suite, "digits", "vit", len(up) + 1)
    args = ["--profile", "smoke", "--backbone", "vit", "--task", "digits", "--with-upstream", "40",
            "--test-images", "2", "--results-dir", str(tmp_path), "--device", "cpu"]
    main(args)
    df = pd.read_csv(tmp_path / "smoke" / "tve" / "in_domain.csv")
    mixed = df[df.trained_on == "digits+upstream40"]
    assert len(mixed) == 2 * df.task.nunique() and (mixed.pretrain_task == "digits").all()
    assert (mixed.n_upstream_images == 40).all() and (df[df.trained_on == UPSTREAM].n_upstream_images == 0).all()
    ckpts = (tmp_path / "smoke" / "checkpoints").iterdir()
    assert any(p.name.startswith("tve_vit_in_digits+upstream40_") for p in ckpts)
    assert "digits+upstream40" in capsys.readouterr().out


def test_in_domain_finding_names_the_upstream_images_of_a_mixed_set():
    from tve_lib.report.findings import in_domain_finding

    rows = [dict(backbone="swin", trained_on=on, n_images=3000, epochs=80, task=task, head="linear", spearman=v)
            for on, task, v in ((UPSTREAM, "digits", 0.84), (UPSTREAM, "fashion_binary", 0.95),
                                ("digits+upstream2000", "digits", 0.91),
                                ("digits+upstream2000", "fashion_binary", 0.94))]
    text = in_domain_finding(pd.DataFrame(rows))
    assert "pre-trained on 2000 upstream pre-training images and the training images of digits" in text
    assert "digits (linear) reaches 0.910 against 0.840 zero-shot" in text
    assert "the other tasks move from 0.950 to 0.940" in text
