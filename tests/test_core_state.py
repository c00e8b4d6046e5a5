"""Per-run cache state (abcache_core.state.CacheRun) and settings (abcache_core.policy). No ComfyUI.

The "model" here is a known smooth function of sigma, so every prediction can be checked against the truth.
"""
from __future__ import annotations

import gc
import math
import threading
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abcache_core import CacheRun, CacheSettings, Decision, lagrange_weights, plan, step_position

KEY = "cond"


def flux_schedule(n=50, mu=1.15):
    """FLUX-style shifted sigmas 1 -> 0 (n + 1 values, last one 0)."""
    out = []
    for i in range(n + 1):
        t = 1.0 - i / n
        out.append(0.0 if t == 0 else math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0)))
    return out


def model(sigma, shape=(3, 4)):
    """A smooth, non-polynomial 'model output' (float64, a new tensor on every call)."""
    base = torch.linspace(-1.0, 1.0, math.prod(shape), dtype=torch.float64).reshape(shape)
    return torch.sin(3.0 * sigma + base) + sigma * base


def drive(run, schedule, keys=(KEY,), fn=model, log=None):
    """Euler-like driver: one call per step. Returns the list of computed step indices."""
    computed = []
    for i, s in enumerate(schedule[:-1]):
        d = run.decide(s, keys)
        if d.skip:
            outs = d.predictions
            if log is not None:
                log.setdefault("predictions", []).extend(outs.values())
        else:
            outs = {k: fn(s) for k in keys}
            run.record(s, outs)
            computed.append(i)
            if log is not None:
                log.setdefault("recorded", []).extend(outs.values())
        if log is not None:
            log.setdefault("history", []).append(run.history_tensors())
    return computed


SCHED = flux_schedule()


# --------------------------------------------------------------------------- history holds computed outputs only
@pytest.mark.parametrize("mode,extra", [
    ("fixed", dict(interval=3, warmup=2)),
    ("paper", dict(interval=4, warmup=3, final_steps=0)),
    ("adaptive", dict(tolerance=0.05, max_skips=4, warmup=2)),
])
@pytest.mark.parametrize("order", [2, 3])
def test_history_never_contains_a_prediction(mode, order, extra):
    run = CacheRun(CacheSettings(mode=mode, order=order, extrapolator="output", **extra), SCHED)
    log = {}
    computed = drive(run, SCHED, log=log)
    recorded, predictions = log["recorded"], log.get("predictions", [])
    assert predictions, "the run must have skipped something for this test to mean anything"
    assert len(computed) == len(recorded)
    rec_ptrs = {t.data_ptr() for t in recorded}
    pred_ptrs = {t.data_ptr() for t in predictions}  # all kept alive: pointers cannot be reused
    for i, hist in enumerate(log["history"]):
        for t in hist:
            assert t.data_ptr() in rec_ptrs and t.data_ptr() not in pred_ptrs
    # in values too: the history is exactly the last `order` recorded outputs, most recent first
    final = run.history_tensors()
    assert len(final) == order
    for got, want in zip(final, recorded[::-1][:order]):
        assert torch.equal(got, want)
    # and the predictions really are predictions (differ from the true output, not stored)
    for p in predictions:
        assert not any(p.data_ptr() == t.data_ptr() for t in final)
    run.release()


def test_predictions_are_new_tensors_even_for_plain_reuse():
    run = CacheRun(CacheSettings(mode="fixed", order=1, interval=2, warmup=1), SCHED)
    y = model(SCHED[0])
    run.record(SCHED[0], {KEY: y})
    d = run.decide(SCHED[2], [KEY])
    assert d.skip and torch.equal(d.predictions[KEY], y)
    d.predictions[KEY].add_(1.0)  # a caller mutating its output must not corrupt the history
    assert torch.equal(run.history_tensors()[0], model(SCHED[0]))


