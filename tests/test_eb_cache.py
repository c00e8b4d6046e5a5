"""EB-Cache features: exposure-bias compensation, cache tables, FLUX block-level caching.

Core maths without ComfyUI first; then the nodes on ComfyUI's own tiny models and real samplers:
* δ = 1 with an all-compute table is bit-identical to the unpatched model; δ != 1 changes exactly what it
  should (the core rescale on every call, or only from the first extrapolated call on);
* EB-Cache's published 50-step table and tables derived for other step counts;
* the FLUX block node: bit-identical when nothing is reused (flux_dev, chroma; cfg 1 and > 1); with reuse
  the blocks after compute_blocks really do not run on skipped steps (forward hooks count them).
"""
from __future__ import annotations

import gc
import logging
import math

import pytest
import torch

from abcache_core import (
    EB_CACHE_TABLE_50,
    CacheRun,
    CacheSettings,
    denoised_from_epsilon,
    derive_table,
    epsilon_from_denoised,
    parse_table,
    parse_table_codes,
    plan,
    rescale_denoised,
)


# =============================================================================================== core
def _xd(shape=(3, 4, 5, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("flow", [False, True])
def test_exposure_delta_one_is_the_identity(flow):
    x, d = _xd(dtype=torch.float32)
    assert rescale_denoised(x, d, 0.5, 1.0, flow) is d
    # the eps <-> denoised maps round-trip
    for s in (0.03, 0.5, 0.9) if flow else (0.03, 1.0, 14.6):
        back = denoised_from_epsilon(x, epsilon_from_denoised(x, d, s, flow), s, flow)
        assert torch.allclose(back, d, atol=1e-5)


def _rescaled(delta, sigmas, flow, rtol):
    """(x, D, D', eps, eps') for one rescale, after checking its defining property: eps' = eps / delta at fixed x."""
    x, d = _xd()
    sigma = torch.tensor(sigmas, dtype=torch.float64)
    out = rescale_denoised(x, d, sigma, delta, flow=flow)
    eps, eps2 = epsilon_from_denoised(x, d, sigma, flow), epsilon_from_denoised(x, out, sigma, flow)
    assert torch.allclose(eps2, eps / delta, rtol=rtol, atol=rtol)
    return x, d, out, eps, eps2, sigma.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("delta", [0.965, 1.04])
def test_exposure_scales_epsilon_vp(delta):
    """VP / eps models (VE units x = x0 + sigma eps): eps' = eps / delta at fixed x, for any sigma."""
    x, d, out, eps, _, s = _rescaled(delta, [0.02, 1.0, 14.6], flow=False, rtol=1e-10)
    assert torch.allclose(out, x - (x - d) / delta, rtol=1e-12)      # closed form: D' = x - (x - D) / delta
    # EB-Cache's own form in VP units: x0 = (x_t - sqrt(1 - abar) eps / delta) / sqrt(abar)
    abar = 1.0 / (1.0 + s ** 2)
    x0_eb = (x * abar.sqrt() - (1 - abar).sqrt() * eps / delta) / abar.sqrt()
    assert torch.allclose(out, x0_eb, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("delta", [0.965, 1.04])
def test_exposure_scales_epsilon_flow(delta):
    """Flow models (x = (1 - sigma) x0 + sigma eps): eps' = eps / delta at fixed x; guarded near sigma = 1 and 0."""
    x, d, out, _, eps2, s = _rescaled(delta, [0.05, 0.5, 0.97], flow=True, rtol=1e-9)
    assert torch.allclose((1 - s) * out + s * eps2, x, atol=1e-10)   # x = (1 - s) x0' + s eps' afterwards
    # guard: 1 - sigma < 1e-3 and sigma <= 0 are left alone; other batch entries still rescaled
    guarded = rescale_denoised(x, d, torch.tensor([0.9995, 0.0, 0.5]), delta, flow=True)
    assert torch.equal(guarded[:2], d[:2]) and not torch.equal(guarded[2], d[2])


def test_exposure_keeps_dtype_and_refuses_bad_delta():
    x, d = _xd(dtype=torch.bfloat16)
    out = rescale_denoised(x, d, 0.4, 0.965, flow=True)
    assert out.dtype == torch.bfloat16 and out.shape == d.shape and torch.isfinite(out).all()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="delta"):
            rescale_denoised(x, d, 0.4, bad, flow=True)
    with pytest.raises(ValueError, match="exposure_delta"):
        CacheSettings(exposure_delta=0.0).validate()
    with pytest.raises(ValueError, match="exposure_apply"):
        CacheSettings(exposure_apply="sometimes").validate()


def test_published_table():
    t = EB_CACHE_TABLE_50
    assert len(t) == 50 and sum(parse_table(t)) == 34
    assert t == "F" * 22 + "sF" * 9 + "sssF" + "ssF" + "ssF"
    assert parse_table("eb50") == parse_table(t) == parse_table(" EB50 ")
    assert CacheSettings(mode="table", table="eb50").validate()
    assert plan(CacheSettings(mode="table", table="eb50", warmup=0, final_steps=0), 50) == list(parse_table(t))


def test_table_codes():
    assert parse_table_codes("F1f s0S. aA") == ("F", "F", "F", "s", "s", "s", "s", "a", "a")
    assert parse_table_codes("F,F 2 F") == ("F", "F", "s", "F")
    assert parse_table("FaS2") == (True, True, False, False)          # 'a' is computed at the output level
    with pytest.raises(ValueError, match="EB-Cache's numeric"):
        parse_table("0002020")                                         # EB-Cache's 0 = full: ambiguous
    with pytest.raises(ValueError, match=r"invalid characters \['q', 'x'\]"):
        parse_table("FFxq")


@pytest.mark.parametrize("steps,computed", [(28, 19), (30, 20), (20, 14), (100, 68)])
def test_derived_tables(steps, computed):
    d = derive_table("eb50", steps)
    assert len(d) == steps and d[0] == "F" and d[-1] == "F"
    assert sum(c != "s" for c in d) == computed == round(steps * 34 / 50)
    # the dense head stays dense (EB-Cache computes its first 44 % of steps)
    assert set(d[: int(0.4 * steps)]) == {"F"}
    # the tail keeps skipping: no long run of computes after the head
    assert "sF" in d[int(0.5 * steps):]
    assert derive_table("eb50", 50) == EB_CACHE_TABLE_50
    assert plan(CacheSettings(mode="table", table="eb50", warmup=0, final_steps=0), steps) == [c != "s" for c in d]


def test_derived_table_edge_cases():
    assert derive_table("FsssssF", 3) == "FsF"
    assert derive_table("FsF", 2) == "FF"
    assert derive_table("sss", 5) == "FsssF"                  # first and last always computed
    assert derive_table("FFFFFFFa", 5)[-1] == "a"              # the attention-only code survives


def test_cache_run_lazy_decisions_and_marks():
    sched = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    run = CacheRun(CacheSettings(mode="fixed", interval=2, warmup=1, final_steps=0, order=2), sched)
    seen = []
    for s in sched[:-1]:
        m = run.mark()
        dec = run.decide(s, ["k"], predict=False)
        if not dec.skip:
            run.record(s, {"k": torch.full((2,), s)})
        else:
            assert dec.predictions == {}
            p = run.predict(s, "k")
            assert p is not None and torch.allclose(p, torch.full((2,), s))   # linear history: exact
        seen.append(run.extrapolated_since(m))
    assert seen == [False, False, True, False, True]
    assert run.predict(0.5, "missing") is None
    with pytest.raises(ValueError, match="adaptive"):
        CacheRun(CacheSettings(mode="adaptive"), sched).decide(0.8, ["k"], predict=False)


# ========================================================================================== ComfyUI

def _advanced(env, model, order=2, interval=3, warmup=2, **adv):
    return env.harness.apply_node(env.nodes.ABCacheAdvancedNode, model, order=order, interval=interval,
                                  warmup=warmup, **{"mode": "fixed", **adv})


def _sample(env, case, model, steps=10, cfg=2.0, sampler="euler", callback=None):
    return env.harness.sample(model, case.latent, case.positive(1), case.negative(2), steps=steps, cfg=cfg,
                              sampler=sampler, callback=callback)


def _manual_exposure(env, case, delta):
    """The unpatched model with the core rescale applied by hand on every apply_model call."""
    import comfy.patcher_extension as pe

    m = case.patcher.clone()

    def w(executor, x, t, *args, **kwargs):
        return rescale_denoised(x, executor(x, t, *args, **kwargs), t, delta, case.flow)

    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_manual_exposure", w)
    return m


def test_advanced_node_inputs_appended_and_optional(env):
    schema = env.nodes.ABCacheAdvancedNode.define_schema()
    ids = [i.id for i in schema.inputs]
    assert ids[-4:] == ["exposure_delta", "exposure_apply", "speed", "extrapolator"]   # appended in this order
    assert ids[:-4] == ["model", "order", "interval", "warmup", "mode", "coordinate", "tolerance", "max_skips",
                        "start_percent", "end_percent", "final_steps", "table", "cache_device", "verbose"]
    assert all(i.optional for i in schema.inputs[-4:])
    simple = [i.id for i in env.nodes.ABCacheNode.define_schema().inputs]
    assert simple == ["model", "order", "interval", "warmup", "speed"]
    assert env.nodes.ABCacheNode.define_schema().inputs[-1].optional
    v = env.nodes.ABCacheAdvancedNode.validate_inputs
    assert v(mode="table", table="eb50") is True
    assert "table is empty" in v(mode="table", table="")
    # exposure_apply is a combo that ComfyUI checks itself (validate_inputs does not take it); a direct call
    # with a bad value fails at the node with the same rule's message
    with pytest.raises(ValueError, match="exposure_apply must be one of"):
        env.harness.apply_node(env.nodes.ABCacheAdvancedNode, env.case("flux_dev").patcher, exposure_apply="never")


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("family", ["flux_dev", "sd15", "sd3", "wan21_t2v"])
def test_delta_one_all_compute_table_is_bit_identical(env, family, sampler):
    case = env.case(family)
    ref = _sample(env, case, case.patcher, sampler=sampler)
    for kw in (dict(exposure_delta=1.0, exposure_apply="all"), dict(exposure_delta=0.97)):
        m = _advanced(env, case.patcher, mode="table", table="F" * 10, warmup=0, final_steps=0, **kw)
        assert torch.equal(_sample(env, case, m, sampler=sampler), ref), kw


@pytest.mark.parametrize("family", ["flux_dev", "sd15", "sd3"])
def test_delta_on_all_steps_is_exactly_the_core_rescale(env, family):
    """apply=all with nothing skipped = the core formula applied by hand to every call (flow space for flux
    and sd3 -- sd3 at the apply_model fallback level --, eps space for sd15)."""
    case = env.case(family)
    m = _advanced(env, case.patcher, mode="table", table="F" * 8, exposure_delta=0.965, exposure_apply="all")
    out = _sample(env, case, m, steps=8)
    ref = _sample(env, case, _manual_exposure(env, case, 0.965), steps=8)
    plain = _sample(env, case, case.patcher, steps=8)
    assert torch.equal(out, ref)
    assert not torch.equal(out, plain) and torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["flux_dev", "sd15"])
def test_delta_on_extrapolated_steps_only(env, family):
    """apply=extrapolated: the trajectory is untouched until the first extrapolated step, then it changes."""
    case = env.case(family)

    def run(delta, apply="extrapolated"):
        seen = []
        m = _advanced(env, case.patcher, order=2, interval=3, warmup=3, exposure_delta=delta, exposure_apply=apply)
        out = _sample(env, case, m, steps=10, callback=lambda i, x0, x, n: seen.append(x0.clone()))
        return out, seen

    base, d_base = run(1.0)
    ext, d_ext = run(0.965)
    every, d_all = run(0.965, "all")
    # steps 0..3 computed: identical denoised; step 4 is the first extrapolated one
    for i in range(4):
        assert torch.equal(d_ext[i], d_base[i]), i
    assert not torch.equal(d_ext[4], d_base[4])
    # 'all' starts at the first call (flow: the first call is at sigma = 1, where the rescale is guarded off)
    first = 1 if case.flow else 0
    assert torch.equal(d_all[0], d_base[0]) == case.flow
    assert not torch.equal(d_all[first], d_base[first])
    assert not torch.equal(ext, base) and torch.isfinite(ext).all() and torch.isfinite(every).all()


# -------------------------------------------------------------------------------------------- blocks
FLUXES = ["flux_dev", "chroma"]
DEPTH = dict(depth=2, depth_single_blocks=2)


def _count_blocks(case):
    """Forward hooks on every double/single block of the case's model: {(kind, i): calls}."""
    counts = {}
    dm = case.patcher.model.diffusion_model
    handles = []
    for kind in ("double_blocks", "single_blocks"):
        for i, b in enumerate(getattr(dm, kind)):
            def hook(mod, a, o, key=(kind, i)):
                counts[key] = counts.get(key, 0) + 1
            handles.append(b.register_forward_hook(hook))
    return counts, handles


def _blocks(env, model, **kw):
    return env.harness.apply_node(env.nodes.ABCacheFluxBlocksNode, model, **kw)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("family", FLUXES)
def test_blocks_nothing_reused_is_bit_identical(env, family, cfg):
    case = env.case(family, **DEPTH)
    ref = _sample(env, case, case.patcher, cfg=cfg)
    for kw in (dict(mode="fixed", interval=1), dict(mode="table", table="F" * 10),
               dict(mode="table", table="F" * 10, exposure_delta=0.97, exposure_apply="extrapolated")):
        out = _sample(env, case, _blocks(env, case.patcher, compute_blocks=1, **kw), cfg=cfg)
        assert torch.equal(out, ref), kw


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("family", FLUXES)
def test_blocks_reuse_skips_the_later_blocks(env, family, cfg):
    case = env.case(family, **DEPTH)
    counts, handles = _count_blocks(case)
    try:
        ref = _sample(env, case, case.patcher, cfg=cfg, steps=12)
        calls = counts[("double_blocks", 0)]
        assert all(v == calls for v in counts.values())
        for order in (1, 2):
            counts.clear()
            m = _blocks(env, case.patcher, compute_blocks=1, order=order, mode="fixed", interval=3, warmup=2)
            out = _sample(env, case, m, cfg=cfg, steps=12)
            computed = sum(plan(CacheSettings(mode="fixed", interval=3, warmup=2), 12))        # 0 1 2 5 8 11 -> 6
            assert computed == 6
            assert counts[("double_blocks", 0)] == calls == 12                     # the first block: every call
            for key in (("double_blocks", 1), ("single_blocks", 0), ("single_blocks", 1)):
                assert counts[key] == computed, (key, counts)
            assert out.shape == ref.shape and torch.isfinite(out).all()
            rel = float((out - ref).norm() / ref.norm())
            assert 0 < rel < 0.05, rel
    finally:
        for h in handles:
            h.remove()


def test_blocks_compute_blocks_positions_and_table(env):
    """compute_blocks counts double blocks, then single blocks; eb50 derived for 28 steps: 19 computed."""
    case = env.case("flux_dev", **DEPTH)
    counts, handles = _count_blocks(case)
    try:
        m = _blocks(env, case.patcher, compute_blocks=3, order=2, mode="table", table="eb50")
        out = _sample(env, case, m, steps=28)
        computed = sum(c != "s" for c in derive_table("eb50", 28))
        assert computed == 19
        assert counts == {("double_blocks", 0): 28, ("double_blocks", 1): 28, ("single_blocks", 0): 28,
                          ("single_blocks", 1): computed}
        assert torch.isfinite(out).all()
        counts.clear()
        _sample(env, case, _blocks(env, case.patcher, compute_blocks=0, mode="fixed", interval=3, warmup=2), steps=12)
        assert set(counts.values()) == {6}                                        # every block reused
    finally:
        for h in handles:
            h.remove()


def test_blocks_exposure_and_telemetry(env, caplog):
    case = env.case("flux_dev", **DEPTH)
    kw = dict(compute_blocks=1, mode="fixed", interval=3, warmup=2)
    a = _blocks(env, case.patcher, **kw)
    b = _blocks(env, case.patcher, exposure_delta=0.965, **kw)
    seen_a, seen_b = [], []
    env.harness.sample(a, case.latent, case.positive(1), case.negative(2), steps=12,
                       callback=lambda i, x0, x, n: seen_a.append(x0.clone()))
    out_b = env.harness.sample(b, case.latent, case.positive(1), case.negative(2), steps=12,
                               callback=lambda i, x0, x, n: seen_b.append(x0.clone()))
    assert all(torch.equal(seen_a[i], seen_b[i]) for i in range(3))   # steps 0-2 computed
    assert not torch.equal(seen_a[3], seen_b[3]) and torch.isfinite(out_b).all()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ab_cache"):
        env.harness.sample(b, case.latent, case.positive(1), case.negative(2), steps=12)
    # 12 calls, 6 computed in full; on each of the 6 skipped calls the 3 blocks after the first are reused
    assert any("computed 6/12 model calls in full" in r.getMessage() and "; 18 of " in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o).__name__ == "BlockRun"], "no run state may outlive its run"


