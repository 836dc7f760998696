"""tve_lib.timing, tve_lib.studies.throughput(_runs) and tve_lib.report.throughput: the timing helper's
mechanics, model-call recording and replay, the benchmark rows' contract, estimation under a time cap,
the method specs and the target checks. No test asserts a speed."""

import dataclasses
import itertools

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from conftest import tiny_backbone

from tve_lib import schema, timing
from tve_lib.config import TVEConfig, get_profile
from tve_lib.explainers.base import Explainer
from tve_lib.heads import make_head
from tve_lib.report import claims
from tve_lib.report import throughput as report
from tve_lib.studies import throughput as bench
from tve_lib.studies import throughput_runs as running


class FakeClock:
    """Each call advances by the next duration of ``steps`` (then 1 s)."""

    def __init__(self, steps):
        self.t, self.steps, self.calls = 0.0, iter(steps), 0

    def __call__(self):
        self.calls += 1
        if self.calls % 2 == 0:  # the stop of a timed run
            self.t += next(self.steps, 1.0)
        return self.t


class Sampler(Explainer):
    """A KernelSHAP-shaped toy: predicts, then ``n`` masked copies per image in one batched call."""

    name = "sampler"

    def __init__(self, backbone, n=4):
        super().__init__(backbone)
        self.n = n

    @torch.no_grad()
    def explain(self, images, head, target=None):
        t = self.resolve_target(images, head, target)
        keep = torch.rand(len(images), self.n, self.backbone.n_players) < 0.5
        xs = self.backbone.mask(images, keep).flatten(0, 1)
        out = head(self.backbone.embed(xs)).view(len(images), self.n, -1)
        a = out.gather(-1, t.view(-1, 1, 1).expand(-1, self.n, 1)).mean(1)
        return a.view(-1, 1, 1).expand(-1, self.grid, self.grid).clone()


@pytest.fixture(scope="module")
def vit():
    return tiny_backbone("vit")


def _plan(**kw):
    args = dict(size="profile", batch_sizes=(1, 2), repeats=2, warmup=1, max_measure_s=60.0, n_tasks=3,
                task_batch_size=2)
    return bench.BenchPlan(**(args | kw))


# ----------------------------------------------------------------------------- time_call
def test_time_call_counts_repeats_and_excludes_warmup():
    calls = []
    clock = FakeClock([0.5, 0.1, 0.3, 0.2, 0.4])
    t = timing.time_call(lambda: calls.append(1), n_images=10, repeats=5, warmup=3, clock=clock)
    assert len(calls) == 8  # 3 warm-up + 5 timed
    assert clock.calls == 10  # the clock brackets the timed runs only
    assert t.repeats == 5 and t.warmup == 3
    assert t.times_s == pytest.approx((0.5, 0.1, 0.3, 0.2, 0.4))
    assert t.median_s == pytest.approx(0.3)
    assert t.iqr_s == pytest.approx(0.2)
    assert t.images_per_s == pytest.approx(10 / 0.3)
    assert t.ms_per_image == pytest.approx(30.0)
    assert t.threads == torch.get_num_threads() and t.device == "cpu" and t.dtype == "float32"
    assert set(t.summary()) == {"images_per_s", "ms_per_image", "ms_per_image_iqr", "repeats", "warmup",
                                "device", "threads", "dtype"}


def test_time_call_synchronizes_around_timers_on_cuda(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", str(device))))
    timing.time_call(lambda: events.append(("run",)), 1, device="cuda", repeats=3, warmup=2)
    timed = events[2:]  # warm-up runs first, unsynchronised
    assert events[:2] == [("run",), ("run",)]
    assert timed == [("sync", "cuda"), ("run",), ("sync", "cuda")] * 3


def test_time_call_never_synchronizes_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: pytest.fail("synchronize on cpu"))
    timing.time_call(lambda: None, 1, device="cpu", repeats=2, warmup=1)


def test_machine_speed_times_its_two_reference_workloads():
    """`machine_speed` reports the median of its timed repeats of each workload, in ms, with the thread count."""
    ticks = iter(range(0, 1000, 2))  # every timed run takes 2 s on this clock
    got = timing.machine_speed("cpu", repeats=3, clock=lambda: float(next(ticks)))
    assert got["matmul_ms"] == got["block_step_ms"] == 2000.0
    assert got["threads"] == torch.get_num_threads() and got["at"]


