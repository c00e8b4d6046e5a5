"""The sampler's sensitivity to each step's output (abcache_core/sensitivity.py), which places even mode's computed
steps: exact on samplers whose coefficients are known in closed form, refused where the result is not linear in
the model's output, and measured on ComfyUI's own samplers by the node's scope (tests at the bottom)."""
from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abcache_core import CacheRun, CacheSettings
from abcache_core.policy import (calls_for_speed, flow_times, level_call, level_weights, spread_calls, spread_steps,
                                 step_lengths)
from abcache_core.sensitivity import VelocityProbe, measure_calls, measure_sensitivity

finite = dict(allow_nan=False, allow_infinity=False)


# Hand-written samplers in ComfyUI's calling convention: model(x, sigma * s_in) -> data estimate D.
def euler(model, x, sigmas):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def adams_bashforth_2(model, x, sigmas):
    """Flow models only: AB2 on the velocity v = (x - D)/sigma over steps h_i = sigma_{i+1} - sigma_i, euler first."""
    s_in = x.new_ones([x.shape[0]])
    v_prev, h_prev = None, None
    for i in range(len(sigmas) - 1):
        v = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        h = sigmas[i + 1] - sigmas[i]
        slope = v if v_prev is None else v + h / (2 * h_prev) * (v - v_prev)
        x = x + h * slope
        v_prev, h_prev = v, h
    return x


def ab2_sensitivity(sigmas):
    """The closed form of adams_bashforth_2's sensitivity to v_i: h_i (1 + r_i/2) - h_{i+1} r_{i+1}/2, r_i = h_i/h_{i-1}."""
    h = [sigmas[i + 1] - sigmas[i] for i in range(len(sigmas) - 1)]
    r = [0.0] + [h[i] / h[i - 1] for i in range(1, len(h))]
    return [abs(h[i] * (1 + r[i] / 2) - (h[i + 1] * r[i + 1] / 2 if i + 1 < len(h) else 0.0)) for i in range(len(h))]


def schedules(flow: bool):
    """Strictly decreasing schedules ending in 0: flow sigma <= 1, VP sigma up to 15."""
    top = 1.0 if flow else 15.0
    return st.lists(st.floats(0.01, 1.0, **finite), min_size=2, max_size=40).map(
        lambda w: [top * sum(w[i:]) / sum(w) for i in range(len(w))] + [0.0])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), flow=st.booleans())
