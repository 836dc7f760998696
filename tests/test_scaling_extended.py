"""Budgets past the profile's (`tve_lib.studies.scaling_extended`): parsed strictly, measured by the scaling
study's own code, upserted so a rerun replaces its rows, and read by notebook 03b's finding."""

import pandas as pd
import pytest

from tve_lib.report.claims import SPEARMAN_OK, TOPK_OK
from tve_lib.report.findings import extended_finding
from tve_lib.schema import SCALING_COLUMNS
from tve_lib.studies.scaling_extended import main, parse_budget, parse_overrides


def test_budgets_parse_strictly():
    assert parse_budget("12000x40", 2) == (12000, 40) and parse_budget("48000X1x1", 3) == (48000, 1, 1)
    for bad, parts in (("12000", 2), ("0x40", 2), ("ax40", 2), ("100x1", 3), ("100x1x1", 2)):
        with pytest.raises(ValueError, match="IMAGESxEPOCHS"):
            parse_budget(bad, parts)


def test_cli_measures_and_upserts_budgets(tmp_path, capsys):
    args = ["--profile", "smoke", "--dense", "32x1", "--online", "32x1x1", "--test-images", "2",
            "--results-dir", str(tmp_path), "--device", "cpu"]
    main(args)
    path = tmp_path / "smoke" / "tve" / "scaling_extended.csv"
    ext = pd.read_csv(path)
    assert list(ext.columns[:len(SCALING_COLUMNS)]) == SCALING_COLUMNS
    assert sorted(ext.sampler) == ["dense", "online"] and (ext.n_images == 32).all()
    assert {"threads", "cpu", "git_commit", "transfer_spearman_min", "backbone_weights"} <= set(ext.columns)
    assert ext.backbone_weights.nunique() == 1 and len(ext.backbone_weights.iloc[0]) == 12  # one trained instance
    assert ext.transfer_spearman.between(-1, 1).all() and (ext.pretrain_seconds > 0).all()
    settings = pd.read_csv(tmp_path / "smoke" / "tve" / "scaling_extended_settings.csv")
    assert len(settings) == 2 * settings.groupby(["task", "head"]).ngroups
    main(args[:4] + args[6:])  # the dense budget again: its row is replaced, the online one kept
    again = pd.read_csv(path)
    assert len(again) == 2 and sorted(again.sampler) == ["dense", "online"]
    text = extended_finding(again, pd.DataFrame(columns=["backbone", "sampler", "arch", "n_images", "epochs",
                                                         "pretrain_seconds"]), settings)
    assert "32 images × 1 epochs" in text and "dense sampler" in text and "online sampler" in text


def test_cli_rejects_budgets_the_upstream_set_cannot_fill(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--dense", "10000000x1", "--results-dir", str(tmp_path), "--device", "cpu"])
    assert "upstream set has" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--results-dir", str(tmp_path)])
    assert "name at least one budget" in capsys.readouterr().err
    for args, msg in ((["--profile", "nope"], "unknown profile 'nope'; expected one of: cpu"),
                      (["--profile", "smoke", "--device", "gpu"], "DEVICE='gpu': expected 'auto'")):
        with pytest.raises(SystemExit):  # a usage error, not a traceback
            main([*args, "--dense", "32x1", "--results-dir", str(tmp_path)])
        assert msg in capsys.readouterr().err


def test_extended_finding_names_the_first_budget_meeting_the_target():
    run = pd.DataFrame([dict(backbone="vit", sampler="dense", arch="tapped", n_images=3000, epochs=40,
                             pretrain_seconds=280.0)])
    ext = pd.DataFrame([dict(backbone="vit", sampler="dense", arch="tapped", n_images=n, epochs=40, pretrain_seconds=s,
                             transfer_spearman=m, transfer_spearman_min=w, cpu="x86_64", threads=2)
                        for n, s, m, w in ((3000, 420.0, 0.85, 0.77), (12000, 1700.0, 0.9, SPEARMAN_OK + 0.01))])
    settings = pd.DataFrame([dict(backbone="vit", sampler="dense", arch="tapped", n_images=12000, epochs=40,
                                  task=t, head="mlp", topk_overlap=o) for t, o in (("a", TOPK_OK), ("b", 0.5))])
    text = extended_finding(ext, run, settings)
    assert "first at 12000 images × 40 epochs" in text and "420 s there and 280 s in this run" in text
    assert "overlap ≥ 0.6 in 1/2 settings" in text and "not every setting" in text and "(x86_64, 2 threads;" in text
    # budgets of one backbone measured on different thread counts say so (their seconds do not compare)
    mixed = extended_finding(ext.assign(threads=[2, 1]), run)
    assert "(x86_64, 1–2 threads;" in mixed and "(x86_64, 1 thread;" in extended_finding(ext.assign(threads=1), run)
    missed = extended_finding(ext.iloc[:1], run)
    assert "no budget measured brings every setting" in missed
    assert "No budget past this run's" in extended_finding(None, run)


def test_extended_finding_says_whether_the_backbone_is_this_runs():
    run = pd.DataFrame([dict(backbone="vit", sampler="dense", arch="tapped", n_images=3000, epochs=40,
                             pretrain_seconds=280.0, backbone_weights="aaaaaaaaaaaa")])
    ext = pd.DataFrame([dict(backbone="vit", sampler="dense", arch="tapped", n_images=12000, epochs=20,
                             pretrain_seconds=900.0, transfer_spearman=0.9, transfer_spearman_min=0.8, cpu="x86_64",
                             threads=1, backbone_weights=w) for w in ("aaaaaaaaaaaa", "bbbbbbbbbbbb")])
    same = extended_finding(ext.iloc[:1], run)
    assert "on this run's backbone weights" in same and "another trained instance" not in same
    other = extended_finding(ext.iloc[1:], run)
    assert "another trained instance" in other and "bbbbbbbbbbbb" in other and "aaaaaaaaaaaa" in other
    # rows written before the column existed: no claim either way
    old = extended_finding(ext.iloc[1:].drop(columns="backbone_weights"), run)
    assert "instance" not in old and "this run's backbone weights" not in old


def test_scaling_curve_draws_extended_rows_apart():
    import matplotlib.pyplot as plt

    from tve_lib.report.fidelity_plots import scaling_curve

    rows = [dict(backbone="vit", sampler="dense", arch="tapped", pretrain_seconds=s, transfer_spearman=m,
                 transfer_spearman_min=m - 0.05, source=src)
            for s, m, src in ((100.0, 0.7, "this run"), (300.0, 0.8, "this run"),
                              (1200.0, 0.9, "scaling_extended.csv"))]
    fig = scaling_curve(pd.DataFrame(rows), SPEARMAN_OK)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}  # one legend, the figure's, beside both panels
    assert {"this run", "scaling_extended.csv"} <= labels and all(ax.get_legend() is None for ax in fig.axes)
    xs = sorted(x for line in fig.axes[0].get_lines() for x in line.get_xdata() if len(line.get_xdata()) > 0)
    assert 1200.0 in xs
    plt.close(fig)  # test_figures asserts that no figure is left open
    # a continued budget (the profile's explainer trained further) is a series of its own, not the curve's next point
    cont = dict(rows[1], pretrain_seconds=400.0, transfer_spearman=0.85, continued_from_images=4000)
    fig = scaling_curve(pd.DataFrame(rows + [cont]).fillna({"continued_from_images": 0}), SPEARMAN_OK)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    plt.close(fig)
    assert {"dense · tapped", "dense · tapped · continued"} <= labels


