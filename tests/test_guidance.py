"""Guidance nodes that evaluate the model a second time at the same sigma, with ComfyUI's real nodes.

PerturbedAttentionGuidance (attention patch on the cond), SelfAttentionGuidance (blurred input, uncond),
SkipLayerGuidanceDiT / SkipLayerGuidanceSD3 (skipped DiT blocks, cond), LTXVSpatioTemporalGuidance (newer ComfyUI,
LTX-2: a transformer_options flag, cond) call calc_cond_batch again from a
post-CFG function; SkipLayerGuidanceDiTSimple evaluates cond and uncond in two calc_cond_batch calls with
different patches. Each pass must keep its own history: on a skipped step the guidance term
(output after the guidance node minus output before it, observed by two post-CFG observers around it)
is non-zero and close to the uncached run's, in both node orders; with nothing skipped the result is
bit-identical to the uncached graph, and the real forward calls (spy) follow the plan.
"""
from __future__ import annotations

import pytest
import torch

STEPS, CFG = 8, 5.0
# 8 steps: F F F s F s F F -> steps 3 and 5 skipped. The checks reason about reuse of each pass's last *output*
# (order 1, extrapolator output); the noise-space extrapolator keys its history by pass the same way.
PLAN = dict(order=1, interval=2, warmup=2, mode="fixed", extrapolator="output")


def _settings(**kw):
    from abcache_core import CacheSettings

    return CacheSettings(**{**dict(mode="fixed", order=1, interval=2, warmup=2), **kw})


def _skipped_steps(steps=STEPS):
    from abcache_core import plan

    return [i for i, c in enumerate(plan(_settings(), steps)) if c is False]


def _observer(model, log):
    """Clone with a post-CFG function that records the denoised result at its place in the chain."""
    m = model.clone()

    def observe(args):
        log.append(args["denoised"].clone())
        return args["denoised"]

    m.set_model_sampler_post_cfg_function(observe)
    return m


def _pag(model):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    return PerturbedAttentionGuidance.execute(model, 3.0)[0]


def _sag(model):
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    return SelfAttentionGuidance.execute(model, 0.8, 2.0)[0]


def _slg(model):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

    return SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, double_layers="0", single_layers="0")[0]


def _slg_sd3(model):
    from comfy_extras.nodes_sd3 import SkipLayerGuidanceSD3

    return SkipLayerGuidanceSD3.execute(model, "0", 3.0, 0.0, 1.0)[0]


def _slg_simple(model):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiTSimple

    return SkipLayerGuidanceDiTSimple.execute(model, 0.0, 1.0, double_layers="0", single_layers="0")[0]


def _stg(model):
    """LTXVSpatioTemporalGuidance (newer ComfyUI, LTX-2): its pass sets transformer_options, no patches."""
    from comfy_extras import nodes_lt

    if not hasattr(nodes_lt, "LTXVSpatioTemporalGuidance"):
        pytest.skip("LTXVSpatioTemporalGuidance is not in this ComfyUI")
    return nodes_lt.LTXVSpatioTemporalGuidance.execute(model, 3.0, "0", 0.0, 1.0)[0]


GUIDANCE = {"pag": _pag, "sag": _sag, "slg": _slg, "slg_sd3": _slg_sd3, "stg": _stg}
CASES = [("pag", "sd15"), ("pag", "sdxl"), ("sag", "sd15"), ("sag", "sdxl"),
         ("slg", "flux_dev"), ("slg", "wan21_t2v"), ("slg_sd3", "sd3"), ("stg", "ltx2")]


def _graph(env, base, guidance, node_order, cached: bool, **plan):
    """before-observer -> guidance/AB-Cache in ``node_order`` -> after-observer; returns (model, before, after)."""
    before, after = [], []
    m = _observer(base, before)
    cache = (lambda x: env.harness.abcache(env.nodes, x, **{**PLAN, **plan})) if cached else (lambda x: x)
    m = cache(guidance(m)) if node_order == "guidance_first" else guidance(cache(m))
    return _observer(m, after), before, after


def _terms(before, after):
    assert len(before) == len(after) == STEPS, (len(before), len(after))
    return [a - b for a, b in zip(after, before)]


def _same(a, b):
    from devtools.tiny_models import streams

    return all(torch.equal(x, y) for x, y in zip(streams(a), streams(b)))


def _norm(t):
    return float(torch.linalg.vector_norm(t.float()))