@pytest.mark.parametrize("coordinate,coord", [("sigma", lambda s: s), ("lambda", lambda s: -math.log(s)),
                                              ("time", lambda s: s / (1 + s))])
def test_predictions_match_lagrange_in_the_chosen_coordinate(coordinate, coord):
    run = CacheRun(CacheSettings(mode="fixed", order=3, interval=4, warmup=3, coordinate=coordinate,
                                 max_amplification=1e3), SCHED, flow=False)
    hist = []  # (coordinate, output) of computed steps, most recent first
    skipped = 0
    for s in SCHED[:12]:
        d = run.decide(s, [KEY])
        if d.skip:
            w = lagrange_weights([c for c, _ in hist[:3]], coord(s))
            want = sum(wj * y for wj, (_, y) in zip(w, hist[:3]))
            assert d.order == 3
            assert torch.allclose(d.predictions[KEY], want, rtol=0, atol=1e-6)
            # and it is a real extrapolation: close to, but not equal to, the true output
            assert 0 < (d.predictions[KEY] - model(s)).abs().max() < 1e-2
            skipped += 1
        else:
            run.record(s, {KEY: model(s)})
            hist.insert(0, (coord(s), model(s)))
    assert skipped == 6


@pytest.mark.parametrize("coordinate,mode,flow,axis", [
    ("auto", "even", True, "sigma"), ("auto", "fixed", True, "sigma"), ("time", "fixed", True, "sigma"),
    ("auto", "even", False, "time"), ("time", "fixed", False, "time"),
    *[("auto", mode, False, "lambda") for mode in ("fixed", "adaptive", "table", "paper")],
    *[(c, mode, flow, c) for c in ("sigma", "lambda", "step") for mode in ("even", "fixed") for flow in (True, False)],
])
def test_coordinate_auto_resolves_per_model_and_mode(coordinate, mode, flow, axis):
    """auto: sigma on flow models; on VP models flow time in even mode and lambda in the paper's modes (so a graph
    saved before even mode samples as it did); a named axis stays (time on a flow model is sigma itself)."""
    settings = CacheSettings(mode=mode, coordinate=coordinate, table="FsF")
    assert settings.resolved(flow).coordinate == axis
    assert CacheRun(settings, SCHED, flow=flow).settings.coordinate == axis


# --------------------------------------------------------------------------- release
@pytest.mark.parametrize("offload", [False, True])
def test_release_drops_every_tensor(offload):
    run = CacheRun(CacheSettings(mode="fixed", order=3, interval=2, warmup=2, cache_device="cpu" if offload else "same"), SCHED)
    drive(run, SCHED, keys=("a", "b"))
    refs = [weakref.ref(t) for t in run.history_tensors()]
    assert len(refs) == 6
    gc.collect()
    assert all(r() is not None for r in refs), "control: the history keeps its tensors alive until release()"
    run.release()
    gc.collect()
    assert all(r() is None for r in refs)
    assert run.history_tensors() == [] and run.history_sizes() == {}
    assert run.summary()["calls"] == 50 * 1  # telemetry (numbers only) survives


def test_recorded_tensor_is_not_copied_and_is_freed_after_release():
    """Weak reference to a tensor passed to record(): it dies once the caller drops it and the run releases."""
    run = CacheRun(CacheSettings(mode="fixed", order=2, interval=2), SCHED)
    y = model(SCHED[0])
    run.record(SCHED[0], {KEY: y})
    stored = run.history_tensors()[0]
    assert stored.data_ptr() == y.data_ptr()  # no copy on record (no offload, same device)
    ref_y, ref_stored = weakref.ref(y), weakref.ref(stored)
    del y, stored
    gc.collect()
    assert ref_stored() is not None
    run.release()
    gc.collect()
    assert ref_y() is None and ref_stored() is None