@pytest.mark.parametrize("kw,msg", [(dict(repeats=0), "repeats"), (dict(warmup=-1), "warmup"),
                                    (dict(n_images=0), "n_images")])
def test_time_call_rejects_bad_arguments(kw, msg):
    args = dict(n_images=1, repeats=1, warmup=0) | kw
    with pytest.raises(ValueError, match=msg):
        timing.time_call(lambda: None, **args)


# ----------------------------------------------------------------------------- model calls
def test_record_model_calls_logs_sizes_and_restores_the_backbone(vit):
    head = make_head("linear", vit.embed_dim, 3)
    x = torch.randn(2, 3, 32, 32)
    with timing.record_model_calls(vit) as log:
        Sampler(vit, n=5).explain(x, head)
        vit(x[:1])  # nn.Module.__call__ goes through forward
    assert log.sizes == [2, 10, 1] and log.n_images == 13 and log.n_calls == 3
    assert log.grad == [False, False, False]
    assert "embed" not in vars(vit) and "forward" not in vars(vit)
    assert vit.embed(x).shape == (2, vit.embed_dim)


def test_stand_in_is_cheap_differentiable_and_nesting_is_refused(vit):
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    with timing.record_model_calls(vit, stand_in=True) as log:
        e = vit.embed(x)
        with pytest.raises(RuntimeError, match="already"):
            with timing.record_model_calls(vit):
                pass
    assert e.shape == (3, vit.embed_dim) and log.grad == [True]
    e.sum().backward()
    assert x.grad is not None
    assert "embed" not in vars(vit)


def test_time_model_calls_replays_the_recorded_calls(vit):
    head = make_head("linear", vit.embed_dim, 3)
    log = timing.CallLog([4, 4, 1], [False, False, True])
    with timing.record_model_calls(vit) as replayed:
        t = timing.time_model_calls(vit, head, log, n_images=2, device="cpu", repeats=2, warmup=1)
    assert replayed.sizes == [4, 4, 1] * 3  # 1 warm-up + 2 repeats
    assert replayed.grad == [False, False, True] * 3
    assert t.repeats == 2 and t.n_images == 2
    with pytest.raises(ValueError, match="no model calls"):
        timing.time_model_calls(vit, head, timing.CallLog(), 1, "cpu")


def test_nearest_and_call_cost():
    curve = {1: 10.0, 8: 4.0, 64: 2.0}
    assert timing.nearest(curve, 1) == 10.0 and timing.nearest(curve, 6) == 4.0 and timing.nearest(curve, 500) == 2.0
    log = timing.CallLog([64, 8], [False, True])
    assert log.cost_ms(curve, grad_factor=3.0) == pytest.approx(64 * 2.0 + 8 * 4.0 * 3)
    with pytest.raises(ValueError, match="inference"):
        timing.nearest({}, 3)


def test_dry_run_counts_calls_without_the_model(vit):
    head = make_head("linear", vit.embed_dim, 3)
    x = torch.randn(1, 3, 32, 32)
    d = timing.dry_run(lambda: Sampler(vit, n=7).explain(x, head), vit, 1, "cpu")
    assert d.log.sizes == [1, 7] and d.seconds > 0
    own, model = d.estimate_ms({1: 1.0, 8: 0.5})
    assert model == pytest.approx(1 * 1.0 + 7 * 0.5)


# ----------------------------------------------------------------------------- running
def _specs(vit, smoke):
    cfg = dataclasses.replace(smoke.tve, arch="shared")  # timed first; "two" after it
    return ([bench.MethodSpec("kernelshap", lambda h: Sampler(vit, 6), budget=6, dry_run=True, overhead=True),
             bench.MethodSpec("broken", lambda h: (_ for _ in ()).throw(ValueError("not for this backbone")))]
            + bench.tve_specs(vit, cfg, ("shared", "two")))