@pytest.mark.parametrize("order", ["guidance_first", "cache_first"])
@pytest.mark.parametrize("guidance,family", CASES)
def test_guidance_term_survives_skipped_steps(env, guidance, family, order):
    case = env.case(family)
    fn = GUIDANCE[guidance]

    ref_model, b0, a0 = _graph(env, case.patcher, fn, order, cached=False)
    ref, spy_ref = env.harness.run_spied(case, ref_model, steps=STEPS, cfg=CFG)
    ref_terms = _terms(b0, a0)
    assert all(_norm(t) > 0 for t in ref_terms), "the guidance must act on every step of the reference"
    assert spy_ref.calls == 2 * STEPS, "one CFG call and one guidance call per step"

    # nothing skipped: bit-identical to the uncached graph, same real calls
    off_model, _, _ = _graph(env, case.patcher, fn, order, cached=True, interval=1)
    off, spy_off = env.harness.run_spied(case, off_model, steps=STEPS, cfg=CFG)
    assert _same(off, ref) and spy_off.calls == spy_ref.calls

    on_model, b1, a1 = _graph(env, case.patcher, fn, order, cached=True)
    on, spy_on = env.harness.run_spied(case, on_model, steps=STEPS, cfg=CFG)
    terms = _terms(b1, a1)
    assert all(torch.isfinite(t).all() for t in env.tm.streams(on))
    assert spy_on.calls == env.harness.expected_calls(spy_ref, _settings()) < spy_ref.calls
    for k in _skipped_steps():
        # Random weights: the reference's own term changes by 7-150% from one step to the next ("drift", the
        # error of reusing the previous step's term). Order 1 reuses each pass's last output, so its term
        # must be about as close as that; a term built from one history for both passes is exactly 0.
        r, t = ref_terms[k], terms[k]
        drift = _norm(r - ref_terms[k - 1]) / _norm(r)
        assert _norm(t) > 0.5 * _norm(r), f"step {k}: guidance term lost ({_norm(t):.3e} vs {_norm(r):.3e})"
        err = _norm(t - r) / _norm(r)
        assert err < 1.5 * drift + 0.05, f"step {k}: {err:.2f} off, drift {drift:.2f}"


@pytest.mark.parametrize("order", ["guidance_first", "cache_first"])
def test_pag_cond_is_not_the_perturbed_output(env, order):
    """The issue's reproduction: PAG(3) with AB-Cache (order 1, interval 2, warm-up 2), 8 steps, cfg 5. A
    wrapper outside AB-Cache sees every model output, computed or extrapolated: on a skipped step (order 1 =
    reuse) the cond is the previous step's cond, the PAG pass the previous step's PAG pass, and the two differ."""
    import comfy.patcher_extension as pe

    case = env.case("sd15")
    seen = []   # per model call: cond chunk of the output

    def outside(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        to = kwargs.get("transformer_options") or next(a for a in reversed(args) if isinstance(a, dict))
        seen.append(_split(out, list(to["cond_or_uncond"]))[0].clone())
        return out

    base = case.patcher.clone()
    base.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "abcache_test_outside", outside)
    m = env.harness.abcache(env.nodes, _pag(base), **PLAN) if order == "guidance_first" \
        else _pag(env.harness.abcache(env.nodes, base, **PLAN))
    env.harness.sample(m, case.latent, case.positive(1), case.negative(2), steps=STEPS, cfg=CFG)
    assert len(seen) == 2 * STEPS
    cond, pag = seen[0::2], seen[1::2]
    for k in _skipped_steps():
        assert torch.equal(cond[k], cond[k - 1]) and torch.equal(pag[k], pag[k - 1])
        assert not torch.equal(cond[k], pag[k - 1]), "cond extrapolated from the PAG pass"
        assert _norm(cond[k] - pag[k]) > 0.3 * _norm(cond[k - 2] - pag[k - 2])


def _split(out, cond_or_uncond):
    """Output chunks ordered cond (0) first, uncond (1) second."""
    n = len(cond_or_uncond)
    chunks = out.chunk(n)
    return [chunks[cond_or_uncond.index(i)] for i in sorted(set(cond_or_uncond))]


@pytest.mark.parametrize("order", ["guidance_first", "cache_first"])
def test_slg_simple_two_batches(env, order):
    """SkipLayerGuidanceDiTSimple: cond and uncond in two calc_cond_batch calls, the uncond with skipped
    blocks (its own history by patch fingerprint). Nothing skipped: bit-identical; skipping: the plan."""
    case = env.case("flux_dev")

    def graph(**plan):
        if plan.get("cached") is False:
            return _slg_simple(case.patcher)
        p = {**PLAN, **plan}
        return env.harness.abcache(env.nodes, _slg_simple(case.patcher), **p) if order == "guidance_first" \
            else _slg_simple(env.harness.abcache(env.nodes, case.patcher, **p))

    ref, spy_ref = env.harness.run_spied(case, graph(cached=False), steps=STEPS, cfg=CFG)
    assert spy_ref.calls == 2 * STEPS
    off, spy_off = env.harness.run_spied(case, graph(interval=1), steps=STEPS, cfg=CFG)
    assert torch.equal(off, ref) and spy_off.calls == spy_ref.calls
    on, spy_on = env.harness.run_spied(case, graph(), steps=STEPS, cfg=CFG)
    assert torch.isfinite(on).all()
    assert spy_on.calls == env.harness.expected_calls(spy_ref, _settings())
    err = _norm(on - ref) / _norm(ref)
    assert 0 < err < 0.2, err