# --------------------------------------------------------------------------- history length
@pytest.mark.parametrize("mode,order,cap,extrapolator", [
    ("fixed", 1, 1, "output"), ("fixed", 2, 2, "output"), ("fixed", 3, 3, "output"), ("fixed", 4, 4, "output"),
    ("fixed", 5, 5, "output"), ("paper", 2, 2, "noise"), ("adaptive", 2, 2, "output"), ("adaptive", 4, 4, "output"),
    # noise_lsq's line goes through fit_points (3) computed steps: that many are kept; noise keeps `order`
    ("fixed", 1, 3, "noise_lsq"), ("fixed", 2, 2, "noise"), ("fixed", 4, 4, "noise"), ("even", 2, 3, "noise_lsq"),
])
def test_history_is_capped_at_order(mode, order, cap, extrapolator):
    extra = dict(tolerance=0.0) if mode == "adaptive" else dict(interval=1, speed=1.0)  # compute every step
    run = CacheRun(CacheSettings(mode=mode, order=order, extrapolator=extrapolator, **extra), SCHED)
    sizes = []
    for s in SCHED[:-1]:
        assert not run.decide(s, ["a", "b"]).skip
        run.record(s, {"a": model(s), "b": model(s, shape=(2,))})
        sizes.append(run.history_sizes())
    assert max(max(v.values()) for v in sizes) == cap
    assert sizes[-1] == {"a": cap, "b": cap}


def test_history_restarts_when_the_shape_changes():
    run = CacheRun(CacheSettings(mode="fixed", order=3, interval=1), SCHED)
    for s in SCHED[:3]:
        run.record(s, {KEY: model(s)})
    run.record(SCHED[3], {KEY: model(SCHED[3], shape=(5,))})
    assert run.history_sizes() == {KEY: 1}


# --------------------------------------------------------------------------- decisions are made on sigma
@pytest.mark.parametrize("mode,extra", [
    ("fixed", dict(interval=3, warmup=2)),
    ("adaptive", dict(tolerance=0.05, max_skips=3, warmup=2)),
])
def test_repeat_calls_at_the_same_sigma_get_the_same_decision(mode, extra):
    """Heun: each step calls the model at sigma_i and sigma_(i+1); sigma_(i+1) is called again next step."""
    run = CacheRun(CacheSettings(mode=mode, order=3, **extra), SCHED)
    by_level: dict[float, list[bool]] = {}
    preds: dict[float, list[torch.Tensor]] = {}
    for i in range(len(SCHED) - 1):
        for s in (SCHED[i], SCHED[i + 1]):
            if s == 0:
                continue
            d = run.decide(s, [KEY])
            by_level.setdefault(s, []).append(d.skip)
            if d.skip:
                preds.setdefault(s, []).append(d.predictions[KEY])
            else:
                run.record(s, {KEY: model(s)})
    assert any(any(v) for v in by_level.values()), "something must be skipped"
    assert sum(len(v) == 2 for v in by_level.values()) >= 40
    for s, decisions in by_level.items():
        assert len(set(decisions)) == 1, (s, decisions)
    for s, ps in preds.items():
        # same history in between (nothing was recorded), so the same prediction
        assert all(torch.equal(p, ps[0]) for p in ps)
    if mode == "fixed":  # Heun sees exactly the Euler plan
        skipped = {i for i in range(50) if by_level[SCHED[i]][0]}
        assert skipped == {i for i, p in enumerate(plan(run.settings, 50)) if p is False}


@pytest.mark.parametrize("interval,warmup", [(2, 1), (3, 2), (5, 4)])
def test_sigma_between_schedule_points_gets_the_step_decision(interval, warmup):
    """DPM-2 / DPM++ 2S: a second call at sqrt(sigma_i * sigma_(i+1)) follows step i's plan."""
    st_ = CacheSettings(mode="fixed", order=2, interval=interval, warmup=warmup)
    run = CacheRun(st_, SCHED)
    planned = plan(st_, 50)
    for i in range(50):
        mid = math.sqrt(SCHED[i] * SCHED[i + 1]) if SCHED[i + 1] > 0 else 0.5 * SCHED[i]
        assert i < step_position(SCHED, mid) < i + 1
        for s in (SCHED[i], mid):
            d = run.decide(s, [KEY])
            assert d.skip == (planned[i] is False), (i, s, d.reason)
            if not d.skip:
                run.record(s, {KEY: model(s)})


