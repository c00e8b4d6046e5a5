"""The noise space (abcache_core/spaces.py): exact maps between a model's output and its noise estimate, checked
against the definitions and against ComfyUI's own model-sampling classes; the extrapolator rule by gap; even
placement and the speed knob's call counts (abcache_core/policy.py)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abcache_core import CacheRun, CacheSettings, plan
from abcache_core.policy import (SPREAD_POWER, calls_for_speed, equal_weights, extrapolation_rule, flow_times,
                                 spread_steps, step_lengths)
from abcache_core.spaces import NoiseMap

finite = dict(allow_nan=False, allow_infinity=False)


def _pair(seed=0, shape=(2, 3, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(sigma=st.floats(0.02, 0.98, **finite), sd=st.floats(0.3, 2.0, **finite), seed=st.integers(0, 99))
def test_each_map_recovers_the_true_noise_and_inverts(sigma, sd, seed):
    """Given x0 and ε, build each parameterisation's (input, output) from its definition: to_noise gives ε back,
    and from_noise(to_noise(y)) gives y back."""
    x0, n = _pair(seed)
    r1 = math.sqrt(sigma ** 2 + 1.0)
    rd = math.sqrt(sigma ** 2 + sd ** 2)
    cases = {
        # flow: x = (1 - s) x0 + s n, v = n - x0
        NoiseMap("flow"): ((1 - sigma) * x0 + sigma * n, n - x0),
        NoiseMap("eps"): (x0 + sigma * n, n),
        # v with sigma_data: VE x = x0 + s n, model input x / r, D = x sd^2/r^2 - v s sd/r  =>  v = (x sd^2/r^2 - x0) r/(s sd)
        NoiseMap("v", sd): ((x0 + sigma * n) / rd, ((x0 + sigma * n) * sd ** 2 / rd ** 2 - x0) * rd / (sigma * sd)),
        # CogVideoX: unscaled x = x0 + s n, D = (x - s v)/r  =>  v = (x - r x0)/s
        NoiseMap("v_ddpm"): (x0 + sigma * n, (x0 + sigma * n - r1 * x0) / sigma),
    }
    for m, (x, y) in cases.items():
        eps = m.to_noise(y, x, sigma)
        assert torch.allclose(eps, n, atol=1e-9, rtol=1e-9), m
        assert torch.allclose(m.from_noise(eps, x, sigma), y, atol=1e-8, rtol=1e-8), m


@settings(max_examples=60, deadline=None)
@given(sigma=st.floats(0.02, 1.0, **finite), sd=st.floats(0.3, 2.0, **finite), seed=st.integers(0, 99))
def test_each_map_recovers_the_true_data_estimate_and_inverts(sigma, sd, seed):
    """The data space (noise-injecting samplers): from each parameterisation's (input, output), built from x0 and
    ε by its definition, to_data gives x0 back -- at σ = 1 too for flow models -- and from_data(to_data(y)) gives
    y back."""
    x0, n = _pair(seed)
    r1 = math.sqrt(sigma ** 2 + 1.0)
    rd = math.sqrt(sigma ** 2 + sd ** 2)
    ve = x0 + sigma * n                                  # the sampler's latent of a VP model
    cases = {
        NoiseMap("flow"): ((1 - sigma) * x0 + sigma * n, n - x0),
        NoiseMap("eps"): (ve / r1, n),                   # DIFFUSION_MODEL level: the model's scaled input
        NoiseMap("eps_latent"): (ve, n),                 # APPLY_MODEL level: d = (x - D) / sigma, x the latent
        NoiseMap("v", sd): (ve / rd, (ve * sd ** 2 / rd ** 2 - x0) * rd / (sigma * sd)),
        NoiseMap("v_ddpm"): (ve, (ve - r1 * x0) / sigma),
    }
    for m, (x, y) in cases.items():
        assert m.usable(sigma, "data"), m
        d = m.to_data(y, x, sigma)
        assert torch.allclose(d, x0, atol=1e-8, rtol=1e-8), m
        assert torch.allclose(m.from_data(d, x, sigma), y, atol=1e-7, rtol=1e-7), m
    assert not NoiseMap("flow").usable(0.0, "data")


def test_flow_map_is_not_used_at_pure_noise():
    m = NoiseMap("flow")
    assert not m.usable(1.0) and not m.usable(0.0) and m.usable(0.5) and NoiseMap("eps").usable(1.0)


def test_maps_match_comfyui_model_sampling(comfy):
    """The map the output cache picks for each ComfyUI model sampling (scope.noise_map_of) agrees with ComfyUI's
    own calculate_input / calculate_denoised: ε from the map == (x - (1 - σ) D)/σ (flow) or (x - D)/σ (VE)."""
    import comfy.model_sampling as ms
    from devtools.pack import load_pack

    scope = __import__(load_pack().__name__ + ".nodes.integration.scope", fromlist=["noise_map_of"])
    from abcache_core.exposure import epsilon_from_denoised

    def sampling(*bases, **attrs):
        obj = type("S", bases, {})()
        obj.sigma_data = attrs.get("sigma_data", 1.0)
        return obj

    kinds = {"flow": sampling(ms.CONST), "eps": sampling(ms.EPS), "v": sampling(ms.V_PREDICTION, sigma_data=0.5)}
    if hasattr(ms, "V_PREDICTION_DDPM"):
        kinds["v_ddpm"] = sampling(ms.V_PREDICTION_DDPM)
    x_ve, y = _pair(3)
    sigma = torch.tensor([0.4], dtype=torch.float64)
    for kind, s in kinds.items():
        m = scope.noise_map_of(s)
        assert m is not None and m.kind == kind
        xin = s.calculate_input(sigma, x_ve)
        d = s.calculate_denoised(sigma, y, x_ve)
        want = epsilon_from_denoised(x_ve, d, 0.4, flow=(kind == "flow"))
        assert torch.allclose(m.to_noise(y, xin, 0.4), want, atol=1e-9), kind
    for no_map in (ms.EDM, ms.X0):
        assert scope.noise_map_of(sampling(no_map)) is None


# --------------------------------------------------------------------------- rule by gap
def test_extrapolator_rule_by_reach():
    auto = CacheSettings(mode="even", extrapolator="noise_lsq", long_gap=1.0)
    assert extrapolation_rule(auto, 1.0) == ("noise", "lagrange")
    assert extrapolation_rule(auto, 2.0) == ("noise", "lsq")
    assert extrapolation_rule(CacheSettings(extrapolator="output"), 9.0) == ("output", "lagrange")
    assert extrapolation_rule(CacheSettings(extrapolator="noise"), 9.0) == ("noise", "lagrange")
    assert extrapolation_rule(CacheSettings(mode="paper", extrapolator="noise"), 5.0) == ("output", "lagrange")


def test_extrapolator_rule_under_noise_injecting_samplers():
    """A sampler that adds noise at every step: the noise estimate's rules extrapolate the data estimate instead
    (same fit by reach); the output rule, the paper mode and noise_injected_space='noise' are unchanged."""
    lsq = CacheSettings(mode="even", extrapolator="noise_lsq", long_gap=1.0)
    assert extrapolation_rule(lsq, 1.0, True) == ("data", "lagrange")
    assert extrapolation_rule(lsq, 2.0, True) == ("data", "lsq")
    assert extrapolation_rule(CacheSettings(extrapolator="noise"), 1.0, True) == ("data", "lagrange")
    assert extrapolation_rule(CacheSettings(extrapolator="output"), 1.0, True) == ("output", "lagrange")
    assert extrapolation_rule(CacheSettings(mode="paper"), 1.0, True) == ("output", "lagrange")
    assert extrapolation_rule(CacheSettings(noise_injected_space="noise"), 1.0, True) == ("noise", "lagrange")
    assert CacheRun(CacheSettings(), [1.0, 0.5, 0.0], noise_injected=True).estimate_space == "data"
    assert CacheRun(CacheSettings(), [1.0, 0.5, 0.0]).estimate_space == "noise"


def test_data_space_ignores_the_noise_a_sampler_injects():
    """A flow 'model' under an ancestral-like sampler: between calls the latent gets fresh noise, so the noise
    estimate jumps at random while the data estimate is exactly linear in sigma. Extrapolating the data estimate
    (noise_injected) predicts the skipped outputs exactly; the noise estimate cannot."""
    steps = 12
    sched = [0.95 - 0.9 * i / steps for i in range(steps)] + [0.0]
    x0, direction = _pair(4)
    g = torch.Generator().manual_seed(5)
    fresh = [torch.randn(x0.shape, generator=g, dtype=torch.float64) for _ in sched]

    def errors(noise_injected):
        run = CacheRun(CacheSettings(mode="even", speed=3.0), sched, noise_injected=noise_injected)
        space, errs = NoiseMap("flow"), []
        for s, n in zip(sched[:-1], fresh):
            data = x0 + direction * s                    # linear in sigma
            x = (1 - s) * data + s * n                   # the latent with this step's noise
            v = n - data                                 # the output a perfect model gives at (x, s)
            d = run.decide(s, ["k"], inputs={"k": x}, space=space)
            if d.skip and run.history_sizes()["k"] >= 2:
                errs.append(float((d.predictions["k"] - v).norm() / v.norm()))
            else:
                run.record(s, {"k": v}, inputs={"k": x}, space=space)
        return errs

    data_errs, noise_errs = errors(True), errors(False)
    assert data_errs and max(data_errs) < 1e-9
    assert min(noise_errs) > 0.1


def _flow_run(extrapolator, steps=20):
    """A flow 'model' whose noise estimate is exactly linear in sigma and whose x0 estimate is not: the noise-space
    line is exact, the output-space line is not."""
    sched = [1.0 - i / steps for i in range(steps)] + [0.0]
    sched[0] = 0.999
    n, x0 = _pair(1)
    run = CacheRun(CacheSettings(mode="even", speed=4.0, extrapolator=extrapolator), sched)
    space = NoiseMap("flow")
    errs = []
    for s in sched[:-1]:
        eps = n * (1.0 + 0.3 * s)
        x0s = x0 * math.cos(3 * s)
        x = (1 - s) * x0s + s * eps
        v = (eps - x) / (1 - s)                          # the output the model would give at (x, s)
        d = run.decide(s, ["k"], inputs={"k": x}, space=space)
        if d.skip and run.history_sizes()["k"] >= 2:        # a line needs two computed steps
            errs.append(float((d.predictions["k"] - v).norm() / v.norm()))
        else:
            run.record(s, {"k": v}, inputs={"k": x}, space=space)
    return errs


def test_noise_space_prediction_uses_the_current_input_and_is_exact_for_a_linear_noise_estimate():
    noise, output = _flow_run("noise"), _flow_run("output")
    assert noise and len(noise) == len(output)
    assert max(noise) < 1e-9                     # exact: ε linear in sigma, recombined with the true x
    assert min(output) > 1e-4                    # the output-space line is not


def test_noise_space_falls_back_to_the_output_without_inputs():
    sched = [1.0 - i / 10 for i in range(10)] + [0.0]
    run = CacheRun(CacheSettings(mode="even", speed=3.0, extrapolator="noise"), sched)
    ref = CacheRun(CacheSettings(mode="even", speed=3.0, extrapolator="output"), sched)
    for r in (run, ref):
        for s in sched[:-1]:
            d = r.decide(s, ["k"])
            if not d.skip:
                r.record(s, {"k": torch.full((3,), s)})
    assert [x.computed for x in run.records] == [x.computed for x in ref.records]


# --------------------------------------------------------------------------- even placement and speed
@pytest.mark.parametrize("steps,speed,calls", [(20, 2, 10), (28, 2, 14), (20, 3, 7), (28, 3, 9), (50, 3, 17),
                                               (50, 4, 12), (8, 3, 3), (3, 3, 2), (2, 3, 2), (10, 1, 10), (1, 3, 1)])
def test_calls_for_speed(steps, speed, calls):
    assert calls_for_speed(steps, speed) == calls


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(2, 200), speed=st.floats(1.0, 10.0, **finite))
def test_even_placement_on_equal_steps_first_last_and_spread(steps, speed):
    calls = calls_for_speed(steps, speed)
    chosen = sorted(spread_steps(equal_weights(steps), calls))
    assert len(chosen) == calls and chosen[0] == 0 and chosen[-1] == steps - 1
    gaps = [b - a for a, b in zip(chosen, chosen[1:])]
    assert max(gaps) - min(gaps) <= 1
    # the plan of even mode without a schedule is exactly this set, whatever warm-up / interval say
    p = plan(CacheSettings(mode="even", speed=speed, warmup=5, interval=2, final_steps=3), steps)
    assert [i for i, c in enumerate(p) if c] == chosen


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.floats(1e-4, 1.0, **finite), min_size=2, max_size=80), speed=st.floats(1.0, 6.0, **finite))
def test_spread_placement_on_any_schedule(lengths, speed):
    """Any strictly decreasing schedule: exactly calls_for_speed steps, the first and the last among them."""
    steps = len(lengths)
    calls = calls_for_speed(steps, speed)
    chosen = sorted(spread_steps(tuple(lengths), calls))
    assert len(chosen) == calls and chosen[0] == 0 and chosen[-1] == steps - 1


def test_spread_placement_follows_step_length():
    """Long steps get computed steps more often: with the second half's steps 8x longer, the density there is
    8^SPREAD_POWER = 2x the first half's (the equidistribution of an order-2 rule, docs/DESIGN.md)."""
    lengths = tuple([1.0] * 30 + [8.0] * 30)
    chosen = spread_steps(lengths, 16)
    first, second = sum(1 for i in chosen if i < 30), sum(1 for i in chosen if i >= 30)
    assert SPREAD_POWER == pytest.approx(1 / 3)
    assert (first, second) in ((5, 11), (6, 10)), (first, second)