def test_euler_sensitivity_is_the_step_length_in_flow_time(data, flow):
    """For euler, flow and VP alike, the measured sensitivity is exactly the step length in flow time: even mode
    places euler's steps where it did before the sampler was measured."""
    sched = data.draw(schedules(flow))
    got = measure_sensitivity(euler, sched, flow)
    assert got == pytest.approx(step_lengths(flow_times(sched, flow)), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_multistep_sensitivity_matches_its_closed_form(data):
    """A second-order Adams-Bashforth sampler carries each step's velocity into the next step: the probe measures
    exactly its coefficients, which differ from the step lengths."""
    sched = data.draw(schedules(True))
    got = measure_sensitivity(adams_bashforth_2, sched, True)
    assert got == pytest.approx(ab2_sensitivity(sched), rel=1e-9, abs=1e-12)


def test_probe_returns_the_data_estimate_of_its_velocity():
    """At a call in step j the probe's velocity in flow time is e_j: flow D = x - sigma v; VP (x = x0 + sigma eps)
    D = x/(1 + sigma) - sigma/(1 + sigma) v; a sigma between two schedule points belongs to the step it lies in."""
    x = torch.arange(12, dtype=torch.float64).reshape(1, 3, 2, 2)
    flow = VelocityProbe([1.0, 0.6, 0.3, 0.0], flow=True)
    v = torch.zeros_like(x)
    v[:, 1] = 1.0
    assert torch.allclose(flow(x, torch.tensor([0.45], dtype=torch.float64)), x - 0.45 * v)
    vp = VelocityProbe([14.0, 3.0, 0.5, 0.0], flow=False, scale=2.0)
    v = torch.zeros_like(x)
    v[:, 2] = 2.0
    assert torch.allclose(vp(x, torch.tensor([0.5], dtype=torch.float64)), x / 1.5 - (0.5 / 1.5) * v)
    assert vp.called == {2} and flow.called == {1}


def _adds_noise(model, x, sigmas):
    out = euler(model, x, sigmas)
    return out + 0.01 * torch.randn_like(out)


def _off_schedule(model, x, sigmas):
    return model(x, sigmas[0] * 1.5 * x.new_ones([1]))


def _controls_its_step(model, x, sigmas):
    out = euler(model, x, sigmas)
    return out * (1.0 + out.norm())           # a norm across the latent: not linear in the outputs


def _skips_a_step(model, x, sigmas):
    return euler(model, x, sigmas[::2])


def _two_calls_a_step(model, x, sigmas):
    """Heun: a corrector's call at the end of each step, at the next step's noise level."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        h = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * h
            continue
        x2 = x + d * h
        d2 = (x2 - model(x2, sigmas[i + 1] * s_in)) / sigmas[i + 1]
        x = x + (d + d2) / 2 * h
    return x


def _raises(model, x, sigmas):
    raise RuntimeError("this sampler needs a real model")


def _mixes_float32(model, x, sigmas):
    """Fails in float64 the way UniPC does (a float32 tensor of its own in a tensordot): measured in float32."""
    out = euler(model, x, sigmas)
    return torch.tensordot(out, torch.ones(1, dtype=torch.float32), dims=([3], [0])).unsqueeze(-1)


@pytest.mark.parametrize("sampler", [_adds_noise, _off_schedule, _controls_its_step, _skips_a_step, _two_calls_a_step,
                                     _raises])
def test_unmeasurable_samplers_give_none(sampler):
    sched = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert measure_sensitivity(sampler, sched, True) is None


def test_a_sampler_that_fails_in_float64_is_measured_in_float32():
    sched = [14.6, 4.0, 1.2, 0.3, 0.03, 0.0]
    got = measure_sensitivity(_mixes_float32, sched, False)
    assert got == pytest.approx(step_lengths(flow_times(sched, False)), rel=1e-5)


def test_cache_run_places_by_the_sensitivity_it_is_given():
    """CacheRun in even mode computes exactly the steps spread_steps picks on the sensitivity it gets (and on the
    step lengths without one, or with one of the wrong length)."""
    sched = [1.0 - i / 20 for i in range(20)] + [0.0]
    sens = tuple([0.05] * 15 + [0.4] * 5)     # a sampler that amplifies the last steps' outputs
    speed, calls = 3.0, calls_for_speed(20, 3.0)

    def computed(run):
        got = []
        for i, s in enumerate(sched[:-1]):
            if not run.decide(s, ["k"]).skip:
                got.append(i)
                run.record(s, {"k": torch.full((2,), s)})
        return got

    run = CacheRun(CacheSettings(mode="even", speed=speed), sched, flow=True, sensitivity=sens)
    assert run.placement == "sampler" and computed(run) == sorted(spread_steps(sens, calls))
    plain = CacheRun(CacheSettings(mode="even", speed=speed), sched, flow=True, sensitivity=sens[:-1])
    assert plain.placement == "step lengths"
    assert computed(plain) == sorted(spread_steps(step_lengths(sched), calls)) != sorted(spread_steps(sens, calls))


def _midpoint(model, x, sigmas):
    """DPM-2: the call on the trajectory, then one at the step's log-midpoint; euler into sigma 0."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * s_in)) / sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        mid = (sigmas[i] * sigmas[i + 1]).sqrt()
        x2 = x + d * (mid - sigmas[i])
        x = x + (x2 - model(x2, mid * s_in)) / mid * (sigmas[i + 1] - sigmas[i])
    return x


def test_measure_calls_maps_each_call_to_its_step():
    """heun: the first step has one call, every later step the corrector of the step before and then its own
    call on the trajectory, both at its sigma; dpm_2: the call on the trajectory, then the midpoint between
    schedule points (False), the last step (into sigma 0) one call; euler one call a step. Calls off the schedule
    or a sampler that raises: None."""
    sched = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert measure_calls(_two_calls_a_step, sched, True) == ((True,), (True, True), (True, True), (True, True))
    assert measure_calls(_midpoint, sched, True) == ((True, False), (True, False), (True, False), (True,))
    assert measure_calls(euler, [14.6, 3.0, 0.4, 0.0], False) == ((True,),) * 3
    for sampler in (_off_schedule, _raises, _skips_a_step):
        assert measure_calls(sampler, sched, True) is None, sampler.__name__


def _stages(draw_counts):
    """Per step, a sampler's calls, True at the step's own sigma (heun-like: every call; dpm_2-like: the first,
    the others between schedule points)."""
    return tuple(tuple(kind or i == 0 for i in range(n)) for n, kind in draw_counts)


@settings(max_examples=80, deadline=None)
@given(counts=st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=30),
       weights=st.lists(st.floats(0.001, 1.0, **finite), min_size=30, max_size=30), data=st.data())