def test_blocks_reapply_and_chain_existing_patches(env):
    """Re-applying replaces the earlier block cache; a dit patch that was there first still runs (chained)."""
    case = env.case("flux_dev", **DEPTH)
    hits = []

    def theirs(args, extra):
        hits.append(1)
        return extra["original_block"](args)

    base = case.patcher.clone()
    base.set_model_patch_replace(theirs, "dit", "single_block", 1)
    ref = _sample(env, case, base, steps=12)
    assert len(hits) == 12
    hits.clear()
    kw = dict(compute_blocks=1, mode="fixed", interval=3, warmup=2)
    twice = _blocks(env, _blocks(env, base, compute_blocks=2, mode="fixed", interval=2), **kw)
    out = _sample(env, case, twice, steps=12)
    assert len(hits) == 6 and torch.isfinite(out).all() and not torch.equal(out, ref)
    patch = twice.model_options["transformer_options"]["patches_replace"]["dit"][("single_block", 1)]
    assert patch.abcache_prev is theirs


def test_blocks_refuses_other_models_and_other_caches(env):
    for family in ("sd3", "wan21_t2v"):
        with pytest.raises(ValueError, match="FLUX-family"):
            _blocks(env, env.case(family).patcher)
    case = env.case("flux_dev")
    with pytest.raises(ValueError, match="AB-Cache"):
        _blocks(env, env.nodes.ABCacheNode.execute(case.patcher, 2, 3, 2)[0])
    with pytest.raises(ValueError, match="FLUX blocks"):
        env.nodes.ABCacheNode.execute(_blocks(env, case.patcher), 2, 3, 2)
    with pytest.raises(ValueError, match="mode"):
        _blocks(env, case.patcher, mode="adaptive")
    assert "invalid characters" in env.nodes.ABCacheFluxBlocksNode.validate_inputs(mode="table", table="FFx")
    assert env.nodes.ABCacheFluxBlocksNode.validate_inputs(mode="table", table="eb50") is True


