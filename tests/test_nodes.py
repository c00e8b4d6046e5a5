"""AB-Cache nodes on ComfyUI's own model classes (tiny random weights) and its real samplers.

For every family and sampler: caching that skips nothing is bit-identical to the unpatched model; with
caching on, the real forward calls (counted by a spy inside our wrapper) equal the plan, and the output
is finite with the right shape, dtype and device.
"""
from __future__ import annotations

import math

import pytest
import torch

FAMILIES = ["flux_dev", "flux_schnell", "hunyuan_video", "ltxv", "wan21_t2v", "wan21_i2v", "wan22_ti2v", "sd3",
            "sd15", "chroma", "qwen_image", "lumina2", "cogvideox", "ltx2"]
SAMPLERS = ["euler", "dpmpp_2m", "uni_pc", "ddim", "res_multistep", "lcm", "heun", "dpm_2", "dpmpp_2s_ancestral",
            "euler_ancestral", "dpmpp_2m_sde"]
STEPS = 10


def _abcache(env, model, *schedule, **inputs):
    """AB-Cache as a graph applies it; positional ``order, interval, warmup`` (harness.TEST_SCHEDULE if omitted)."""
    return env.harness.abcache(env.nodes, model, **dict(zip(("order", "interval", "warmup"), schedule)), **inputs)


def _expected(spy, settings, flow=True):
    from devtools.harness import expected_calls

    return expected_calls(spy, settings, flow)


def _run(env, case, model, **kw):
    return env.harness.run_spied(case, model, **kw)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_identity_and_plan(env, family, sampler):
    from abcache_core import CacheSettings

    case = env.case(family)
    ref, spy_ref = _run(env, case, case.patcher, steps=STEPS, sampler=sampler)
    off, spy_off = _run(env, case, _abcache(env, case.patcher, interval=1), steps=STEPS, sampler=sampler)
    st = env.tm.streams   # ltx2: NestedTensor [video, audio]
    assert len(st(ref)) == len(st(off)) and all(torch.equal(a, b) for a, b in zip(st(ref), st(off))), \
        "caching that skips nothing must be bit-identical"
    assert spy_off.calls == spy_ref.calls

    on, spy_on = _run(env, case, _abcache(env, case.patcher, order=2, interval=3, warmup=2), steps=STEPS,
                      sampler=sampler)
    expected = _expected(spy_ref, CacheSettings(mode="fixed", order=2, interval=3, warmup=2))
    assert spy_on.calls == expected < spy_ref.calls
    assert [(o.shape, o.dtype, o.device) for o in st(on)] == [(r.shape, r.dtype, r.device) for r in st(ref)]
    assert all(torch.isfinite(o).all() for o in st(on))
    assert spy_on.inputs_intact and spy_ref.inputs_intact


