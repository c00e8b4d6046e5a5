"""ComfyUI's multi-GPU work units (comfy/multigpu.py, newer ComfyUI; 0.3.75 has none): the real
_calc_cond_batch_multigpu path, driven on the CPU with two "devices" (cpu and cpu:1). On a CPU machine
ComfyUI reports one device, so the MultiGPU node would make no clones; the test makes them with the same
public ModelPatcher calls the node uses (deepclone_multigpu, match_multigpu_clones, GPUOptionsGroup).
"""
from __future__ import annotations

import threading

import pytest
import torch

STEPS = 8


def _multigpu():
    try:
        import comfy.multigpu
    except ImportError:
        pytest.skip("this ComfyUI has no comfy/multigpu.py (multi-GPU work units came after 0.3.75)")
    return comfy.multigpu


def _two_devices(env, name, patcher):
    """``patcher`` with a second device clone on cpu:1, as ComfyUI's MultiGPU Work Units node builds it."""
    multigpu = _multigpu()
    patcher.cached_patcher_init = (lambda: env.tm.build(name, seed=0).patcher, ())
    m = patcher.clone()
    dp = m.deepclone_multigpu(new_load_device=torch.device("cpu", 1))
    dp.is_multigpu_base_clone = True
    m.set_additional_models("multigpu", [dp])
    m.match_multigpu_clones()
    multigpu.GPUOptionsGroup().register(m)
    return m


def _run(env, case, model):
    import comfy.patcher_extension as pe

    threads = set()

    def where(executor, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return executor(*args, **kwargs)

    m, spy = env.harness.with_spy(model)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "abcache_test_where", where)
    out = env.harness.sample(m, case.latent, case.positive(1), case.negative(2), steps=STEPS)
    return out, spy, threads


@pytest.mark.parametrize("order", ["cache_then_workunits", "workunits_then_cache"])
@pytest.mark.parametrize("extra", [{}, {"mode": "adaptive", "tolerance": 0.05}, {"exposure_delta": 1.02}], ids=["fixed", "adaptive", "exposure"])
def test_two_devices_follow_the_plan_and_match_one_device(env, order, extra):
    """Cond and uncond run on two threads (cpu, cpu:1) with one run state: the same noise levels computed as on
    one device (as planned in fixed mode; adaptive and exposure compensation too), results equal to one device
    within fp tolerance; nothing skipped -> equal to the uncached two-device run."""
    from abcache_core import CacheSettings

    _multigpu()
    name = "flux_dev"
    case = env.tm.build(name, seed=0)
    settings = CacheSettings(**{"mode": "fixed", **env.harness.TEST_SCHEDULE, **extra})

    def cached(model, **kw):
        return env.harness.abcache(env.nodes, model, **{**extra, **kw})

    def graph(**kw):
        if order == "cache_then_workunits":
            return _two_devices(env, name, cached(case.patcher, **kw))
        return cached(_two_devices(env, name, case.patcher), **kw)

    one_ref, spy_one_ref, _ = _run(env, case, case.patcher)
    one_ab, spy_one_ab, _ = _run(env, case, cached(case.patcher))
    two_ref, spy_two_ref, threads_ref = _run(env, case, _two_devices(env, name, case.patcher))
    two_ab, spy_two_ab, threads_ab = _run(env, case, graph())
    two_off, spy_two_off, _ = _run(env, case, graph(interval=1, tolerance=0.0))   # skips nothing

    assert len(threads_ref) == 2 and len(threads_ab) == 2, "the model must really run on two worker threads"
    assert spy_two_ref.calls == 2 * spy_one_ref.calls          # cond and uncond on different devices
    assert spy_one_ab.calls < spy_one_ref.calls
    assert spy_two_ab.calls == 2 * spy_one_ab.calls          # the same noise levels computed on both devices
    if settings.mode == "fixed":
        assert spy_one_ab.calls == env.harness.expected_calls(spy_one_ref, settings)
        assert spy_two_ab.calls == env.harness.expected_calls(spy_two_ref, settings)
    torch.testing.assert_close(two_ref, one_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(two_ab, one_ab, rtol=0, atol=1e-5)
    assert torch.equal(two_off, two_ref) and spy_two_off.calls == spy_two_ref.calls


def test_blocks_node_on_two_devices(env):
    """The FLUX blocks node with cond and uncond on two device threads at the same time: each model call's
    state is keyed by the thread it runs on, so the two calls never see each other's decision or residuals. The
    blocks after compute_blocks run on computed steps only, on both devices; results equal one device within fp
    tolerance; nothing reused -> equal to the uncached two-device run."""
    from abcache_core import CacheSettings, plan

    _multigpu()
    name = "flux_dev"
    case = env.tm.build(name, seed=0)
    kw = dict(compute_blocks=1, order=2, mode="fixed", **{k: v for k, v in env.harness.TEST_SCHEDULE.items()
                                                            if k not in ("order", "speed")})
    computed = sum(plan(CacheSettings(**{"mode": "fixed", **env.harness.TEST_SCHEDULE}), STEPS))
    assert computed < STEPS

    def blocks(model, **over):
        return env.harness.apply_node(env.nodes.ABCacheFluxBlocksNode, model, **{**kw, **over})

    last = {}

    def hooked(model):
        dms = [model.model.diffusion_model] + [m.model.diffusion_model
                                               for m in model.get_additional_models_with_key("multigpu")]
        handles = []
        for dm in dms:
            b = dm.single_blocks[-1]                            # a block after compute_blocks
            handles.append(b.register_forward_hook(
                lambda *a, k=id(dm): last.__setitem__(k, last.get(k, 0) + 1)))
        return handles

    one_ref, _, _ = _run(env, case, case.patcher)
    one_ab, _, _ = _run(env, case, blocks(case.patcher))
    two_ref, _, _ = _run(env, case, _two_devices(env, name, case.patcher))
    for order in ("blocks_then_workunits", "workunits_then_blocks"):
        m = (_two_devices(env, name, blocks(case.patcher)) if order == "blocks_then_workunits"
             else blocks(_two_devices(env, name, case.patcher)))
        last.clear()
        handles = hooked(m)
        try:
            two_ab, spy, threads = _run(env, case, m)
        finally:
            for h in handles:
                h.remove()
        assert len(threads) == 2, "the model must really run on two worker threads"
        assert spy.calls == 2 * STEPS                           # every model call runs (block-level cache)
        assert sorted(last.values()) == [computed, computed], (order, last)   # later blocks: computed steps only
        torch.testing.assert_close(two_ab, one_ab, rtol=0, atol=1e-5)
        off, _, _ = _run(env, case, blocks(_two_devices(env, name, case.patcher), interval=1) if order ==
                         "workunits_then_blocks" else _two_devices(env, name, blocks(case.patcher, interval=1)))
        assert torch.equal(off, two_ref), order
    torch.testing.assert_close(two_ref, one_ref, rtol=0, atol=1e-5)
    assert float((one_ab - one_ref).abs().max()) > 0, "the blocks node must have reused blocks"
