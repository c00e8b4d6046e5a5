"""Deferred correction (docs/DESIGN.md, "Deferred correction"): at a computed step, the steps skipped since the
last one are corrected through this step's output. Pure core on an euler driver with a flow model, plus the rule
that decides where it applies; the ComfyUI side is in tests/test_nodes.py."""
from __future__ import annotations

import math

import pytest
import torch

from abcache_core import CacheRun, CacheSettings
from abcache_core.policy import CORRECTION_POINTS, corrects_skips, flow_times, step_lengths
from abcache_core.spaces import NoiseMap
from abcache_core.weights import lagrange_weights

KEY = "cond"
FLOW = NoiseMap("flow")


def schedule(n=20, mu=1.15):
    """FLUX-style shifted sigmas 1 -> 0 (n + 1 values), starting just below 1 (the flow map needs 1 - sigma > 0)."""
    out = []
    for i in range(n + 1):
        t = 0.98 * (1.0 - i / n)
        out.append(0.0 if t == 0 else math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0)))
    return out


def data_of(x, sigma):
    """A smooth data estimate (not a polynomial in sigma: no extrapolation is exact) that follows the latent more
    as the noise falls, as a denoiser's does."""
    base = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(3, 4)
    return torch.sin(2.0 * sigma + base) + base * math.exp(-2.0 * sigma) + 0.5 * (1.0 - sigma) * x


def velocity(x, sigma):
    return (x - data_of(x, sigma)) / sigma


def euler(run, sched, x0, log=None, dtype=torch.float64):
    """Euler on the flow ODE dx/dsigma = v, the model's calls decided by ``run``, latent and outputs in ``dtype``
    (the model's arithmetic in float64). Returns the final latent."""
    x = x0.to(dtype)
    for i, s in enumerate(sched[:-1]):
        d = run.decide(s, [KEY], inputs={KEY: x}, space=FLOW) if run is not None else None
        if d is not None and d.skip:
            v = d.predictions[KEY]
        else:
            v = velocity(x.double(), s).to(dtype)
            if run is not None:
                run.record(s, {KEY: v}, inputs={KEY: x}, space=FLOW)
                v = run.corrected_outputs(s, {KEY: v}, FLOW).get(KEY, v)
        if log is not None:
            log.append((i, x.clone(), v.clone(), d is None or not d.skip))
        x = (x.double() + (sched[i + 1] - s) * v.double()).to(dtype)
    return x


def run_for(sched, speed, **kw):
    lengths = step_lengths(flow_times(sched, True))
    return CacheRun(CacheSettings(mode="even", speed=speed, **kw), sched, flow=True, sensitivity=lengths)


def test_correction_estimates_the_error_of_a_skipped_step():
    """Where one step was skipped between two computed ones, the correction a computed step m carries, (v'_m - v_m)
    h_m / h_n, is the skipped step's error v(x_n) - v_used(n) at its own latent x_n to within a tenth (the
    interpolation through the next computed call against the extrapolation the skip had)."""
    sched = schedule()
    x0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    log = []
    euler(run_for(sched, 2.0), sched, x0, log)
    h = step_lengths(sched)
    checked = 0
    for (n, xn, vn, cn), (m, xm, vm, cm) in zip(log, log[1:]):
        if cn or not cm or (n > 0 and not log[n - 1][3]):
            continue
        true = velocity(xn, sched[n]) - vn
        carried = (vm - velocity(xm, sched[m])) * h[m] / h[n]
        assert float((carried - true).norm()) <= 0.1 * float(true.norm()), n
        checked += 1
    assert checked >= 5


def test_correction_moves_the_result_as_if_the_skips_had_the_interpolated_outputs():
    """The identity the correction is built on, for an euler sampler whose sensitivity is its step lengths: the
    sum of step length x velocity over the run equals that of the computed calls' own outputs plus, at each
    skipped step, the output whose data estimate is the interpolation (through the next computed call and the
    ones before it) at that step's own latent."""
    sched = schedule()
    x0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    log = []
    run = run_for(sched, 3.0)
    euler(run, sched, x0, log)
    h = step_lengths(sched)
    given = sum(h[i] * v for i, _, v, _ in log)
    computed = [i for i, _, _, c in log if c]
    xs = {i: x for i, x, _, _ in log}
    expected = torch.zeros_like(x0)
    for i, x, v, c in log:
        if c:
            expected += h[i] * velocity(x, sched[i])      # the model's own output, before any correction
            continue
        after = min(j for j in computed if j > i)
        points = [j for j in computed if j <= after][-CORRECTION_POINTS:][::-1]
        w = lagrange_weights([sched[j] for j in points], sched[i])
        interp = sum(wj * data_of(xs[j], sched[j]) for wj, j in zip(w, points))
        expected += h[i] * (x - interp) / sched[i]
    assert torch.allclose(given, expected, rtol=1e-9, atol=1e-12)


