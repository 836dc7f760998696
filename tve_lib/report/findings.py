"""Findings as prose, rendered from a run's tables (so the words are true for every rerun).

Each function takes the DataFrames a notebook just wrote (or read back) and returns Markdown; the
thresholds are the claim rules' (`tve_lib.report.claims`), never literals in a notebook.
"""

from __future__ import annotations

import pandas as pd

from ..schema import continued_rows
from .claims import (
    BACKBONE_ACCURACY_OK,
    COMPETITIVE,
    FID_RATIO_MEDIAN_OK,
    FID_RATIO_WORST_OK,
    HEAD_ACCURACY_OK,
    HELDOUT_RATIO_OK,
    INHERITED_MARGIN,
    PRETRAIN_SECONDS_OK,
    SPEARMAN_OK,
    TOPK_OK,
    WEAK_BASELINES,
)


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _range(s: pd.Series, fmt: str = ".2f") -> str:
    return f"{s.min():{fmt}}" if s.min() == s.max() else f"{s.min():{fmt}}–{s.max():{fmt}}"


def accuracy_finding(acc: pd.DataFrame) -> str:
    """Notebook 00: the backbones on their upstream test split and the heads on their tasks' test splits, against
    the targets (a head that cannot classify gives explanations of nothing)."""
    test = acc[acc.split == "test"]
    bb, heads = test[test["head"] == "backbone"], test[test["head"] != "backbone"]
    parts = ["**Finding (this run).**"]
    if len(bb):
        scores = ", ".join(f"{r.backbone} {r.accuracy:.3f}" for r in bb.itertuples())
        parts.append(f"Backbones on the upstream test split: {scores} "
                     f"(target ≥ {BACKBONE_ACCURACY_OK:g}: {_met(bool((bb.accuracy >= BACKBONE_ACCURACY_OK).all()))}).")
    low = heads[heads.accuracy < HEAD_ACCURACY_OK]
    parts.append(f"Heads on their tasks' test splits: {(heads.accuracy >= HEAD_ACCURACY_OK).sum()} of {len(heads)} at "
                 f"≥ {HEAD_ACCURACY_OK:g} (lowest {heads.accuracy.min():.3f}: {_met(low.empty)})"
                 + ("." if low.empty else "; below: " + ", ".join(f"{r.backbone}/{r.task}/{r.head} {r.accuracy:.3f}"
                                                                  for r in low.itertuples()) + "."))
    return " ".join(parts)


def pretrain_finding(pre: pd.DataFrame, ratios: pd.DataFrame) -> str:
    """Notebook 01: pre-training time (target store included) and the held-out/trivial ratio."""
    last = pre.sort_values("epoch").groupby("backbone").tail(1).set_index("backbone")
    secs = last.seconds
    tgt = last.target_seconds if "target_seconds" in last else pd.Series(0.0, index=last.index)
    r = ratios.set_index("backbone").ratio
    lines = [f"**Finding (this run).** Pre-training took {', '.join(f'{b} {secs[b]:.0f} s' for b in secs.index)} "
             f"per backbone, of which the stored targets took {', '.join(f'{tgt[b]:.0f} s' for b in secs.index)} "
             f"(target ≤ {PRETRAIN_SECONDS_OK:.0f} s: {_met(bool((secs <= PRETRAIN_SECONDS_OK).all()))}).",
             f"Held-out MSE over the trivial predictor's, both branches pooled: "
             f"{', '.join(f'{b} {r[b]:.3f}' for b in r.index)} (target ≤ {HELDOUT_RATIO_OK:g}: "
             f"{_met(bool((r <= HELDOUT_RATIO_OK).all()))}); keep branch {_range(ratios.ratio_keep, '.3f')}, "
             f"remove branch {_range(ratios.ratio_remove, '.3f')}."]
    return " ".join(lines)