def test_spread_calls_plan(counts, weights, data):
    """spread_calls: every call of the first and the last step; the level call (level_call) wherever a step has a
    computed call, at the steps spread_steps picks by level_weights; exactly
    ``calls`` calls while the budget lies between the two end steps' calls and every level call, at most
    ``calls`` beyond; every call at a budget of all calls; and for a sampler with one call a step exactly
    spread_steps."""
    stages = _stages(counts)
    n, w = len(stages), tuple(weights[:len(stages)])
    total = sum(len(c) for c in stages)
    calls = data.draw(st.integers(2, total + 2))
    plan = spread_calls(w, stages, calls)
    if n <= 2 or calls >= total:
        assert len(plan) == total
        return
    ends = sum(len(stages[s]) for s in {0, n - 1})
    assert {(s, c) for s in (0, n - 1) for c in range(len(stages[s]))} <= plan
    assert all((s, level_call(stages[s])) in plan for s, _ in plan)
    if ends <= calls <= ends + n - 2:
        assert len(plan) == calls
        assert {s for s, _ in plan} == spread_steps(level_weights(w, stages), calls - ends + 2)
    assert len(plan) <= max(calls, ends)
    single = tuple((True,) for _ in stages)
    assert spread_calls(w, single, calls) == {(s, 0) for s in spread_steps(w, calls)}


def test_level_call():
    """heun (every call at the step's sigma): the first, its corrector of the step before; dpm_2: the midpoint
    after its call on the trajectory; a one-call step: its only call; heunpp2-like steps (three calls at the step's
    sigma: the stages of the two steps before, then the call on the trajectory): the one just before the call on
    the trajectory."""
    assert level_call((True,)) == 0
    assert level_call((True, True)) == 0
    assert level_call((True, False)) == 1
    assert level_call((True, False, False)) == 2
    assert level_call((True, True, True)) == 1


def _heun_calls(sched):
    """heun's model calls over ``sched``: (sigma, step, index of the call in its step)."""
    out, seen = [], {}
    for i in range(len(sched) - 1):
        for s, step in ((sched[i], i),) + (((sched[i + 1], i + 1),) if sched[i + 1] > 0 else ()):
            out.append((s, step, seen.get(step, 0)))
            seen[step] = seen.get(step, 0) + 1
    return out


@pytest.mark.parametrize("speed", [1.0, 2.0, 3.0])
def test_cache_run_decides_a_multi_call_sampler_per_call(speed):
    """CacheRun with heun's calls: exactly the calls spread_calls plans are computed (the budget of
    calls_for_speed over all 39 calls), each key counts its own calls (the uncond of a split batch runs in a call
    of its own), speed 1 computes every call; without ``calls``, or with multi_call per_step, per step as before."""
    sched = [1.0 - i / 20 for i in range(20)] + [0.0]
    stages = ((True,),) + ((True, True),) * 19
    settings_ = CacheSettings(mode="even", speed=speed)
    run = CacheRun(settings_, sched, flow=True, calls=stages)
    assert run.placement == "step lengths, per call"
    plan = spread_calls(step_lengths(sched), stages, calls_for_speed(39, speed))
    got = set()
    for sigma, step, call in _heun_calls(sched):
        computed = False
        for keys in (["c"], ["u"]) if step % 2 else (["c", "u"],):
            d = run.decide(sigma, keys, inputs={k: torch.full((2,), sigma) for k in keys}, space=None)
            assert d.skip == ((step, call) not in plan), (step, call, keys)
            if not d.skip:
                run.record(sigma, {k: torch.full((2,), sigma + call) for k in keys})
                computed = True
        if computed:
            got.add((step, call))
    assert got == plan and len(got) == calls_for_speed(39, speed)
    assert CacheRun(settings_, sched, flow=True).stages is None
    per_step = CacheRun(CacheSettings(mode="even", speed=speed, multi_call="per_step"), sched, flow=True, calls=stages)
    assert per_step.placement == "step lengths" and per_step.stages is None


