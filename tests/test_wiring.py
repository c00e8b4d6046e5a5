"""Ways a graph is wired around AB-Cache: model-sampling nodes, hand-made sigma schedules, a model that
raises, split sampling. ComfyUI is real; forward calls are counted by devtools.harness's spy.
"""
from __future__ import annotations

import logging
import sys

import pytest
import torch


def _settings(**kw):
    from abcache_core import CacheSettings

    return CacheSettings(**{**dict(mode="fixed", order=2, interval=3, warmup=2), **kw})


def _cached(env, model, sink=None, **kw):
    return env.wrappers.apply_ab_cache(model, _settings(**kw), sink=sink)


# ---------------------------------------------------------------------------------- 4. model sampling nodes
def _patch_sampling(model, how):
    from comfy_extras import nodes_model_advanced as nma

    kind, arg = how
    if kind == "discrete":
        return nma.ModelSamplingDiscrete().patch(model, arg, False)[0]
    if kind == "edm":
        return nma.ModelSamplingContinuousEDM().patch(model, arg, 120.0, 0.002)[0]
    if kind == "v":
        return nma.ModelSamplingContinuousV().patch(model, "v_prediction", 500.0, 0.03)[0]
    if kind == "sd3":
        return nma.ModelSamplingSD3().patch(model, arg)[0]
    if kind == "flux":
        return nma.ModelSamplingFlux().patch(model, 1.15, 0.5, 64, 64)[0]
    raise ValueError(kind)


SAMPLING_CASES = [
    ("flux_dev", None, "sigma", True),
    ("flux_dev", ("discrete", "eps"), "lambda", False),
    ("flux_dev", ("discrete", "v_prediction"), "lambda", False),
    ("flux_dev", ("discrete", "lcm"), "lambda", False),
    ("flux_dev", ("edm", "eps"), "lambda", False),
    ("flux_dev", ("edm", "v_prediction"), "lambda", False),
    ("flux_dev", ("v", None), "lambda", False),
    ("sd15", None, "lambda", False),
    ("sd15", ("sd3", 3.0), "sigma", True),
    ("sd15", ("flux", None), "sigma", True),
    ("wan21_t2v", ("sd3", 3.0), "sigma", True),   # Wan ships with shift 8
]


@pytest.mark.parametrize("family,how,coordinate,flow", SAMPLING_CASES)
@pytest.mark.parametrize("order", ["sampling_first", "cache_first"])
def test_model_sampling_node_is_seen(env, family, how, coordinate, flow, order):
    """The coordinate ('auto') and the flow/VP space come from the model sampling the sampler uses: the
    patcher's object patch, in either node order. Nothing skipped: bit-identical to the patched model."""
    case = env.case(family)
    patched = _patch_sampling(case.patcher, how) if how else case.patcher

    def graph(**kw):
        if how is None or order == "sampling_first":
            return _cached(env, patched, **kw)
        return _patch_sampling(_cached(env, case.patcher, **kw), how)

    sink = env.nodes.TelemetrySink()
    out, spy = env.harness.run_spied(case, graph(sink=sink), steps=10)
    assert (sink.last["settings"]["coordinate"], sink.last["flow"]) == (coordinate, flow)
    assert torch.isfinite(out).all() and spy.calls < 10
    ref, spy_ref = env.harness.run_spied(case, patched, steps=10)
    off, spy_off = env.harness.run_spied(case, graph(interval=1), steps=10)
    assert torch.equal(off, ref) and spy_off.calls == spy_ref.calls
    # the patched sampling really changes the schedule the sampler (and the cache) sees
    if how is not None:
        _, spy_plain = env.harness.run_spied(case, case.patcher, steps=10)
        assert spy_ref.schedules[0] != spy_plain.schedules[0] or how[0] == "discrete"