def test_run_backbone_rows_follow_the_contract(vit, smoke):
    heads = bench.random_heads(vit.embed_dim, (2, 10, 10), "cpu")
    images = bench.random_images(vit, 2)
    res = running.run_backbone(vit, heads, images, _specs(vit, smoke), _plan(), "cpu", progress=None)
    df = res.throughput
    assert list(df.columns[:len(schema.THROUGHPUT_COLUMNS)]) == schema.THROUGHPUT_COLUMNS
    assert set(schema.EXTRA_COLUMNS) <= set(df.columns)
    assert not df[schema.THROUGHPUT_KEYS].duplicated().any()
    inf = df[df.method == "inference"]
    assert sorted(inf.batch_size) == [1, 2] and (inf.ratio_to_inference == 1).all()
    one = df[df.n_tasks == 1]
    assert set(one.method) == {"inference", "kernelshap", "tve"}
    assert set(df[df.method == "tve"].tve_arch) == {"shared", "two"} and set(inf.tve_arch) == {schema.NO_ARCH}
    assert (one.repeats[~one.estimated] == 2).all() and not one.estimated.any()
    ks = one[one.method == "kernelshap"]
    assert (ks.budget == 6).all() and (ks.model_images_per_image == 7).all()  # prediction + 6 samples
    assert (df.images_per_s * df.ms_per_image).round(6).eq(1000).all()
    # task scaling: 2 and 3 heads at the task batch size, TVE through explain_tasks
    ts = df[df.n_tasks > 1]
    assert set(ts.n_tasks) == {2, 3} and set(ts.batch_size) == {2}
    assert set(zip(ts.method, ts.tve_arch)) == {("kernelshap", "-"), ("tve", "shared"), ("tve", "two")}
    assert list(res.skipped.method) == ["broken"] and "not for this backbone" in res.skipped.reason[0]
    ov = res.overhead
    assert list(ov.columns[:len(schema.OVERHEAD_COLUMNS)]) == schema.OVERHEAD_COLUMNS
    assert len(ov) == 2 and not ov.estimated.any() and (ov.model_images_per_image == 7).all()
    assert (ov.model_calls_ms_per_image > 0).all()


def test_costs_over_the_cap_are_estimated_not_run(vit, smoke, monkeypatch):
    heads = bench.random_heads(vit.embed_dim, (2, 3), "cpu")
    images = bench.random_images(vit, 4)
    ran = []

    class Slow(Sampler):
        def explain(self, images, head, target=None):
            ran.append(len(images))
            return super().explain(images, head, target)

    specs = [bench.MethodSpec("kernelshap", lambda h: Slow(vit, 2000), budget=2000, dry_run=True, overhead=True),
             bench.MethodSpec("cheap", lambda h: Sampler(vit, 1))]
    res = running.run_backbone(vit, heads, images, specs, _plan(batch_sizes=(1, 4), max_measure_s=0.05,
                                                                task_batch_size=4), "cpu", progress=None)
    df = res.throughput
    ks = df[df.method == "kernelshap"]
    assert ks.estimated.all() and (ks.repeats == 0).all()
    assert ks.basis.str.startswith("estimated:").all()
    assert ks[ks.n_tasks == 1].basis.str.contains("stand-in").all()
    assert (ks[ks.n_tasks == 1].model_images_per_image == 2001).all()
    assert set(ran) == {1}  # only the stand-in runs of one image: the real model never ran it
    r2 = ks.set_index(["n_tasks", "batch_size"]).ms_per_image
    assert r2[(2, 4)] == pytest.approx(2 * r2[(1, 4)])  # n tasks: n x the one-task estimate
    assert res.overhead.estimated.all()
    assert list(res.overhead.batch_size) == [1, 4]  # a row per batch size, priced by the stand-in run
    assert res.overhead.basis.str.contains("stand-in").all() and (res.overhead.model_images_per_image == 2001).all()


def test_overhead_rows_do_not_depend_on_the_time_budget(vit):
    """The overhead table has one row per batch size whether the budget lets a row be measured or not
    (a rerun on a busier machine must not gain or lose rows); unmeasured rows say how they were priced."""
    heads = bench.random_heads(vit.embed_dim, (2, 3), "cpu")
    images = bench.random_images(vit, 4)
    specs = [bench.MethodSpec("kernelshap", lambda h: Sampler(vit, 6), budget=6, dry_run=True, overhead=True)]
    plan = _plan(batch_sizes=(1, 2, 4), task_batch_size=2)
    free = running.run_backbone(vit, heads, images, specs, plan, "cpu", progress=None).overhead
    spent = running.run_backbone(vit, heads, images, specs, plan, "cpu", progress=None, time_budget_s=1e-9).overhead
    assert list(free.batch_size) == list(spent.batch_size) == [1, 2, 4]
    assert (free.basis == "measured").all() and spent.estimated.all()
    assert (spent.model_images_per_image == free.model_images_per_image).all()
    assert spent.overhead.notna().all()


