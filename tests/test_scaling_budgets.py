"""The cpu profile's scaling study keeps issue 12's contract: at least five dense budgets over at least 16x in
optimiser steps, the profile's own budget among them (reused from notebook 01), and one above it: from the start,
or the profile's explainer trained further on at least its images."""

import dataclasses

from tve_lib.config import get_profile
from tve_lib.studies.scaling import budget_steps as _steps
from tve_lib.studies.scaling import continued_budgets, scaling_budgets


def test_cpu_dense_budgets_span_the_profile():
    prof = get_profile("cpu")
    dense = [c for c in scaling_budgets(prof) if c.sampler == "dense"]
    steps = sorted(_steps(c) for c in dense)
    assert len(dense) >= 5 and steps[-1] >= 16 * steps[0]
    tve = prof.tve
    assert any((c.n_images, c.epochs) == (tve.n_images, tve.epochs) for c in dense)
    above = [c for c in dense if c.n_images >= tve.n_images and _steps(c) > _steps(tve)]
    above += [c for c in continued_budgets(prof) if c.sampler == "dense" and c.n_images >= tve.n_images]
    assert above, "no dense budget above the profile's pre-training"
    for c in continued_budgets(prof):  # only images and epochs differ from the explainer it continues
        assert dataclasses.replace(c, n_images=tve.n_images, epochs=tve.epochs) == tve


def test_cpu_online_budgets_span_16x():
    online = [c for c in scaling_budgets(get_profile("cpu")) if c.sampler == "online"]
    seen = sorted(c.n_images * c.epochs * c.windows_per_image for c in online)
    assert len(online) >= 5 and seen[-1] >= 16 * seen[0]