def test_cache_run_reuses_the_level_call_at_the_same_sigma():
    """heun at half the calls: where the corrector (the level call) at a sigma is computed and the call on the
    trajectory after it is not, the latter is the corrector's noise estimate recombined with its own input --
    exact for a model whose noise estimate does not depend on the input -- not an extrapolation from the steps
    before (which a noise estimate curved in sigma would tell apart)."""
    from abcache_core.spaces import noise_map

    sched = [0.96 - 0.048 * i for i in range(20)] + [0.0]      # below 1: a flow output needs 1 - sigma > 0
    stages = ((True,),) + ((True, True),) * 19
    run = CacheRun(CacheSettings(mode="even", speed=2.0), sched, flow=True, calls=stages)
    plan = spread_calls(step_lengths(sched), stages, calls_for_speed(39, 2.0))
    space = noise_map("flow")
    eps = lambda sigma: torch.linspace(-1.0, 1.0, 8, dtype=torch.float64) * (1 + 5 * sigma ** 2)  # noqa: E731
    reused = 0
    for sigma, step, call in _heun_calls(sched):
        x = torch.full((8,), 3.0 * sigma + 0.01 * call, dtype=torch.float64)     # the input differs per call
        d = run.decide(sigma, ["c"], inputs={"c": x}, space=space)
        if not d.skip:
            assert (step, call) in plan
            run.record(sigma, {"c": (eps(sigma) - x) / (1 - sigma)}, inputs={"c": x}, space=space)  # noise estimate
            continue
        assert (step, call) not in plan
        if call == 1 and (step, 0) in plan:
            reused += 1
            assert torch.allclose(space.to_noise(d.predictions["c"], x, sigma), eps(sigma), atol=1e-9), (step, call)
    assert reused >= 10


# ------------------------------------------------------------------------------ ComfyUI's own samplers
def _scope(env):
    return sys.modules[env.nodes.__name__ + ".integration.scope"]


@pytest.mark.parametrize("flow", [True, False])
def test_comfyui_samplers_measured_or_refused(env, flow):
    """scope.sampler_sensitivity on every sampler this ComfyUI offers, on a 20-step schedule: euler and ddim measure
    the step lengths; the multistep samplers (dpmpp_2m, deis, ipndm, lms, uni_pc, res_multistep) are measured and
    weigh the last steps more than their lengths; samplers that call the model twice in a step (heun, dpm_2),
    that add noise, that control their own steps (dpm_adaptive, dpm_fast) or need the real guider (cfg_pp) are
    refused. The global random state is left as it was."""
    import comfy.samplers

    scope = _scope(env)
    patcher = env.case("flux_dev" if flow else "sd15").patcher     # some samplers read its model sampling
    if flow:
        sched = [3 * (1 - i / 20) / (1 + 2 * (1 - i / 20)) for i in range(21)]
    else:
        sched = [(14.6 ** (1 / 7) + i / 19 * (0.03 ** (1 / 7) - 14.6 ** (1 / 7))) ** 7 for i in range(20)] + [0.0]
    lengths = step_lengths(flow_times(sched, flow))
    state = torch.random.get_rng_state()
    got = {name: scope.sampler_sensitivity(comfy.samplers.sampler_object(name), sched, flow, patcher)
           for name in comfy.samplers.KSampler.SAMPLERS}
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("euler", "ddim"):
        assert got[name] == pytest.approx(lengths, rel=1e-9), name
    for name in ("dpmpp_2m", "deis", "ipndm", "lms", "uni_pc", "res_multistep"):
        s = got[name]
        assert s is not None and len(s) == 20 and all(math.isfinite(v) and v >= 0 for v in s), name
        assert max(a / b for a, b in zip(s[-4:], lengths[-4:])) > 1.5, name
    adds_noise = [n for n in got if scope.sampler_adds_noise(comfy.samplers.sampler_object(n))]
    assert "euler_ancestral" in adds_noise and "dpmpp_2m_sde" in adds_noise
    for name in adds_noise + ["heun", "dpm_2", "dpm_adaptive", "dpm_fast", "euler_cfg_pp", "dpmpp_2m_cfg_pp"]:
        assert got[name] is None, name
    assert scope.sampler_adds_noise(None) is False and scope.sampler_sensitivity(None, sched, flow) is None
    assert scope.sampler_sensitivity(object(), sched, flow) is None