def test_step_position():
    assert step_position(SCHED, SCHED[7]) == 7.0
    assert step_position(SCHED, 0.5 * (SCHED[7] + SCHED[8])) == pytest.approx(7.5)
    assert step_position(SCHED, 1.5) is None
    assert step_position(SCHED, float("nan")) is None


# --------------------------------------------------------------------------- schedules
@settings(max_examples=40, deadline=None)
@given(
    order=st.integers(1, 5), interval=st.integers(1, 7), warmup=st.integers(0, 8), final=st.integers(0, 3),
    start=st.sampled_from([0.0, 0.1, 0.3]), end=st.sampled_from([1.0, 0.9, 0.6]),
    steps=st.sampled_from([10, 28, 50]),
)
def test_fixed_mode_computes_exactly_the_plan(order, interval, warmup, final, start, end, steps):
    s = CacheSettings(mode="fixed", order=order, interval=interval, warmup=warmup, final_steps=final,
                      start_percent=start, end_percent=end)
    sched = flux_schedule(steps)
    run = CacheRun(s, sched)
    computed = drive(run, sched)
    assert computed == [i for i, p in enumerate(plan(s, steps)) if p]
    assert run.summary()["computed"] == len(computed)


def test_paper_mode_official_schedule_is_13_of_50():
    s = CacheSettings(mode="paper", order=2, interval=6, warmup=5, final_steps=0)
    run = CacheRun(s, SCHED)
    computed = drive(run, SCHED)
    assert computed == [i for i in range(50) if i < 5 or i % 6 == 0]
    assert len(computed) == 13
    assert run.summary() == pytest.approx({"calls": 50, "computed": 13, "skipped": 37, "speedup": 50 / 13,
                                          "max_error": math.nan}, nan_ok=True)


def test_paper_mode_uses_binomial_weights_on_computed_history():
    """Official rule: 2 f[0] - f[1] over the last two COMPUTED outputs, whatever their spacing."""
    s = CacheSettings(mode="paper", order=2, interval=6, warmup=5, final_steps=0)
    run = CacheRun(s, SCHED)
    hist = []
    for i, sg in enumerate(SCHED[:-1]):
        d = run.decide(sg, [KEY])
        if d.skip:
            assert torch.allclose(d.predictions[KEY], 2 * hist[0] - hist[1], atol=1e-6)
        else:
            y = model(sg)
            run.record(sg, {KEY: y})
            hist.insert(0, y)


# --------------------------------------------------------------------------- adaptive
@pytest.mark.parametrize("tol", [1e-3, 1e-2, 0.1, 1.0])
@pytest.mark.parametrize("max_skips,warmup", [(1, 2), (3, 4), (5, 0)])
def test_adaptive_respects_max_skips_and_warmup(tol, max_skips, warmup):
    s = CacheSettings(mode="adaptive", order=3, tolerance=tol, max_skips=max_skips, warmup=warmup)
    run = CacheRun(s, SCHED)
    computed = set(drive(run, SCHED))
    assert set(range(warmup)) <= computed
    assert 49 in computed  # final_steps=1
    run_len = longest = 0
    for i in range(50):
        run_len = 0 if i in computed else run_len + 1
        longest = max(longest, run_len)
    assert longest <= max_skips
    if tol >= 0.1:
        assert longest == max_skips, "a loose tolerance must reach the skip cap (else this test proves nothing)"


@pytest.mark.parametrize("fn", [model, lambda s: torch.full((4,), 2.0), lambda s: torch.tensor([s, 1.0 - 2 * s])],
                         ids=["smooth", "constant", "linear"])