def transfer_finding(summary: pd.DataFrame) -> str:
    """Notebook 02: the whole-head medians against the convergence targets, by task."""
    s = summary[summary.rule == "whole_head"] if "rule" in summary else summary
    ok = int((s.median_spearman >= SPEARMAN_OK).sum())
    worst = s.loc[s.median_spearman.idxmin()]
    by_task = s.groupby("task").median_spearman
    parts = [f"**Finding (this run, {int(s.n_images.max())} images per task).** Median Spearman with the exact "
             f"window quantity is ≥ {SPEARMAN_OK:g} in {ok}/{len(s)} backbone × task × head settings "
             f"({_met(ok == len(s))}); by task: "
             + "; ".join(f"{t} {_range(v)}" for t, v in by_task) + ".",
             f"The weakest setting is {worst.backbone}/{worst.task}/{worst['head']} ({worst.median_spearman:.2f}).",
             f"Mean top-10 % overlap: {_range(s.mean_topk_overlap)} (target ≥ {TOPK_OK:g} in every setting: "
             f"{_met(bool((s.mean_topk_overlap >= TOPK_OK).all()))})."]
    if "median_spearman_high" in s:
        parts.append(_interval_sentence(s))
    if "last_layer" in set(summary.get("rule", [])):
        ll = summary[(summary.rule == "last_layer")].median_spearman
        wh = s[s["head"] == "mlp"].median_spearman
        parts.append(f"On MLP heads the official last-layer rule gives {_range(ll)} against {_range(wh)} for the "
                     "whole-head rule.")
    return " ".join(parts)


def _interval_sentence(s: pd.DataFrame) -> str:
    """How the settings' medians sit against the target once the test images' sampling is counted: the 95 %
    bootstrap intervals of `tve_lib.report.tables.transfer_summary` (the verdict itself stays on the medians)."""
    def name(r) -> str:
        return f"{r.backbone}/{r.task}/{r['head']} [{r.median_spearman_low:.2f}, {r.median_spearman_high:.2f}]"

    short = s[s.median_spearman < SPEARMAN_OK]
    beyond = short[short.median_spearman_high < SPEARMAN_OK]
    near = s[(s.median_spearman >= SPEARMAN_OK) & (s.median_spearman_low < SPEARMAN_OK)]
    out = (f"Counting the draw of test images (95 % bootstrap intervals of each median): of the {len(short)} settings "
           f"below {SPEARMAN_OK:g}, {len(beyond)} stay below it across their interval"
           + (f" ({'; '.join(name(r) for _, r in beyond.iterrows())})" if len(beyond) else "")
           + f", and {len(short) - len(beyond)} reach it within theirs")
    return out + (f"; {len(near)} of the settings at or above it reach below it within theirs." if len(near)
                  else ".")


def branch_finding(summary: pd.DataFrame) -> str:
    """Notebook 02: which of TVE's two branches the transfer error comes from (whole-head rule): each
    setting's median Spearman with the keep branch made exact, and with the remove branch made exact."""
    s = summary[summary.rule == "whole_head"] if "rule" in summary else summary
    if "median_spearman_exact_keep" not in s:
        return ""
    k, r, tve = s.median_spearman_exact_keep, s.median_spearman_exact_remove, s.median_spearman
    remove_more = int((r - tve > k - tve).sum())  # settings where the remove branch's error costs more
    worst = s.loc[tve.idxmin()]
    return (f"**Which branch (this run).** With TVE's keep branch replaced by the exact one (so only the remove "
            f"branch's error is left) the median Spearman is {_range(k)}, ≥ {SPEARMAN_OK:g} in "
            f"{int((k >= SPEARMAN_OK).sum())}/{len(s)} settings; with its remove branch replaced (only the keep "
            f"branch's error left) it is {_range(r)}, ≥ {SPEARMAN_OK:g} in {int((r >= SPEARMAN_OK).sum())}/{len(s)}; "
            f"TVE itself {_range(tve)}. Making the remove branch exact gains more than making the keep branch "
            f"exact in {remove_more}/{len(s)} settings. The weakest setting, "
            f"{worst.backbone}/{worst.task}/{worst['head']}: {worst.median_spearman:.2f}; exact keep "
            f"{worst.median_spearman_exact_keep:.2f}, exact remove {worst.median_spearman_exact_remove:.2f}.")