def test_throughput_rows_and_call_counts_do_not_depend_on_the_time_budget(vit):
    """Every row of the plan is written whether measured or estimated, and the model images per image (a
    property of the method, not of the machine) are the same either way: a rerun on a busier machine
    changes timings and the estimated flags, nothing else."""
    heads = bench.random_heads(vit.embed_dim, (2, 3), "cpu")
    images = bench.random_images(vit, 4)
    specs = [bench.MethodSpec("kernelshap", lambda h: Sampler(vit, 6), budget=6, dry_run=True, overhead=True),
             bench.MethodSpec("cheap", lambda h: Sampler(vit, 1))]
    plan = _plan(batch_sizes=(1, 2, 4), task_batch_size=2)
    keys = ["method", "budget", "batch_size", "n_tasks"]
    free = running.run_backbone(vit, heads, images, specs, plan, "cpu", progress=None).throughput
    slow = running.run_backbone(vit, heads, images, specs, _plan(batch_sizes=(1, 2, 4), task_batch_size=2,
                                                                 max_measure_s=1e-6), "cpu", progress=None)
    slow = slow.throughput
    a, b = (d.sort_values(keys).reset_index(drop=True) for d in (free, slow))
    assert a[keys].equals(b[keys]) and slow[slow.method != "inference"].estimated.all()
    one = a.n_tasks == 1
    assert a[one].model_images_per_image.equals(b[one].model_images_per_image)
    assert a[one].model_images_per_image.notna().all()


def test_a_slow_first_run_gets_a_second_probe_before_estimating(vit):
    import time

    class SlowStart(Explainer):  # no model work: only the sleep of the first call costs anything
        calls = 0

        def explain(self, images, head, target=None):
            SlowStart.calls += 1
            if SlowStart.calls == 1:
                time.sleep(1.0)  # one-off cost of a first call: 3 runs of it would exceed the 2.5 s cap
            return torch.zeros(len(images), self.grid, self.grid)

    heads = bench.random_heads(vit.embed_dim, (2,), "cpu")
    specs = [bench.MethodSpec("m", lambda h: SlowStart(vit))]
    res = running.run_backbone(vit, heads, bench.random_images(vit, 1), specs,
                               _plan(batch_sizes=(1,), task_batch_size=1, max_measure_s=2.5), "cpu", progress=None)
    row = res.throughput[res.throughput.method == "m"].iloc[0]
    assert not row.estimated and row.warmup == 2 and row.repeats == 2
    assert SlowStart.calls == 4  # two probes (warm-up) + two timed repeats


def test_after_the_time_budget_rows_are_estimated_from_one_run(vit):
    heads = bench.random_heads(vit.embed_dim, (2, 3), "cpu")
    runs = []

    class Counted(Sampler):
        def explain(self, images, head, target=None):
            runs.append(len(images))
            return super().explain(images, head, target)

    specs = [bench.MethodSpec("cheap", lambda h: Counted(vit, 1)),
             bench.MethodSpec("tve_like", lambda h: Counted(vit, 1))]
    res = running.run_backbone(vit, heads, bench.random_images(vit, 2), specs, _plan(task_methods=("cheap",)),
                               "cpu", progress=None, time_budget_s=1e-9)
    df = res.throughput
    inf = df[df.method == "inference"]
    assert not inf.estimated.any()  # the reference is always measured
    rest = df[df.method != "inference"]
    assert rest.estimated.all() and rest.basis.str.contains("time budget spent").all()
    assert rest[rest.batch_size == 1].basis.str.contains("the faster of two runs").all()
    assert runs == [1, 1, 1, 1]  # two runs per method at its first batch size (warm-up + one), none after
    assert set(df[df.n_tasks > 1].method) == {"cheap"}  # task scaling only for plan.task_methods