@pytest.mark.parametrize("family", FAMILIES)
def test_node_defaults_even_placement_and_noise_space(env, family):
    """The simple node at its defaults (speed 3: even placement, extrapolator noise): the forward runs on exactly
    the planned steps (first, last, spread between by the schedule's step lengths in flow time), outputs are
    finite, and where the model has a noise map the far skips really use it (output differs from the
    output-space extrapolator on the same steps)."""
    import comfy.model_sampling

    from abcache_core import CacheSettings, calls_for_speed, flow_times, spread_steps, step_lengths, step_position

    case = env.case(family)
    steps = 12
    ref, spy_ref = _run(env, case, case.patcher, steps=steps, sampler="euler")
    m = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher)          # every input at its default
    on, spy_on = _run(env, case, m, steps=steps, sampler="euler")
    flow = isinstance(case.patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    assert spy_on.calls == _expected(spy_ref, CacheSettings(mode="even", speed=3.0), flow) == 4 * spy_ref.calls // steps
    sched = spy_ref.schedules[0]
    ran = sorted({round(step_position(sc, s)) for s, sc in zip(spy_on.sigmas, spy_on.schedules)})
    assert ran == sorted(spread_steps(step_lengths(flow_times(sched, flow)), calls_for_speed(steps, 3.0)))
    st = env.tm.streams
    assert all(torch.isfinite(o).all() for o in st(on)) and spy_on.inputs_intact
    out_space = env.harness.apply_node(env.nodes.ABCacheAdvancedNode, case.patcher, mode="even", speed=3.0,
                                       extrapolator="output")
    alt, spy_alt = _run(env, case, out_space, steps=steps, sampler="euler")
    assert spy_alt.calls == spy_on.calls
    if family not in ("sd15",):      # eps models: the output is the noise estimate, only the fit differs
        assert any(not torch.equal(a, b) for a, b in zip(st(on), st(alt))), "the noise space was not used"


@pytest.mark.parametrize("family", ["flux_dev", "sd15", "wan21_i2v", "cogvideox", "ltx2"])
def test_euler_corrects_the_skipped_steps_at_the_next_computed_one(env, family):
    """Even mode under euler (its measured sensitivity is its step lengths): a computed step returns its output
    corrected for the steps skipped before it (CacheRun.corrected_outputs), with the same forward calls as
    without the correction, finite and shaped as the model's output, the model's input untouched; under
    dpmpp_2m (a multistep sampler) nothing is corrected: bit-identical to deferred_correction off."""
    import comfy.model_sampling

    from abcache_core import CacheSettings

    case = env.case(family)
    flow = isinstance(case.patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    st = env.tm.streams
    on_settings = CacheSettings(mode="even", speed=2.0)
    off_settings = CacheSettings(mode="even", speed=2.0, deferred_correction="off")
    ref, spy_ref = _run(env, case, case.patcher, steps=12, sampler="euler")
    on, spy_on = _run(env, case, env.wrappers.apply_ab_cache(case.patcher, on_settings), steps=12, sampler="euler")
    off, spy_off = _run(env, case, env.wrappers.apply_ab_cache(case.patcher, off_settings), steps=12,
                        sampler="euler")
    assert spy_on.calls == spy_off.calls == _expected(spy_ref, on_settings, flow) < spy_ref.calls
    assert [(o.shape, o.dtype) for o in st(on)] == [(r.shape, r.dtype) for r in st(ref)]
    assert all(torch.isfinite(o).all() for o in st(on)) and spy_on.inputs_intact
    assert any(not torch.equal(a, b) for a, b in zip(st(on), st(off))), "no skipped step was corrected"
    a, spy_a = _run(env, case, env.wrappers.apply_ab_cache(case.patcher, on_settings), steps=12, sampler="dpmpp_2m")
    b, spy_b = _run(env, case, env.wrappers.apply_ab_cache(case.patcher, off_settings), steps=12, sampler="dpmpp_2m")
    assert spy_a.calls == spy_b.calls and all(torch.equal(x, y) for x, y in zip(st(a), st(b)))


def test_prompt_without_speed_samples_as_before(env):
    """A prompt written before `speed` existed (simple node with order/interval/warmup only) runs the fixed
    schedule with the raw-output extrapolator, bit-identical to the Advanced node set that way; speed 0 chosen
    in the UI keeps the fixed schedule but extrapolates the noise estimate (same calls, other values)."""
    case = env.case("flux_dev")
    legacy = env.nodes.ABCacheNode.execute(case.patcher, 2, 3, 2)[0]
    same = env.harness.apply_node(env.nodes.ABCacheAdvancedNode, case.patcher, mode="fixed", order=2, interval=3,
                                  warmup=2, extrapolator="output")
    zero = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, order=2, interval=3, warmup=2, speed=0.0)
    a, spy_a = _run(env, case, legacy, steps=12, sampler="euler")
    b, spy_b = _run(env, case, same, steps=12, sampler="euler")
    c, spy_c = _run(env, case, zero, steps=12, sampler="euler")
    assert torch.equal(a, b) and spy_a.calls == spy_b.calls == spy_c.calls
    assert not torch.equal(a, c) and torch.isfinite(c).all()


def test_speed_knob(env, caplog):
    """speed 1 = every step computed, bit-identical; speed 2 / 3 / 4 at 20 and 28 steps give the computed calls
    of calls_for_speed; heun decides per call (calls_for_speed of its 39 calls); too few calls for the speed is logged plainly, before sampling."""
    import logging

    from abcache_core.policy import calls_for_speed

    case = env.case("flux_dev")
    ref, spy_ref = _run(env, case, case.patcher, steps=10, sampler="euler")
    same, spy_same = _run(env, case, env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=1.0),
                          steps=10, sampler="euler")
    assert torch.equal(ref, same) and spy_same.calls == spy_ref.calls
    for steps in (20, 28):
        for speed in (2.0, 3.0, 4.0):
            m = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=speed)
            _, spy = _run(env, case, m, steps=steps, sampler="euler")
            assert spy.calls == calls_for_speed(steps, speed)
    m = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=3.0)
    _, spy = _run(env, case, m, steps=20, sampler="heun")
    assert spy.calls == calls_for_speed(2 * 20 - 1, 3.0)        # heun is decided per call
    with caplog.at_level(logging.WARNING):
        _run(env, case, m, steps=8, sampler="euler")
    assert any("speed 3 at 8 steps leaves 3 model calls" in r.getMessage() for r in caplog.records)