def _continued_finding(cont: pd.DataFrame, scratch: pd.DataFrame) -> list[str]:
    """Each continued budget against the budget it continues (the from-the-start row of the same images and epochs)."""
    out = []
    for _, r in cont.sort_values("pretrain_seconds").iterrows():
        n0, e0 = int(r.continued_from_images), int(r.continued_from_epochs)
        txt = (f"{r.backbone}, {r.sampler} sampler, {r.arch}: the {n0} × {e0} explainer trained further on "
               f"{r.n_images} images × {r.epochs} epochs ({r.pretrain_seconds:.0f} s of pre-training in all): median "
               f"transfer Spearman {r.transfer_spearman:.3f}")
        base = scratch[(scratch.backbone == r.backbone) & (scratch.sampler == r.sampler) & (scratch.arch == r.arch)
                       & (scratch.n_images == n0) & (scratch.epochs == e0)]
        if len(base):
            o = base.iloc[0]
            txt += f" against {o.transfer_spearman:.3f} at {o.pretrain_seconds:.0f} s"
            if "transfer_spearman_min" in r and "transfer_spearman_min" in o:
                txt += f"; worst setting {r.transfer_spearman_min:.3f} against {o.transfer_spearman_min:.3f}"
        out.append(txt)
    return out


def scaling_finding(scaling: pd.DataFrame, profile_images: int, profile_epochs: int) -> str:
    """Notebook 03b: the measured curve, and the smallest measured budget meeting each target; continued budgets
    apart, each against the explainer it continues."""
    out = []
    cont = continued_rows(scaling)
    scaling, continued = scaling[~cont], scaling[cont]
    for (b, sampler, arch), g in scaling.groupby(["backbone", "sampler", "arch"]):
        g = g.sort_values("pretrain_seconds")
        best = g.loc[g.transfer_spearman.idxmax()]
        lo, hi = g.pretrain_seconds.min(), g.pretrain_seconds.max()
        sp = g.transfer_spearman
        txt = (f"{b}, {sampler} sampler, {arch}: {len(g)} budgets from {lo:.0f} s to {hi:.0f} s of pre-training "
               f"({hi / lo:.0f}× compute); median transfer Spearman {sp.iloc[0]:.2f} → {sp.iloc[-1]:.2f}"
               f" (best {best.transfer_spearman:.2f} at {best.n_images} images × {best.epochs} epochs)")
        if "transfer_spearman_min" in g:
            hit = g[g.transfer_spearman_min >= SPEARMAN_OK]
            txt += (f"; every setting ≥ {SPEARMAN_OK:g} first at {hit.pretrain_seconds.iloc[0]:.0f} s" if len(hit) else
                    f"; no measured budget brings every setting to {SPEARMAN_OK:g} (worst setting at the largest: "
                    f"{g.transfer_spearman_min.iloc[-1]:.2f})")
        fr = g.fid_plus_ratio_to_occlusion
        txt += f"; Fid⁺ ratio to occlusion {fr.iloc[0]:.2f} → {fr.iloc[-1]:.2f}"
        out.append(txt)
    out += _continued_finding(continued, scaling)
    prof = scaling[(scaling.n_images == profile_images) & (scaling.epochs == profile_epochs)]
    head = (f"**Finding (this run, {int(scaling.n_test_images.max()) if 'n_test_images' in scaling else '?'} test "
            f"images per task).** ")
    if len(prof):
        head += f"The profile's budget ({profile_images} images × {profile_epochs} epochs) is on the curve. "
    return head + "\n\n" + "\n".join(f"- {t}." for t in out)