@pytest.mark.parametrize("flow", [True, False])
def test_cache_run_places_computed_steps_by_its_schedule(flow):
    """CacheRun in even mode computes exactly the steps spread_steps picks on its schedule in flow time (flow:
    t = sigma; eps/v: t = sigma / (1 + sigma)), not the steps evenly spread by index."""
    steps = 30
    if flow:   # FLUX-like shifted schedule: short steps first
        sched = [3 * (1 - i / steps) / (1 + 2 * (1 - i / steps)) for i in range(steps + 1)]
    else:      # Karras-like VP schedule
        sched = [(14.6 ** (1 / 7) + i / (steps - 1) * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7 for i in range(steps)]
        sched.append(0.0)
    settings = CacheSettings(mode="even", speed=3.0)
    run = CacheRun(settings, sched, flow=flow)
    computed = []
    for i, s in enumerate(sched[:-1]):
        if not run.decide(s, ["k"]).skip:
            computed.append(i)
            run.record(s, {"k": torch.full((3,), s)})
    want = sorted(spread_steps(step_lengths(flow_times(sched, flow)), calls_for_speed(steps, 3.0)))
    assert computed == want and run.placement == "step lengths"
    assert want != sorted(spread_steps(equal_weights(steps), calls_for_speed(steps, 3.0)))


def test_even_mode_needs_a_speed_of_at_least_one():
    with pytest.raises(ValueError, match="speed"):
        CacheSettings(mode="even", speed=0.5).validate()
    CacheSettings(mode="fixed", speed=0.0).validate()