def test_known_call_counts(env):
    """Hand-computed plans: euler, 20 steps, warm-up 3, interval 4, last step computed ->
    steps 0 1 2 3 7 11 15 19 = 8 calls; heun evaluates twice per step but decides on sigma."""
    case = env.case("flux_dev")
    m = _abcache(env, case.patcher, order=2, interval=4, warmup=3)
    _, spy = _run(env, case, m, steps=20, sampler="euler")
    assert spy.calls == 8
    _, spy = _run(env, case, m, steps=20, sampler="heun")
    # heun: 39 evaluations; sigma index of each: 0,1,1,2,2,...,19,19 -> computed where index in {0,1,2,3,7,11,15,19}
    assert spy.calls == 1 + 2 * 7


def test_paper_mode_official_schedule(env):
    """Official AB-Cache schedule: compute when i < 5 or i % 6 == 0 -> 13 of 50 steps."""
    case = env.case("flux_dev")
    m = _abcache(env, case.patcher, order=2, interval=6, warmup=5, mode="paper", final_steps=0)
    _, spy = _run(env, case, m, steps=50, sampler="euler")
    assert spy.calls == 13


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_cfg_and_batches(env, cfg):
    """cfg 1 runs only the positive cond; cfg > 1 batches uncond and cond; latent batch 2; two positive
    conds (ConditioningCombine). Each chunk is extrapolated from its own history."""
    case = env.case("flux_dev")
    latent = torch.zeros((2,) + tuple(case.latent.shape[1:]))
    pos = case.positive(1) + case.positive(3)
    kw = dict(steps=12, cfg=cfg, latent=latent, positive=pos)
    ref, spy_ref = _run(env, case, case.patcher, **kw)
    on, spy_on = _run(env, case, _abcache(env, case.patcher), **kw)
    assert max(spy_ref.uuids) == (2 if cfg == 1.0 else 3)
    assert spy_on.calls < spy_ref.calls
    assert torch.isfinite(on).all() and on.shape == ref.shape
    rel = float((on - ref).norm() / ref.norm())
    assert rel < 0.05, rel