def test_plans_reduce_paper_size_on_cpu(smoke):
    cpu = get_profile("cpu")
    p_cpu = bench.plans(cpu, "cpu")
    assert [p.size for p in p_cpu] == ["profile", "paper"]
    assert p_cpu[1].batch_sizes == cpu.bench.paper_batch_sizes_cpu and p_cpu[1].repeats == cpu.bench.paper_repeats_cpu
    assert p_cpu[0].task_batch_size in cpu.bench.batch_sizes
    p_gpu = bench.plans(cpu, "cuda")
    assert p_gpu[1].batch_sizes == cpu.bench.paper_batch_sizes and p_gpu[1].repeats >= 5
    assert [p.size for p in bench.plans(get_profile("paper"), "cuda")] == ["profile"]
    with pytest.raises(ValueError, match="batch_sizes"):
        bench.plans(get_profile("smoke", {"bench.batch_sizes": [0, 4]}), "cpu")
    with pytest.raises(ValueError, match="task_batch_size 8"):
        _plan(batch_sizes=(1, 4), task_batch_size=8)


def test_run_backbone_rejects_too_few_images(vit):
    with pytest.raises(ValueError, match="at least 2 images"):
        running.run_backbone(vit, [make_head("linear", vit.embed_dim, 2)], bench.random_images(vit, 1), [], _plan(),
                             "cpu", progress=None)


def test_method_specs_cover_the_registry_targets_first(smoke):
    from tve_lib.explainers import EXPLAINERS

    swin = tiny_backbone("swin")
    specs = bench.method_specs(swin, smoke, (16, 32), ("shared", "two"))
    labels = [s.label for s in specs]
    # the profile's own shape first, though not listed
    assert labels[:5] == [f"tve ({smoke.tve.arch})", "tve (shared)", "tve (two)", "kernelshap-16", "kernelshap-32"]
    assert {s.method for s in specs} == set(EXPLAINERS) and "lime-32" in labels
    by = {s.label: s for s in specs}
    assert by["fastshap"].per_task and by["kernelshap-32"].dry_run and by["kernelshap-32"].overhead
    head = make_head("linear", swin.embed_dim, 3)
    assert by["kernelshap-32"].make(head).budget == 32
    assert by["fastshap"].make(head).net.num_classes == 3
    with pytest.raises(ValueError, match="rollout does not apply to swin"):
        by["rollout"].make(head)
    with pytest.raises(KeyError, match="unknown explainer"):
        bench.method_specs(swin, smoke, (16,), ("shared",), methods=["nope"])


def test_method_specs_read_the_class_capabilities_and_size_constructors(vit, smoke):
    import inspect

    from tve_lib.explainers import explainer_class
    from tve_lib.masking import default_radius

    specs = bench.method_specs(vit, smoke, (16,), ("shared",), seed=7)
    own = f"tve ({smoke.tve.arch})"
    assert [s.label for s in specs] == [own, "tve (shared)", "kernelshap-16", "random", "ig", "gradcam", "rollout",
                                        "occlusion", "lime-16", "fastshap"]
    flags = {s.label: (s.dry_run, s.overhead, s.per_task) for s in specs}
    assert flags == {own: (False, False, False), "tve (shared)": (False, False, False),
                     "kernelshap-16": (True, True, False),
                     "random": (False, False, False), "ig": (True, False, False), "gradcam": (False, False, False),
                     "rollout": (False, False, False), "occlusion": (True, True, False),
                     "lime-16": (True, True, False), "fastshap": (False, False, True)}
    by = {s.label: s for s in specs}
    head = make_head("linear", vit.embed_dim, 3)
    ev = smoke.eval
    ig = by["ig"].make(head)
    assert (ig.n_steps, ig.internal_batch_size) == (ev.ig_steps, ev.batch_size)
    occ = by["occlusion"].make(head)
    assert occ.radius == (smoke.tve.radius or default_radius(vit.grid))
    assert occ.batch_size == inspect.signature(explainer_class("occlusion")).parameters["batch_size"].default
    assert by["random"].make(head).seed == 7
    for label in ("kernelshap-16", "lime-16"):
        e = by[label].make(head)
        assert (e.budget, e.seed, e.batch_size) == (16, 7, ev.batch_size)


def test_tve_specs_build_one_explainer_for_every_head(vit):
    specs = bench.tve_specs(vit, TVEConfig(arch="shared", depth=1, embed_dim=32, num_heads=2, mix_hidden=16),
                            ("shared", "two"))
    h1, h2 = bench.random_heads(vit.embed_dim, (2, 3), "cpu")
    a, b = (s.make(h1) for s in specs)
    assert a is specs[0].make(h2) and a.model.trunk_remove is None and b.model.trunk_remove is not None
    assert [s.label for s in specs] == ["tve (shared)", "tve (two)"]