@pytest.mark.parametrize("how,axis", [(None, "time"), (("sd3", 3.0), "sigma")])
def test_the_speed_input_extrapolates_on_flow_time(env, how, axis):
    """The simple node at its defaults (speed, even mode) extrapolates on flow time: sigma / (1 + sigma) for a VP
    model, sigma itself once ModelSamplingSD3 makes it a flow model. It samples exactly as the Advanced node with
    that axis named, and differently from lambda (a VP model's axis in the fixed mode) on the same steps."""
    case = env.case("sd15")
    patched = _patch_sampling(case.patcher, how) if how else case.patcher

    def run(node, **inputs):
        model = env.harness.apply_node(node, patched, **inputs)
        out, spy = env.harness.run_spied(case, model, steps=12)
        return out, model.model_options["ab_cache"].sink.last["settings"]["coordinate"]

    out, used = run(env.nodes.ABCacheNode)
    assert torch.isfinite(out).all() and used == axis
    named, _ = run(env.nodes.ABCacheAdvancedNode, mode="even", speed=3.0, extrapolator="noise", coordinate="time")
    assert torch.equal(out, named)
    on_lambda, used = run(env.nodes.ABCacheAdvancedNode, mode="even", speed=3.0, extrapolator="noise",
                          coordinate="lambda")
    assert used == "lambda" and torch.isfinite(on_lambda).all()
    assert not torch.equal(out, on_lambda)


# ------------------------------------------------------------------------------- samplers that add noise
# ComfyUI sampler names by what they do to the latent between calls (names a ComfyUI version lacks are skipped).
ADDS_NOISE = ("euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
              "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
              "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
              "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3",
              "sa_solver", "sa_solver_pece", "exp_heun_2_x0_sde")
DETERMINISTIC = ("euler", "euler_cfg_pp", "heun", "heunpp2", "dpm_2", "lms", "dpm_fast", "dpm_adaptive",
                 "dpmpp_2m", "dpmpp_2m_cfg_pp", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
                 "gradient_estimation", "gradient_estimation_cfg_pp", "ddim", "uni_pc", "uni_pc_bh2", "exp_heun_2_x0")


def test_samplers_that_add_noise_are_told_apart(env):
    """scope.sampler_adds_noise on ComfyUI's own sampler objects: every sampler name this ComfyUI offers is
    classified as listed above; eta = 0 or s_noise = 0 (SamplerEulerAncestral & co.) turns the noise off, and
    eta > 0 turns it on for a sampler whose name does not say (SamplerDPMAdaptative)."""
    import comfy.samplers

    scope = sys.modules[env.nodes.__name__ + ".integration.scope"]
    names = comfy.samplers.KSampler.SAMPLERS
    unknown = [n for n in names if n not in ADDS_NOISE + DETERMINISTIC]
    assert not unknown, f"classify these new ComfyUI samplers in the test: {unknown}"
    for name in names:
        assert scope.sampler_adds_noise(comfy.samplers.sampler_object(name)) == (name in ADDS_NOISE), name
    assert not scope.sampler_adds_noise(comfy.samplers.ksampler("euler_ancestral", {"eta": 0.0}))
    assert not scope.sampler_adds_noise(comfy.samplers.ksampler("dpmpp_2m_sde", {"eta": 1.0, "s_noise": 0}))
    assert scope.sampler_adds_noise(comfy.samplers.ksampler("euler_ancestral", {"eta": 0.5}))
    assert scope.sampler_adds_noise(comfy.samplers.ksampler("dpm_adaptive", {"eta": 0.5}))     # eta on, by option
    assert not scope.sampler_adds_noise(comfy.samplers.ksampler("dpm_adaptive", {"eta": 0.0, "order": 3}))
    assert not scope.sampler_adds_noise(None) and not scope.sampler_adds_noise(object())


@pytest.mark.parametrize("family", ["flux_dev", "sd15"])
def test_noise_adding_samplers_extrapolate_the_data_estimate(env, family):
    """The simple node at its defaults under euler_ancestral: the run extrapolates the data estimate, with the
    same computed calls as under euler (which keeps the noise estimate); outputs are finite, and differ from the
    same run on the noise estimate (the core-only setting noise_injected_space='noise')."""
    from abcache_core import CacheSettings

    case = env.case(family)
    model = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher)
    sink = model.model_options["ab_cache"].sink
    runs = {}
    for sampler in ("euler", "euler_ancestral"):
        out, spy = env.harness.run_spied(case, model, steps=12, sampler=sampler)
        runs[sampler] = (out, spy.calls, sink.last["estimate_space"], sink.last["summary"]["computed"])
    assert runs["euler"][2] == "noise" and runs["euler_ancestral"][2] == "data"
    assert runs["euler"][1] == runs["euler_ancestral"][1] < 2 * 12      # cfg: two conds per computed step
    assert runs["euler"][3] == runs["euler_ancestral"][3]
    assert torch.isfinite(runs["euler_ancestral"][0]).all()
    sink2 = env.nodes.TelemetrySink()
    on_noise = env.wrappers.apply_ab_cache(case.patcher, CacheSettings(mode="even", speed=3.0,
                                                                       noise_injected_space="noise"), sink=sink2)
    out, spy = env.harness.run_spied(case, on_noise, steps=12, sampler="euler_ancestral")
    assert sink2.last["estimate_space"] == "noise" and spy.calls == runs["euler_ancestral"][1]
    assert torch.isfinite(out).all() and not torch.equal(out, runs["euler_ancestral"][0])