def test_no_correction_where_the_rule_says_no():
    """Where corrects_skips is False nothing is kept and corrected_outputs returns nothing: the run samples as
    without it."""
    sched = schedule()
    x0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    off = run_for(sched, 2.0, deferred_correction="off")
    log = []
    euler(off, sched, x0, log)
    assert all(torch.equal(v, velocity(x, sched[i])) for i, x, v, c in log if c)
    assert not off._skipped_since


def test_release_drops_the_skipped_steps_data():
    sched = schedule()
    run = run_for(sched, 3.0)
    x = torch.randn(3, 4, dtype=torch.float64)
    for s in sched[:3]:        # computed, skipped, skipped (first step and the spread plan's next skips)
        d = run.decide(s, [KEY], inputs={KEY: x}, space=FLOW)
        if not d.skip:
            run.record(s, {KEY: velocity(x, s)}, inputs={KEY: x}, space=FLOW)
    assert run._skipped_since and any(e.data is not None for e in run._hist[KEY])
    run.release()
    assert not run._skipped_since and run.history_tensors() == []


def _lengths(sched, flow=True):
    return step_lengths(flow_times(sched, flow))


@pytest.mark.parametrize("kw,sensitivity,extra,expected", [
    ({}, "lengths", {}, True),
    ({"coordinate": "lambda"}, "lengths", {}, True),
    ({"extrapolator": "noise_lsq"}, "lengths", {}, True),
    ({}, "scaled", {}, False),                  # a multistep sampler: its sensitivity is not its step lengths
    ({}, None, {}, False),                      # not measured (a custom sampler)
    ({}, "lengths", {"noise_injected": True}, False),
    ({}, "lengths", {"per_call": True}, False),
    ({"extrapolator": "output"}, "lengths", {}, True),
    ({"deferred_correction": "off"}, "lengths", {}, False),
    ({"mode": "fixed"}, "lengths", {}, False),
])
@pytest.mark.parametrize("flow", [True, False])
def test_corrects_skips_rule(kw, sensitivity, extra, expected, flow):
    sched = schedule() if flow else [14.6 * (0.03 / 14.6) ** (i / 20) for i in range(20)] + [0.0]
    lengths = _lengths(sched, flow)
    sens = {"lengths": lengths, None: None,
            "scaled": tuple(x * (1.0 + 0.5 * (i == len(lengths) - 2)) for i, x in enumerate(lengths))}[sensitivity]
    settings = CacheSettings(**{"mode": "even", "speed": 2.0, **kw}).resolved(flow)
    assert corrects_skips(settings, sens, sched, flow, **extra) is expected


def test_half_precision_carries_the_correction_of_float64():
    """bfloat16 outputs and latents: what a computed step carries is the float64 correction computed from the same
    rounded values, to within the rounding of a bfloat16 output (the correction is added to the model's own output
    in float32 and rounded once)."""
    sched = schedule()
    x0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    log = []
    euler(run_for(sched, 2.0), sched, x0, log, dtype=torch.bfloat16)
    h = step_lengths(sched)
    own = {i: velocity(x.double(), sched[i]).to(torch.bfloat16).double() for i, x, _, c in log if c}
    data = {i: x.double() - sched[i] * own[i] for i, x, _, c in log if c}
    computed = sorted(own)
    checked = 0
    for m, xm, vm, cm in log:
        skipped = [i for i, _, _, c in log if not c and max([j for j in computed if j < m], default=m) < i < m]
        if not cm or not skipped:
            continue
        points = [j for j in computed if j <= m][-CORRECTION_POINTS:][::-1]
        expected = torch.zeros_like(own[m])
        for n in skipped:
            w = lagrange_weights([sched[j] for j in points], sched[n])
            interp = sum(wj * data[j] for wj, j in zip(w, points))
            used = log[n][1].double() - sched[n] * log[n][2].double()
            expected += (h[n] / h[m]) * (used - interp) / sched[n]
        carried = vm.double() - own[m]
        tol = 2.0 ** -7 * (float(own[m].abs().max()) + float(expected.abs().max()))
        assert float((carried - expected).abs().max()) <= tol, m
        checked += 1
    assert checked >= 5