def test_blocks_node_schema_and_registration(env):
    import asyncio

    schema = env.nodes.ABCacheFluxBlocksNode.define_schema()
    assert schema.node_id == "ABCacheFluxBlocks" and schema.category == "model_patches/ab_cache"
    assert schema.display_name == "AB-Cache FLUX blocks (EB-Cache style)" and schema.description
    for inp in schema.inputs:
        assert inp.tooltip and len(inp.tooltip) > 10, inp.id
    assert all(o.tooltip for o in schema.outputs)
    nodes = asyncio.run(env.nodes.ABCacheExtension().get_node_list())
    assert env.nodes.ABCacheFluxBlocksNode in nodes
    # the Advanced node's new inputs carry tooltips too
    for inp in env.nodes.ABCacheAdvancedNode.define_schema().inputs:
        assert inp.tooltip and len(inp.tooltip) > 10, inp.id


def test_blocks_half_precision_and_heun(env):
    case = env.tm.build("flux_dev", seed=0, dtype=torch.bfloat16, overrides=DEPTH)
    m = _blocks(env, case.patcher, compute_blocks=1, order=2, mode="fixed", interval=2, warmup=2)
    out = env.harness.sample(m, case.latent, case.positive(1), case.negative(2), steps=10, sampler="heun")
    assert torch.isfinite(out).all() and math.isfinite(float(out.float().norm()))