def test_cond_entering_by_timestep_range(env):
    """A cond active only for the second half of the schedule joins late: it has no history then, so that
    step is computed, and nothing breaks."""
    import node_helpers

    case = env.case("flux_dev")
    late = node_helpers.conditioning_set_values(case.positive(5), {"start_percent": 0.5, "end_percent": 1.0})
    pos = case.positive(1) + late
    ref, spy_ref = _run(env, case, case.patcher, steps=12, positive=pos)
    on, spy_on = _run(env, case, _abcache(env, case.patcher), steps=12, positive=pos)
    assert len(set(spy_ref.uuids)) == 2  # the chunk count really changes mid-run
    assert spy_on.calls < spy_ref.calls and torch.isfinite(on).all()


def test_denoise_and_advanced_steps(env):
    import nodes as comfy_nodes

    case = env.case("flux_dev")
    m = _abcache(env, case.patcher)
    out, spy = _run(env, case, m, steps=12, denoise=0.5)
    assert spy.calls < 12 and torch.isfinite(out).all()
    # KSamplerAdvanced over steps 4..12 of 16: the schedule the cache sees is the truncated one
    m2, spy2 = env.harness.with_spy(m)
    lat = {"samples": case.latent.clone()}
    out2 = comfy_nodes.KSamplerAdvanced().sample(m2, "enable", 0, 16, 2.0, "euler", "simple", case.positive(1),
                                                 case.negative(2), lat, 4, 12, "disable")[0]["samples"]
    assert len(spy2.schedules[0]) == 9 and torch.isfinite(out2).all()
    assert spy2.calls == 1 + 2 + 2  # warm-up 2 (steps 0,1), then every 3rd (2, 5), last (7)