@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_never_skips_with_zero_tolerance(fn, order):
    run = CacheRun(CacheSettings(mode="adaptive", order=order, tolerance=0.0, max_skips=10, warmup=0), SCHED)
    assert drive(run, SCHED, fn=fn) == list(range(50))


def test_adaptive_tolerance_trades_calls_for_error():
    counts = []
    for tol in (1e-4, 1e-3, 1e-2, 1e-1):
        run = CacheRun(CacheSettings(mode="adaptive", order=3, tolerance=tol, max_skips=6, warmup=2), SCHED)
        counts.append(len(drive(run, SCHED)))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


# --------------------------------------------------------------------------- guards
def test_amplification_bound_lowers_the_order():
    sched = [1.0 - i / 10 for i in range(11)]  # uniform 0.1 steps
    orders = {}
    for amp in (8.0, 100.0):
        run = CacheRun(CacheSettings(mode="fixed", order=3, interval=20, warmup=3, final_steps=0,
                                     max_amplification=amp), sched)
        got = []
        for i, s in enumerate(sched[:-1]):
            d = run.decide(s, [KEY])
            if d.skip:
                got.append(d.order)
            else:
                run.record(s, {KEY: model(s)})
        orders[amp] = got
    # steps 0-3 computed; history 0.7/0.8/0.9 -> sum|w| = 7 one step ahead (0.6), 17 two steps ahead (0.5)
    assert orders[100.0][:2] == [3, 3]
    assert orders[8.0][0] == 3 and orders[8.0][1] < 3
    assert all(o >= 1 for o in orders[8.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("mode", ["fixed", "paper", "adaptive"])
def test_non_finite_history_forces_a_compute(bad, mode):
    s = CacheSettings(mode=mode, order=2, interval=2, warmup=0, tolerance=1.0, final_steps=0)
    run = CacheRun(s, SCHED)
    for i in range(3):
        y = model(SCHED[i])
        if i == 2:
            y[0, 0] = bad
        run.record(SCHED[i], {KEY: y})
    d = run.decide(SCHED[3], [KEY])  # step 3 is a planned skip in fixed/paper mode
    assert isinstance(d, Decision) and d.skip is False and d.predictions == {}
    assert "unsafe" in d.reason or "budget" in d.reason


def test_missing_history_for_a_key_forces_a_compute():
    run = CacheRun(CacheSettings(mode="fixed", order=2, interval=2, warmup=0), SCHED)
    run.record(SCHED[0], {"a": model(SCHED[0])})
    assert run.decide(SCHED[1], ["a"]).skip
    run2 = CacheRun(CacheSettings(mode="fixed", order=2, interval=2, warmup=0), SCHED)
    run2.record(SCHED[0], {"a": model(SCHED[0])})
    assert not run2.decide(SCHED[1], ["a", "b"]).skip


def test_off_schedule_and_zero_sigma_are_computed():
    run = CacheRun(CacheSettings(mode="fixed", order=2, interval=2, warmup=0), SCHED)
    run.record(SCHED[0], {KEY: model(SCHED[0])})
    assert not run.decide(2.0, [KEY]).skip
    assert not run.decide(0.0, [KEY]).skip
    assert not run.decide(SCHED[1], []).skip


def test_revisited_sigma_does_not_crash():
    """A sampler that goes back up (restart-style) must not leave repeated Lagrange nodes in the history."""
    run = CacheRun(CacheSettings(mode="fixed", order=3, interval=2, warmup=0, final_steps=0), SCHED)
    for s in SCHED[:6] + SCHED[2:10]:
        d = run.decide(s, [KEY])
        if not d.skip:
            run.record(s, {KEY: model(s)})
    assert run.history_sizes()[KEY] == 3
    d = run.decide(SCHED[11], [KEY])
    assert d.skip and bool(torch.isfinite(d.predictions[KEY]).all())


# --------------------------------------------------------------------------- threads
def test_thread_safety_smoke():
    settings_ = CacheSettings(mode="fixed", order=3, interval=3, warmup=2)
    ref = CacheRun(settings_, SCHED)
    want_log = {}
    want = drive(ref, SCHED, log=want_log)
    run = CacheRun(settings_, SCHED)
    n_threads, errors, results = 6, [], {}
    barrier = threading.Barrier(n_threads)

    def worker(t):
        try:
            barrier.wait()
            log = {}
            results[t] = (drive(run, SCHED, keys=(f"key{t}",), log=log), log)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not errors and len(results) == n_threads
    for computed, log in results.values():
        assert computed == want
        for p, q in zip(log["predictions"], want_log["predictions"]):
            assert torch.equal(p, q)
    assert run.history_sizes() == {f"key{t}": 3 for t in range(n_threads)}
    assert run.summary()["calls"] == 50 * n_threads
    run.release()


# --------------------------------------------------------------------------- settings validation
@pytest.mark.parametrize("kwargs,match", [
    (dict(order=0), r"order must lie in \[1, 5\]"),
    (dict(order=6), r"order must lie in \[1, 5\], got 6"),
    (dict(order=2.0), r"order must be a whole number"),
    (dict(interval=0), r"interval must lie in \[1, 20\], got 0"),
    (dict(start_percent=0.8, end_percent=0.2), r"start_percent \(0\.8\) must not exceed end_percent \(0\.2\)"),
    (dict(start_percent=-0.1), r"start_percent must lie in \[0, 1\]"),
    (dict(tolerance=-0.01), r"tolerance must lie in \[0, 10\]"),
    (dict(tolerance=math.nan), r"tolerance must be a finite number"),
    (dict(mode="table", table="FFxq"), r"invalid characters \['q', 'x'\]"),
    (dict(mode="table", table=""), r"table is empty"),
    (dict(mode="table", table=" , "), r"table is empty"),
    (dict(mode="adaptive", order=1), r"adaptive mode needs order >= 2"),
    (dict(mode="bogus"), r"mode must be one of"),
    (dict(coordinate="timestep"), r"coordinate must be one of"),
    (dict(max_skips=-1), r"max_skips"),
    (dict(max_amplification=0.5), r"max_amplification"),
    (dict(warmup=-1), r"warmup"),
])
def test_settings_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CacheSettings(**kwargs).validate()
    with pytest.raises(ValueError, match=match):
        CacheRun(CacheSettings(**kwargs), SCHED)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(mode="paper", interval=6, warmup=5), dict(mode="adaptive", order=2, tolerance=0.0),
    dict(mode="table", table="FFFs Fs,Fs"), dict(order=5, interval=1), dict(start_percent=0.5, end_percent=0.5),
])
def test_valid_settings_pass(kwargs):
    s = CacheSettings(**kwargs)
    assert s.validate() is s


@pytest.mark.parametrize("mode", ["fixed", "paper", "adaptive"])
def test_would_skip_predicts_decide_and_changes_nothing(mode):
    """would_skip (asked before ComfyUI computes control) says exactly whether decide() will skip, and leaves
    no trace: no record, no decision. Adaptive mode decides at call time: never a certain skip."""
    s = CacheSettings(mode=mode, order=2, interval=3, warmup=2)
    run = CacheRun(s, SCHED[:21])
    skips = 0
    for sg in SCHED[:20]:
        n = len(run.records)
        will = run.would_skip(sg, [KEY])
        assert len(run.records) == n
        d = run.decide(sg, [KEY])
        if mode == "adaptive":
            assert not will
        else:
            assert will == d.skip
        skips += d.skip
        if not d.skip:
            run.record(sg, {KEY: model(sg)})
    assert skips > 0
    assert run.would_skip(SCHED[5], ["no history"]) is False