@pytest.mark.parametrize("family", ["flux_dev", "sd15"])
def test_node_places_by_the_sampler_it_runs(env, family):
    """The simple node at its defaults under dpmpp_2m: the forward runs on exactly the steps spread by the
    sampler's measured sensitivity (not by the step lengths, which euler keeps), the log and the report say
    'sampler', and the output is finite."""
    import comfy.model_sampling
    import comfy.samplers

    from abcache_core import step_position

    case = env.case(family)
    steps = 20
    flow = isinstance(case.patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    model = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=2.0)
    sink = model.model_options["ab_cache"].sink
    ran, placements = {}, {}
    for sampler in ("euler", "dpmpp_2m"):
        out, spy = env.harness.run_spied(case, model, steps=steps, sampler=sampler, scheduler="normal")
        assert torch.isfinite(out).all() and spy.inputs_intact
        ran[sampler] = sorted({round(step_position(sc, s)) for s, sc in zip(spy.sigmas, spy.schedules)})
        placements[sampler] = sink.last["placement"]
        sched = spy.schedules[0]
    calls = calls_for_speed(steps, 2.0)
    sens = _scope(env).sampler_sensitivity(comfy.samplers.sampler_object("dpmpp_2m"), sched, flow, case.patcher)
    assert ran["dpmpp_2m"] == sorted(spread_steps(sens, calls))
    assert ran["euler"] == sorted(spread_steps(step_lengths(flow_times(sched, flow)), calls)) != ran["dpmpp_2m"]
    assert placements == {"euler": "sampler", "dpmpp_2m": "sampler"}
    out, spy = env.harness.run_spied(case, model, steps=steps, sampler="euler_ancestral", scheduler="normal")
    assert sink.last["placement"] == "step lengths" and torch.isfinite(out).all()


@pytest.mark.parametrize("flow", [True, False])
def test_comfyui_sampler_calls(env, flow):
    """scope.sampler_calls on ComfyUI's samplers: heun calls the corrector of the step before and then its own
    call on the trajectory (one call in the first step), dpm_2 the call on the trajectory then the midpoint (one
    call in the last step, into sigma 0), heunpp2 more than one call in a step; euler one call a step; samplers
    that add noise or control their own steps are not measured."""
    import comfy.samplers

    scope = _scope(env)
    patcher = env.case("flux_dev" if flow else "sd15").patcher
    sched = [1.0 - i / 12 for i in range(12)] + [0.0] if flow else [14.6 * 0.6 ** i for i in range(12)] + [0.0]
    got = {name: scope.sampler_calls(comfy.samplers.sampler_object(name), sched, flow, patcher)
           for name in ("heun", "dpm_2", "heunpp2", "euler", "euler_ancestral", "dpmpp_sde", "dpm_adaptive")}
    assert got["heun"] == ((True,),) + ((True, True),) * 11
    assert got["dpm_2"] == ((True, False),) * 11 + ((True,),)
    assert got["heunpp2"] is not None and any(len(c) > 1 for c in got["heunpp2"])
    assert got["euler"] == ((True,),) * 12
    assert got["euler_ancestral"] is None and got["dpmpp_sde"] is None and got["dpm_adaptive"] is None