def test_tve_specs_time_the_configured_shape_first_even_when_unlisted(vit):
    cfg = TVEConfig(arch="two", depth=1, embed_dim=32, num_heads=2, mix_hidden=16)
    assert [s.label for s in bench.tve_specs(vit, cfg, ("shared", "two"))] == ["tve (two)", "tve (shared)"]
    assert [s.label for s in bench.tve_specs(vit, cfg, ("shared",))] == ["tve (two)", "tve (shared)"]


# ----------------------------------------------------------------------------- tables
def _table():
    rows = []
    for bb, bs in itertools.product(("vit", "swin"), (1, 8)):
        base = dict(device="cpu", backbone=bb, size="profile", batch_size=bs)
        rows += [base | dict(method="inference", images_per_s=1000.0, repeats=5),
                 base | dict(method="tve", tve_arch="shared", images_per_s=600.0, repeats=5),
                 base | dict(method="tve", tve_arch="two", images_per_s=300.0, repeats=5),
                 base | dict(method="kernelshap", budget=1000, images_per_s=2.0, estimated=bs == 8),
                 base | dict(method="ig", images_per_s=20.0)]
        if bs == 8:
            rows += [base | dict(method="tve", tve_arch="shared", n_tasks=3, images_per_s=550.0),
                     base | dict(method="ig", n_tasks=3, images_per_s=7.0)]
    return bench.add_ratios(schema.throughput_frame(pd.DataFrame(rows), 2))


def test_throughput_frame_normalises_and_rejects_missing_columns():
    df = _table()
    assert df.budget.dtype == int and df[df.method == "ig"].budget.iloc[0] == 0
    assert df.tve_arch[df.method == "ig"].eq("-").all()
    assert df.ratio_to_inference[df.method == "tve"].isin([0.6, 0.3, 0.55]).all()
    with pytest.raises(ValueError, match="lack columns"):
        schema.throughput_frame(pd.DataFrame([dict(device="cpu", method="x")]), 2)


def test_append_throughput_replaces_rows_with_the_same_keys(tmp_path):
    path = tmp_path / "throughput.csv"
    df = _table()
    bench.append_throughput(df, path)
    again = bench.append_throughput(df.assign(images_per_s=df.images_per_s * 2, ms_per_image=float("nan")), path)
    assert len(again) == len(df)
    ltx = pd.DataFrame([dict(device="cpu", backbone="vit", size="profile", method="ltx", batch_size=8,
                             images_per_s=100.0, repeats=5)])
    merged = bench.append_throughput(ltx, path)
    assert len(merged) == len(df) + 1
    row = merged[merged.method == "ltx"].iloc[0]
    assert row.ratio_to_inference == pytest.approx(100 / 2000)  # against the file's (doubled) inference
    assert list(pd.read_csv(path).columns[:len(schema.THROUGHPUT_COLUMNS)]) == schema.THROUGHPUT_COLUMNS


def test_target_checks():
    df = _table()
    over = pd.DataFrame([dict(device="cpu", backbone="vit", size="profile", method="kernelshap", budget=1000.0,
                              batch_size=1, overhead=0.1, estimated=False)])
    t = claims.target_checks(df, over)
    ks = t[t.target == "tve_over_kernelshap1000"]
    assert len(ks) == 8  # 2 backbones x 2 batch sizes x 2 variants
    assert ks[ks.tve_arch == "shared"].met.all() and not ks[ks.tve_arch == "two"].met.any()  # 300 / 2 < 200
    assert ks[ks.batch_size == 8].estimated.all() and not ks[ks.batch_size == 1].estimated.any()
    inf = t[t.target == "tve_ratio_to_inference"]
    assert inf[inf.tve_arch == "two"].met.eq(False).all() and inf[inf.tve_arch == "shared"].met.all()
    tasks = t[t.target == "tve_3_tasks_over_1"]
    assert len(tasks) == 2 and tasks.value.iloc[0] == pytest.approx(600 / 550) and tasks.met.all()
    assert t[t.target == "kernelshap1000_overhead"].met.all()


def test_figures_build_from_the_table():
    df = _table()
    for fig in (report.throughput_bars(df), report.batch_scaling(df), report.task_scaling(df)):
        assert isinstance(fig, plt.Figure)
        plt.close(fig)