def _instance_note(ext: pd.DataFrame, scaling: pd.DataFrame, backbone: str) -> str:
    """Whether ``ext``'s rows were measured on this run's trained ``backbone`` (``backbone_weights``, a digest)."""
    if "backbone_weights" not in ext or "backbone_weights" not in scaling:
        return ""
    theirs = set(ext.backbone_weights.dropna())
    ours = set(scaling.loc[scaling.backbone == backbone, "backbone_weights"].dropna())
    if not theirs or not ours:
        return ""
    if theirs == ours:
        return "; on this run's backbone weights"
    return (f"; on another trained instance of the backbone (weights {', '.join(sorted(theirs))}, this run's "
            f"{', '.join(sorted(ours))}): the cpu backbones' weights depend on the thread count and the CPU, and "
            "these scores are that instance's")


def _threads(threads: pd.Series) -> str:
    """"1 thread", "2 threads", or "1–2 threads" where a backbone's budgets ran on different counts (their
    seconds then do not compare)."""
    t = sorted({int(v) for v in threads.dropna()})
    if not t:
        return "threads not recorded"
    n = str(t[0]) if len(t) == 1 else f"{t[0]}–{t[-1]}"
    return f"{n} thread" + ("" if t == [1] else "s")


def _with_augment(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``augment`` and ``overrides`` (the explainer's TVEConfig changes) as strings ("" where not
    recorded: the profile's)."""
    cols = ("augment", "overrides")
    return df.assign(**{c: df[c].astype("string").fillna("").astype(str) if c in df else "" for c in cols})


def extended_finding(extended: pd.DataFrame, scaling: pd.DataFrame, settings: pd.DataFrame | None = None) -> str:
    """Notebook 03b: the budgets measured past this run's (``tve/scaling_extended.csv``), each against the
    quality targets; seconds from another machine are set against this run's by a budget both measured."""
    if extended is None or not len(extended):
        return ("No budget past this run's was measured (`python -m tve_lib.studies.scaling_extended` writes "
                "`tve/scaling_extended.csv`).")
    out = []
    # rows written before the upstream augmentation was recorded ran the profile's: "" here
    ext, settings = _with_augment(extended), None if settings is None else _with_augment(settings)
    run_rows = _with_augment(scaling[~continued_rows(scaling)])  # a continued budget is not one from the start
    groups = ext.sort_values("pretrain_seconds").groupby(["backbone", "sampler", "arch", "augment", "overrides"])
    for (b, sampler, arch, aug, over), g in groups:
        where = f"{g.cpu.iloc[0]}, {_threads(g.threads)}" if "cpu" in g else "another run"
        items = []
        for _, r in g.iterrows():
            s = None if settings is None else settings[(settings.backbone == b) & (settings.sampler == sampler) & (
                settings.arch == arch) & (settings.n_images == r.n_images) & (settings.epochs == r.epochs)
                & (settings.augment == aug) & (settings.overrides == over)]
            ok = "every setting" if r.transfer_spearman_min >= SPEARMAN_OK else "not every setting"
            txt = (f"{r.n_images} images × {r.epochs} epochs, {r.pretrain_seconds:.0f} s: median Spearman "
                   f"{r.transfer_spearman:.3f}, worst setting {r.transfer_spearman_min:.3f} ({ok} ≥ {SPEARMAN_OK:g})")
            if s is not None and len(s):
                n_ok = int((s.topk_overlap >= TOPK_OK).sum())
                txt += f", top-10 % overlap ≥ {TOPK_OK:g} in {n_ok}/{len(s)} settings"
            items.append(txt)
        hit = g[g.transfer_spearman_min >= SPEARMAN_OK]
        first = (f"every setting ≥ {SPEARMAN_OK:g} first at {hit.n_images.iloc[0]} images × {hit.epochs.iloc[0]} "
                 f"epochs" if len(hit) else f"no budget measured brings every setting to {SPEARMAN_OK:g}")
        run = run_rows[((run_rows.augment == aug) | (run_rows.augment == "") | (aug == "")) & (over == "")]
        same = run.merge(g.drop(columns=["augment", "overrides"]),
                         on=["backbone", "sampler", "arch", "n_images", "epochs"], suffixes=("_run", "_ext"))
        pace = (f"; the budget both measured ({same.n_images.iloc[0]} × {same.epochs.iloc[0]}) took "
                f"{same.pretrain_seconds_ext.iloc[0]:.0f} s there and {same.pretrain_seconds_run.iloc[0]:.0f} s in "
                f"this run" if len(same) else "")
        label = (f", upstream augmentation {aug}" if aug else "") + (f", explainer {over}" if over else "")
        out.append(f"{b}, {sampler} sampler, {arch}{label} ({where}{pace}{_instance_note(g, scaling, b)}): "
                   + "; ".join(items) + f"; {first}")
    return ("**Past this run's budgets** (`tve/scaling_extended.csv`, measured separately by "
            "`python -m tve_lib.studies.scaling_extended` with the same probe sizes):\n\n"
            + "\n".join(f"- {t}." for t in out))


def in_domain_finding(df: pd.DataFrame | None) -> str:
    """Notebook 03b: the explainers pre-trained on a downstream task's training images (``tve/in_domain.csv``,
    `tve_lib.studies.in_domain`), each beside the upstream explainer on the same probe, against the target."""
    if df is None or not len(df):
        return ("No in-domain explainer was measured for this results folder (`python -m tve_lib.studies.in_domain "
                "--backbone B --task T` writes `tve/in_domain.csv`).")
    out = []
    for (b, t), g in df[df.trained_on != "upstream"].groupby(["backbone", "trained_on"]):
        up = df[(df.backbone == b) & (df.trained_on == "upstream")].set_index(["task", "head"]).spearman
        mine = g.set_index(["task", "head"]).spearman
        task, _, extra = t.partition("+upstream")  # "<task>+upstream<N>": N pre-training images beside the task's
        own, other = mine[mine.index.get_level_values(0) == task], mine[mine.index.get_level_values(0) != task]
        heads = " / ".join(own.index.get_level_values(1))
        vals = " / ".join(f"{v:.3f}" for v in own)
        zero = " / ".join(f"{up.get(k, float('nan')):.3f}" for k in own.index)
        n_in, n_up = int((own >= SPEARMAN_OK).sum()), int((up.reindex(own.index) >= SPEARMAN_OK).sum())
        what = f"{extra} upstream pre-training images and the training images of {task}" if extra else (
            f"the training images of {task}")
        txt = (f"{b}, pre-trained on {what} ({g.n_images.iloc[0]} images × {g.epochs.iloc[0]} epochs): "
               f"{task} ({heads}) reaches {vals} against {zero} zero-shot, ≥ {SPEARMAN_OK:g} in {n_in}/{len(own)} "
               f"against {n_up}/{len(own)}")
        if len(other):
            txt += (f"; the other tasks move from {up.reindex(other.index).mean():.3f} to {other.mean():.3f} "
                    "(mean Spearman)")
        out.append(txt)
    return ("**An in-domain ceiling** (`tve/in_domain.csv`: the same explainer and optimiser steps, pre-trained on "
            "one task's training images instead of the upstream ones, or beside some of them; a diagnostic, not the "
            "method):\n\n"
            + "\n".join(f"- {t}." for t in out))


def fidelity_ratio_finding(ratios: pd.Series) -> str:
    """Notebook 03: TVE ÷ window occlusion Fid⁺ AUC per setting (paired on every image both were scored on),
    against the targets."""
    return (f"TVE ÷ window occlusion Fid⁺ AUC, paired on every image both were scored on, over the {len(ratios)} "
            f"settings: median {ratios.median():.3f} "
            f"(target ≥ {FID_RATIO_MEDIAN_OK:g}: {_met(ratios.median() >= FID_RATIO_MEDIAN_OK)}), worst "
            f"{ratios.min():.3f} (target ≥ {FID_RATIO_WORST_OK:g}: {_met(ratios.min() >= FID_RATIO_WORST_OK)}).")


def failing_rows(verdict: pd.DataFrame) -> str:
    """Notebook 03: the settings that fail the acceptance check (`fidelity.tve_verdict`), one line each."""
    bad = verdict[~verdict.ok]
    head = f"TVE passes the check in {int(verdict.ok.sum())} of {len(verdict)} backbone × task × head settings"
    if bad.empty:
        return head + "."
    return head + "; it fails in:\n\n" + "\n".join(
        f"- {r.backbone}/{r.task}/{r.head}: TVE {r.tve_same_images:.3f} against {r.worst_method} {r.worst_value:.3f} "
        f"on {r.n_images} images (ratio {r.ratio:.2f}); beats {'/'.join(WEAK_BASELINES)}: {r.beats}"
        for r in bad.itertuples())


def _weak_losses(per_image: pd.DataFrame, verdict: pd.DataFrame, margin: float = INHERITED_MARGIN
                 ) -> tuple[int, int]:
    """(settings where TVE loses to a weak baseline, of those where occlusion itself is within
    ``margin`` of that baseline or below it), paired on common images."""
    from .fidelity import _paired_means, _settings

    lost, inherited = 0, 0
    failing = {(r.backbone, r.task, r["head"]) for _, r in verdict[~verdict.beats].iterrows()}
    for key, by in _settings(per_image, "fid_plus_auc"):
        if key not in failing or "tve" not in by:
            continue
        beaten = [w for w in WEAK_BASELINES if w in by and _paired_means(by["tve"], by[w])[0]
                  <= _paired_means(by["tve"], by[w])[1]]
        if not beaten:
            continue
        lost += 1
        if "occlusion" in by and any(_paired_means(by["occlusion"], by[w])[0]
                                     <= _paired_means(by["occlusion"], by[w])[1] + margin for w in beaten):
            inherited += 1
    return lost, inherited


def acceptance_finding(verdict: pd.DataFrame, ceiling: pd.DataFrame, per_image: pd.DataFrame,
                       windows: dict[str, tuple[int, int]]) -> str:
    """Notebook 03: the acceptance check and where TVE's gap to the best method comes from.

    ``windows``: backbone -> (TVE's window radius r, player grid G), for the closing explanation.
    """
    def med(s: pd.Series) -> str:
        return f"median **{s.median():.2f}** ({_range(s)})"

    amort, target = ceiling.tve_over_target, ceiling.target_over_best
    lost, inherited = _weak_losses(per_image, verdict)
    parts = [f"**Finding (this run, {int(verdict.n_images.max())} images per setting).** TVE passes the "
             f"acceptance check (beat {', '.join(WEAK_BASELINES)}; ≥ {COMPETITIVE:g}× every method) in "
             f"{int(verdict.ok.sum())} of {len(verdict)} backbone × task × head settings; TVE over the method it "
             f"does worst against: {med(verdict.ratio)}.",
             f"Split into its factors: TVE / occlusion (the amortisation) {med(amort)}; occlusion / best other "
             f"method (the window quantity itself) {med(target)}."]
    if amort.median() >= FID_RATIO_MEDIAN_OK and target.median() < COMPETITIVE:
        parts.append("So the gap is the window quantity's, not the training's: more pre-training can only move "
                     "the first factor, which is already near 1.")
    elif amort.median() < FID_RATIO_MEDIAN_OK:
        parts.append(f"The amortisation factor is below its target ({FID_RATIO_MEDIAN_OK:g}): part of the gap is "
                     "TVE's training, which notebook 03b's scaling study measures.")
    if lost:
        parts.append(f"TVE loses to a weak baseline in {lost} settings; in {inherited} of them occlusion itself is "
                     f"within {INHERITED_MARGIN:g} of that baseline or below it (TVE inherits it).")
    shapes = "; ".join(f"r = {r} on the {g}×{g} grid ({', '.join(sorted(b for b in windows if windows[b] == (r, g)))}"
                       f": a window holds {min((2 * r + 1) ** 2, g * g)} of {g * g} players)"
                       for r, g in sorted(set(windows.values())))
    parts.append(f"Window sizes: {shapes}. A window's keep/remove contrast measures it against the whole rest of "
                 "the image, while Fidelity⁺ removes growing sets of players whose interactions the sampling "
                 "methods and IG's path capture.")
    return " ".join(parts)