def test_extended_finding_keeps_upstream_augmentations_apart(capsys):
    """The same budget under another upstream augmentation is another curve, not a replaced row."""
    run = pd.DataFrame([dict(backbone="swin", sampler="dense", arch="tapped", n_images=3000, epochs=40,
                             pretrain_seconds=270.0, augment="composite")])
    ext = pd.DataFrame([dict(backbone="swin", sampler="dense", arch="tapped", n_images=3000, epochs=40,
                             pretrain_seconds=s, transfer_spearman=0.85, transfer_spearman_min=w, cpu="x86_64",
                             threads=1, augment=a)
                        for s, w, a in ((700.0, 0.71, None), (760.0, SPEARMAN_OK + 0.01, "composite_lowres"))])
    text = extended_finding(ext, run)
    assert text.count("swin, dense sampler") == 2 and "upstream augmentation composite_lowres" in text
    assert "first at 3000 images × 40 epochs" in text and "no budget measured brings every setting" in text
    assert "700 s there and 270 s in this run" in text and "760 s there and 270 s in this run" not in text
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--dense", "32x1", "--augment", "mixup", "--device", "cpu"])
    assert "unknown upstream augmentation 'mixup'" in capsys.readouterr().err


def test_explainer_overrides_parse_strictly_and_keep_their_rows_apart(tmp_path, capsys):
    assert parse_overrides(["embed_dim=96", "tap_pixels=false", "augment=none", "radius=2"]) == dict(
        embed_dim=96, tap_pixels=False, augment="none", radius=2)
    # typed by the annotation, not the default: an optional field takes None, a float field an integer's text
    assert parse_overrides(["radius=None", "lr=1", "tap_pixels=True"]) == dict(radius=None, lr=1.0, tap_pixels=True)
    assert isinstance(parse_overrides(["lr=1"])["lr"], float)
    for bad, msg in (("embed=96", "TVEConfig field"), ("embed_dim", "FIELD=VALUE"),
                     ("embed_dim=wide", "'embed_dim' takes int, got 'wide'"),
                     ("tap_pixels=ture", "'tap_pixels' takes bool"), ("embed_dim=1.5", "takes int"),
                     ("radius=two", "takes int | None"), ("sampler=nope", "set by each budget"),
                     ("epochs=3", "set by each budget")):
        with pytest.raises(ValueError, match=msg):
            parse_overrides([bad])
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--dense", "32x1", "--tve", "width=3", "--results-dir", str(tmp_path)])
    assert "TVEConfig field" in capsys.readouterr().err
    base = ["--profile", "smoke", "--dense", "32x1", "--test-images", "2", "--results-dir", str(tmp_path),
            "--device", "cpu"]
    main(base)
    main(base + ["--tve", "embed_dim=16", "--tve", "mix_hidden=32"])
    ext = pd.read_csv(tmp_path / "smoke" / "tve" / "scaling_extended.csv", keep_default_na=False)
    assert sorted(ext.overrides) == ["", "embed_dim=16 mix_hidden=32"] and sorted(ext.embed_dim) == [16, 32]
    assert (ext.ratio_to_inference > 0).all()
    settings = pd.read_csv(tmp_path / "smoke" / "tve" / "scaling_extended_settings.csv", keep_default_na=False)
    assert len(settings) == 2 * settings.groupby(["task", "head"]).ngroups
    text = extended_finding(ext, pd.DataFrame(columns=["backbone", "sampler", "arch", "n_images", "epochs",
                                                       "pretrain_seconds"]), settings)
    assert text.count("32 images × 1 epochs") == 2 and "explainer embed_dim=16 mix_hidden=32" in text