def test_custom_sigmas_and_two_samplers_in_sequence(env):
    """SamplerCustomAdvanced-style custom sigmas, then a second sampler on the result (Wan 2.2 experts):
    each sampling call gets its own fresh run state."""
    import comfy.samplers

    case = env.case("wan21_t2v")
    high = _abcache(env, case.patcher)
    low = _abcache(env, env.case("wan21_t2v").patcher, order=3)
    sigmas = torch.tensor([1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0])
    first, second = sigmas[:7], sigmas[6:]
    noise = torch.randn(case.latent.shape, generator=torch.Generator().manual_seed(0))
    sampler = comfy.samplers.sampler_object("euler")

    def go(model, sig, x, add_noise):
        m, spy = env.harness.with_spy(model)
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(case.positive(1), case.negative(2))
        guider.set_cfg(3.0)
        out = guider.sample(noise if add_noise else torch.zeros_like(x), x, sampler, sig, seed=0, disable_pbar=True)
        return out, spy

    mid, s1 = go(high, first, case.latent.clone(), True)
    out, s2 = go(low, second, mid, False)
    assert s1.calls == 4 and s2.calls == 4  # 6 steps each: 0,1,2,5 computed
    assert torch.isfinite(out).all()
    # the same graph again gives the same result: no state survives a run
    mid_b, _ = go(high, first, case.latent.clone(), True)
    out_b, _ = go(low, second, mid_b, False)
    assert torch.equal(out, out_b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(env, dtype):
    case = env.tm.build("flux_dev", seed=0, dtype=dtype)
    ref, spy_ref = _run(env, case, case.patcher, steps=10)
    on, spy_on = _run(env, case, _abcache(env, case.patcher), steps=10)
    assert spy_on.calls < spy_ref.calls and on.dtype == ref.dtype and torch.isfinite(on).all()


def test_runs_are_independent_and_repeatable(env):
    case = env.case("flux_dev")
    m = _abcache(env, case.patcher)
    a, _ = _run(env, case, m, steps=12)
    _run(env, case, m, steps=7, sampler="heun", seed=3)  # something different in between
    b, _ = _run(env, case, m, steps=12)
    assert torch.equal(a, b)


def test_reapplying_replaces(env):
    case = env.case("flux_dev")
    twice = _abcache(env, _abcache(env, case.patcher, interval=2), interval=4, warmup=3)
    _, spy = _run(env, case, twice, steps=20)
    assert spy.calls == 8  # the second node's settings, applied once


def test_apply_model_fallback_for_models_without_hook(env):
    """SD3's forward runs no DIFFUSION_MODEL wrappers: AB-Cache caches at apply_model level instead."""
    case = env.case("sd3")
    assert not case.has_diffusion_model_wrapper
    ref, spy_ref = _run(env, case, case.patcher, steps=12)
    on, spy_on = _run(env, case, _abcache(env, case.patcher), steps=12)
    assert spy_on.calls < spy_ref.calls and torch.isfinite(on).all()


def test_telemetry_reaches_sink_and_no_tensor_survives(env):
    import gc

    case = env.case("flux_dev")
    m = _abcache(env, case.patcher)
    spec = m.model_options["ab_cache"]
    _run(env, case, m, steps=12)
    last = spec.sink.last
    assert last["summary"]["calls"] == 12 and last["summary"]["computed"] < 12
    assert len(last["records"]) == 12 and all(isinstance(r["sigma"], float) for r in last["records"])
    gc.collect()
    live = [o for o in gc.get_objects() if type(o).__name__ == "ActiveRun"]
    assert not live, "no run state may outlive its sampling call"


def test_report_node_plots_the_last_run(env):
    case = env.case("flux_dev")
    m = _abcache(env, case.patcher, order=2, interval=3, warmup=2)
    with pytest.raises(ValueError, match="not been sampled"):
        env.nodes.ABCacheReportNode.execute(m)
    with pytest.raises(ValueError, match="has no AB-Cache"):
        env.nodes.ABCacheReportNode.execute(case.patcher)
    _run(env, case, m, steps=12)
    img, text = env.nodes.ABCacheReportNode.execute(m, None)
    assert img.ndim == 4 and img.shape[0] == 1 and img.shape[-1] == 3 and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.01
    assert text.startswith("AB-Cache: 6/12 model calls computed (2.00x fewer)")
    recs = m.model_options["ab_cache"].sink.last["records"]
    changes = [r["change"] for r in recs if r["computed"]]
    assert all(math.isfinite(c) and c >= 0 for c in changes[1:])  # the U curve: one value per computed step


def test_concurrent_chunks_from_several_threads(env):
    """Multi-GPU work units (ComfyUI >= 0.23) call the wrapper from several threads with different
    conditionings: per-chunk results must equal a sequential run, and the run's records stay consistent."""
    import threading
    import uuid

    from abcache_core import CacheSettings

    w = env.wrappers
    sched = [1.0 - i / 12 for i in range(13)]
    uuids = [uuid.uuid4() for _ in range(4)]

    def forward_for(u):
        def f(x, sigma):
            g = torch.Generator().manual_seed(uuids.index(u))
            return x * sigma + torch.randn(x.shape, generator=g) * (1 - sigma) ** 2
        return f

    def drive(active, u, out):
        x = torch.ones(1, 4, 4, 4) * (uuids.index(u) + 1)
        for s in sched[:-1]:
            to = {"sigmas": torch.tensor([s]), "uuids": [u], "cond_or_uncond": [0]}
            out.append(w._cached_call(active, to, x, lambda: forward_for(u)(x, s), space="raw"))

    def run(threaded):
        spec = w.CacheSpec(CacheSettings(mode="fixed", order=2, interval=3, warmup=2))
        active = w.ActiveRun(spec, sched, "diffusion_model", flow=True)
        outs = {u: [] for u in uuids}
        if threaded:
            ts = [threading.Thread(target=drive, args=(active, u, outs[u])) for u in uuids]
            [t.start() for t in ts]
            [t.join() for t in ts]
        else:
            for u in uuids:
                drive(active, u, outs[u])
        return outs, active

    seq, _ = run(False)
    par, active = run(True)
    for u in uuids:
        assert all(torch.equal(a, b) for a, b in zip(seq[u], par[u]))
    computed = sum(r.computed for r in active.run.records)
    assert computed == 4 * 6  # steps 0,1,2,5,8,11 for each of the 4 chunks