# ------------------------------------------------------------------------- 5. hand-made sigma schedules
def _custom(env, case, model, sigmas, cfg=3.0):
    import comfy.samplers

    m, spy = env.harness.with_spy(model)
    guider = comfy.samplers.CFGGuider(m)
    guider.set_conds(case.positive(1), case.negative(2))
    guider.set_cfg(cfg)
    noise = torch.randn(case.latent.shape, generator=torch.Generator().manual_seed(0))
    out = guider.sample(noise, case.latent.clone(), comfy.samplers.sampler_object("euler"), sigmas, seed=0,
                        disable_pbar=True)
    return out, spy


def _ten_steps(env, case):
    import comfy.samplers

    ms = case.patcher.get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(ms, "simple", 10).float()


def unsupported_sigmas(s, name):
    """Schedules made from a 10-step schedule ``s`` (s[10] = 0)."""
    if name == "spliced":
        idx = [0, 3, 1, 5, 2, 7, 4, 8, 10]
    elif name == "repeated":
        idx = [0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    else:  # rising: the schedule goes back up near the end
        idx = [0, 1, 2, 3, 4, 5, 6, 7, 5, 8, 10]
    return s[idx].clone()


@pytest.mark.parametrize("name", ["spliced", "repeated", "rising"])
def test_unsupported_schedule_runs_uncached_with_one_warning(env, caplog, name):
    """SamplerCustom with spliced sigmas [s0, s3, s1, s5, s2, s7, s4, s8, 0] (the issue's example), a repeated
    sigma, or a rising tail: steps cannot be told apart by sigma, so nothing is cached (never a wrong plan)."""
    case = env.case("wan21_t2v")
    s = _ten_steps(env, case)
    sigmas = unsupported_sigmas(s, name)
    sink = env.nodes.TelemetrySink()
    ref, spy_ref = _custom(env, case, case.patcher, sigmas)
    with caplog.at_level(logging.WARNING, logger="ab_cache"):
        out, spy = _custom(env, case, _cached(env, case.patcher, sink=sink, order=1, interval=2), sigmas)
    warnings = [r for r in caplog.records if "not strictly decreasing" in r.getMessage()]
    assert len(warnings) == 1 and "not cached" in warnings[0].getMessage()
    assert torch.equal(out, ref) and spy.calls == spy_ref.calls == len(sigmas) - 1
    assert {r["reason"] for r in sink.last["records"]} == {"unsupported schedule"}
    # the same sigmas sorted into a decreasing schedule are cached again
    dec = torch.tensor(sorted(set(float(v) for v in sigmas), reverse=True))
    _, spy_dec = _custom(env, case, _cached(env, case.patcher, order=1, interval=2), dec)
    assert spy_dec.calls < len(dec) - 1


# ---------------------------------------------------------------------------------- 6. failed model call
def test_summary_counts_only_finished_calls(env, caplog):
    import comfy.patcher_extension as pe

    case = env.case("flux_dev")
    sink = env.nodes.TelemetrySink()
    m = _cached(env, case.patcher, sink=sink).clone()
    n = {"k": 0}

    def boom(executor, *a, **kw):   # innermost: the 5th real forward raises
        n["k"] += 1
        if n["k"] == 5:
            raise RuntimeError("model error")
        return executor(*a, **kw)

    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "abcache_test_boom", boom)
    with caplog.at_level(logging.INFO, logger="ab_cache"), pytest.raises(RuntimeError):
        env.harness.sample(m, case.latent, case.positive(1), case.negative(2), steps=12)
    # 12 steps, warm-up 2, interval 3: steps 0 1 2 computed, 3 4 skipped, 5 computed, 6 7 skipped,
    # step 8 is the 5th real forward and raises -> 8 finished calls, 4 computed
    s = sink.last["summary"]
    assert (s["calls"], s["computed"], s["skipped"]) == (8, 4, 4)
    assert [r["finished"] for r in sink.last["records"]] == [True] * 8 + [False]
    assert any("computed 4/8 model calls" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------- split sampling
def test_split_sampling_call_count(env):
    """README's split-sampling numbers: KSamplerAdvanced 0-10 then 10-20 (Wan 2.2's two experts) with the
    AB-Cache node's defaults (speed 3) spends 3 + 3 of 20 calls (two runs, each with its own first and last step
    computed); one 20-step run spends 7. The fixed schedule with warm-up 1 (speed 0) on the second: 4 calls."""
    import nodes as comfy_nodes

    case = env.case("wan21_t2v")
    node = env.harness.apply_node(env.nodes.ABCacheNode, case.patcher)   # the node's defaults
    _, spy_one = env.harness.run_spied(case, node, steps=20)
    m, spy = env.harness.with_spy(node)
    ks = comfy_nodes.KSamplerAdvanced()
    lat = {"samples": case.latent.clone()}
    mid = ks.sample(m, "enable", 0, 20, 2.0, "euler", "simple", case.positive(1), case.negative(2), lat, 0, 10,
                    "enable")[0]
    out = ks.sample(m, "disable", 0, 20, 2.0, "euler", "simple", case.positive(1), case.negative(2), mid, 10, 20,
                    "disable")[0]["samples"]
    assert torch.isfinite(out).all()
    assert spy_one.calls == 7 and spy.calls == 6
    # the second sampler with warm-up 1: 6 + 4 calls
    low, spy_low = env.harness.with_spy(env.nodes.ABCacheNode.execute(case.patcher, 2, 4, 1)[0])
    ks.sample(low, "disable", 0, 20, 2.0, "euler", "simple", case.positive(1), case.negative(2), mid, 10, 20, "disable")
    assert spy_low.calls == 4


@pytest.mark.parametrize("family", ["wan21_t2v", "sd15"])
def test_split_sampling_heun_plans_each_stage_per_call(env, family):
    """heun split over two KSamplerAdvanced (0-10, 10-20) at speed 2: each stage is its own run, planned call by call
    on its own schedule (its first and last step's calls, the corrector at its spread noise levels), so the real
    forward runs exactly the calls those two plans ask for; the result is finite and the latent untouched."""
    import comfy.model_sampling
    import nodes as comfy_nodes

    from abcache_core import CacheSettings

    case = env.case(family)
    flow = isinstance(case.patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST)
    ks = comfy_nodes.KSamplerAdvanced()

    def split(model):
        m, spy = env.harness.with_spy(model)
        lat = {"samples": case.latent.clone()}
        mid = ks.sample(m, "enable", 0, 20, 2.0, "heun", "simple", case.positive(1), case.negative(2), lat, 0, 10,
                        "enable")[0]
        out = ks.sample(m, "disable", 0, 20, 2.0, "heun", "simple", case.positive(1), case.negative(2), mid, 10, 20,
                        "disable")[0]["samples"]
        assert torch.equal(lat["samples"], case.latent)
        return out, spy

    _, spy_ref = split(case.patcher)
    out, spy = split(env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=2.0))
    want = env.harness.expected_calls(spy_ref, CacheSettings(mode="even", speed=2.0), flow, "heun", case.patcher)
    assert len(set(map(tuple, spy_ref.schedules))) == 2 and spy_ref.calls == 19 + 20
    assert spy.calls == want < spy_ref.calls and torch.isfinite(out).all(), (spy.calls, want)


def test_blocks_summary_counts_only_finished_calls(env, caplog):
    import comfy.patcher_extension as pe

    case = env.case("flux_dev", depth=2, depth_single_blocks=2)
    m = env.blocks.apply_block_cache(case.patcher, _settings(order=1), compute_blocks=1).clone()
    n = {"k": 0}

    def boom(executor, *a, **kw):
        n["k"] += 1
        if n["k"] == 4:
            raise RuntimeError("model error")
        return executor(*a, **kw)

    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "abcache_test_boom", boom)
    with pytest.raises(RuntimeError), caplog.at_level(logging.INFO, logger="ab_cache"):
        env.harness.sample(m, case.latent, case.positive(1), case.negative(2), steps=12)
    # every step reaches the model (block reuse happens inside it): steps 0-2 computed and finished, the
    # 4th call (step 3, a skipped step running the first block) raised and is not counted
    lines = [r.getMessage() for r in caplog.records if "FLUX blocks: computed" in r.getMessage()]
    assert len(lines) == 1 and "computed 3/3 model calls in full" in lines[0], lines