@pytest.mark.parametrize("sampler", ["heun", "dpm_2"])
@pytest.mark.parametrize("family", ["flux_dev", "sd15"])
def test_node_decides_multi_call_samplers_per_call(env, family, sampler):
    """The simple node at speed 2 and 3 under heun and dpm_2: the real forward runs exactly the calls
    spread_calls plans over the sampler's calls (calls_for_speed of all its calls; every call of the first and
    the last step, elsewhere each step's level call: heun's corrector, dpm_2's midpoint), the report says 'per call', outputs are finite and the
    inputs untouched; speed 1 stays bit-identical."""
    import comfy.model_sampling
    import comfy.samplers

    from abcache_core import step_position

    case = env.case(family)
    steps = 12
    flow = isinstance(case.patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    ref, spy_ref = env.harness.run_spied(case, case.patcher, steps=steps, sampler=sampler, scheduler="normal")
    same, _ = env.harness.run_spied(case, env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=1.0),
                                    steps=steps, sampler=sampler, scheduler="normal")
    assert torch.equal(ref, same)
    sched = spy_ref.schedules[0]
    stages = _scope(env).sampler_calls(comfy.samplers.sampler_object(sampler), sched, flow, case.patcher)
    total = sum(len(c) for c in stages)
    assert spy_ref.calls == total
    index = []
    for s in spy_ref.sigmas:                  # (step, call in step) of each call of the full run
        step = int(math.floor(step_position(sched, s) + 1e-6))
        index.append((step, sum(1 for i in index if i[0] == step)))
    for speed in (2.0, 3.0):
        model = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=speed)
        out, spy = env.harness.run_spied(case, model, steps=steps, sampler=sampler, scheduler="normal")
        plan = spread_calls(step_lengths(flow_times(sched, flow)), stages, calls_for_speed(total, speed))
        ran = [i for i in index if i in plan]
        assert spy.calls == len(plan) == calls_for_speed(total, speed)
        assert spy.sigmas == [spy_ref.sigmas[index.index(i)] for i in ran]
        assert model.model_options["ab_cache"].sink.last["placement"] == "step lengths, per call"
        assert torch.isfinite(out).all() and spy.inputs_intact


def test_speed_problem_counts_steps_with_a_computed_call():
    """heun decided per call: at 12 steps and speed 3 its 8 of 23 calls reach 7 steps (no warning, where the steps
    alone would leave 4); at 8 steps 5 of 15 calls reach 4 steps, too few; per step (multi_call per_step) the
    warning counts steps as before."""
    from abcache_core.policy import speed_problem

    heun = lambda n: ((True,),) + ((True, True),) * (n - 1)     # noqa: E731
    even = CacheSettings(mode="even", speed=3.0)
    assert speed_problem(even, 12, heun(12)) is None
    assert "leaves 4 model calls" in speed_problem(even, 12)
    assert "computes the model at 4 of them" in speed_problem(even, 8, heun(8))
    per_step = CacheSettings(mode="even", speed=3.0, multi_call="per_step")
    assert "leaves 4 model calls" in speed_problem(per_step, 12, heun(12))


@pytest.mark.parametrize("family", ["flux_dev", "sd15"])
def test_node_speed_on_every_comfyui_sampler(env, family):
    """The simple node at speed 2 under every sampler this ComfyUI has (per call, per step, sampler-placed or
    added-noise plans alike): finite outputs of the right shape, never more forward calls than the uncached run,
    fewer wherever that run made at least 8, and the sampler's inputs untouched."""
    import comfy.samplers

    case = env.case(family)
    node = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=2.0)
    for name in comfy.samplers.KSampler.SAMPLERS:
        ref, spy_ref = env.harness.run_spied(case, case.patcher, steps=8, sampler=name, scheduler="normal")
        out, spy = env.harness.run_spied(case, node, steps=8, sampler=name, scheduler="normal")
        assert out.shape == ref.shape and torch.isfinite(out).all(), name
        assert spy.calls <= spy_ref.calls and spy.inputs_intact, (name, spy.calls, spy_ref.calls)
        if spy_ref.calls >= 8:
            assert spy.calls < spy_ref.calls, (name, spy.calls, spy_ref.calls)