def test_heun_revisit_keeps_newest(env):
    """Heun evaluates a sigma twice in two sampler evaluations: both are pass 0 (one history, newest kept),
    so the plan and call count are those of the plain model (a pass 1 would double the history)."""
    case = env.case("sd15")
    m = _pag(env.harness.abcache(env.nodes, case.patcher, order=2, interval=3, warmup=2))
    ref, spy_ref = env.harness.run_spied(case, _pag(case.patcher), steps=STEPS, cfg=CFG, sampler="heun")
    on, spy_on = env.harness.run_spied(case, m, steps=STEPS, cfg=CFG, sampler="heun")
    assert spy_on.calls == env.harness.expected_calls(spy_ref, _settings(order=2, interval=3)) < spy_ref.calls
    assert torch.isfinite(on).all()


def test_trained_flux_slg_term(comfy, env):
    """The trained tiny FLUX (digits) with SkipLayerGuidanceDiT: on skipped steps the guidance term stays
    close to the uncached run's (order 2)."""
    from devtools import trained_flux

    patcher, digits = trained_flux.load()

    def slg(model):
        from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

        return SkipLayerGuidanceDiT.execute(model, 2.0, 0.0, 1.0, double_layers="1", single_layers="1")[0]

    latent = digits.empty_latent()
    results = {}
    for name, cached in (("ref", False), ("on", True)):
        model, before, after = _graph(env, patcher, slg, "guidance_first", cached=cached, order=2)
        m, spy = env.harness.with_spy(model)
        env.harness.sample(m, latent, digits.conditioning(3), digits.null_conditioning(), steps=STEPS, cfg=3.0)
        results[name] = (_terms(before, after), spy.calls)
    (ref_t, ref_calls), (on_t, on_calls) = results["ref"], results["on"]
    assert on_calls < ref_calls
    for k in _skipped_steps():
        assert _norm(on_t[k]) > 0.5 * _norm(ref_t[k])
        assert _norm(on_t[k] - ref_t[k]) < 0.3 * _norm(ref_t[k]), (k, _norm(on_t[k] - ref_t[k]) / _norm(ref_t[k]))


@pytest.mark.parametrize("order", ["guidance_first", "cache_first"])
def test_flux_blocks_node_with_slg(env, order):
    """AB-Cache FLUX blocks keys its block residuals by pass too: SkipLayerGuidanceDiT's pass (block 1
    skipped) never feeds the normal pass's residuals; nothing reused -> bit-identical."""
    case = env.case("flux_dev", depth=2, depth_single_blocks=2)

    def slg(model):
        from comfy_extras.nodes_slg import SkipLayerGuidanceDiT

        return SkipLayerGuidanceDiT.execute(model, 3.0, 0.0, 1.0, double_layers="1", single_layers="")[0]

    def graph(cached, **kw):
        before, after = [], []
        m = _observer(case.patcher, before)
        blocks = (lambda x: env.harness.apply_node(
            env.nodes.ABCacheFluxBlocksNode, x, compute_blocks=1, order=1, mode="fixed",
            interval=kw.get("interval", 2), warmup=2)) if cached else (lambda x: x)
        m = blocks(slg(m)) if order == "guidance_first" else slg(blocks(m))
        return _observer(m, after), before, after

    m, b0, a0 = graph(False)
    ref, _ = env.harness.run_spied(case, m, steps=STEPS, cfg=CFG)
    m, _, _ = graph(True, interval=1)
    off, _ = env.harness.run_spied(case, m, steps=STEPS, cfg=CFG)
    assert torch.equal(off, ref)
    m, b1, a1 = graph(True)
    on, _ = env.harness.run_spied(case, m, steps=STEPS, cfg=CFG)
    assert torch.isfinite(on).all() and not torch.equal(on, ref)
    ref_terms, terms = _terms(b0, a0), _terms(b1, a1)
    for k in _skipped_steps():
        r, t = ref_terms[k], terms[k]
        drift = _norm(r - ref_terms[k - 1]) / _norm(r)
        assert _norm(t) > 0.5 * _norm(r)
        assert _norm(t - r) / _norm(r) < 1.5 * drift + 0.05, (k, _norm(t - r) / _norm(r), drift)


def test_heun_per_call_with_pag(env):
    """Even mode decides heun per call; PAG adds a model call of its own (another pass) to every sampler
    evaluation. Each pass counts its own calls of a step, so both run on exactly the calls the plan computes:
    twice calls_for_speed of heun's calls, finite output."""
    from abcache_core.policy import calls_for_speed

    case = env.case("sd15")
    ref, spy_ref = env.harness.run_spied(case, _pag(case.patcher), steps=STEPS, cfg=CFG, sampler="heun")
    assert spy_ref.calls == 2 * (2 * STEPS - 1)
    m = _pag(env.harness.apply_node(env.nodes.ABCacheNode, case.patcher, speed=3.0))
    on, spy_on = env.harness.run_spied(case, m, steps=STEPS, cfg=CFG, sampler="heun")
    assert spy_on.calls == 2 * calls_for_speed(2 * STEPS - 1, 3.0)
    assert torch.isfinite(on).all() and spy_on.inputs_intact
    assert 0 < _norm(on - ref) / _norm(ref) < 0.5
