"""ComfyUI's context windows for long videos (comfy/context_windows.py, the Context Windows (Manual) node): the
model is called once per window per step, each window with its own frames. Each window keeps its own history
(the window's frame indices are part of the history key, and each window's calc_cond_batch is a pass of its own),
so a skipped step extrapolates every window from that window's own computed outputs."""
from __future__ import annotations

import pytest
import torch


def _windows(model, length, overlap, schedule):
    """ComfyUI's Context Windows (Manual) node on the frame dimension (newer ComfyUI adds a freenoise input)."""
    import inspect

    from comfy_extras.nodes_context_windows import ContextWindowsManualNode

    kw = dict(context_length=length, context_overlap=overlap, context_schedule=schedule, context_stride=1,
              closed_loop=False, fuse_method="pyramid", dim=2)
    if "freenoise" in inspect.signature(ContextWindowsManualNode.execute).parameters:
        kw["freenoise"] = False
    out = ContextWindowsManualNode.execute(model, **kw)
    return out[0] if isinstance(out, tuple) else out.result[0]


@pytest.mark.parametrize("schedule", ["standard_static", "batched"])
def test_context_windows_each_keep_their_own_history(env, schedule):
    case = env.case("wan21_t2v")
    frames = case.latent.shape[2]
    latent = case.latent if frames >= 4 else case.latent.repeat(1, 1, 4, 1, 1)[:, :, :4]
    steps = 10
    ref, spy_ref = env.harness.run_spied(case, _windows(case.patcher, 2, 1, schedule), latent=latent, steps=steps)
    windows = spy_ref.calls // steps
    assert windows >= 2 and spy_ref.calls == windows * steps, "the model must really run once per window"

    # caching that skips nothing, windows after the cache and before it: bit-identical, same calls
    for off_model in (_windows(env.harness.abcache(env.nodes, case.patcher, interval=1), 2, 1, schedule),
                      env.harness.abcache(env.nodes, _windows(case.patcher, 2, 1, schedule), interval=1)):
        off, spy_off = env.harness.run_spied(case, off_model, latent=latent, steps=steps)
        assert torch.equal(off, ref) and spy_off.calls == spy_ref.calls

    # cached (fixed plan): every window runs on the planned steps only, output finite and close to the uncached
    on, spy_on = env.harness.run_spied(case, _windows(env.harness.abcache(env.nodes, case.patcher), 2, 1, schedule),
                                       latent=latent, steps=steps)
    from abcache_core import CacheSettings, plan

    computed = sum(plan(CacheSettings(**{"mode": "fixed", **env.harness.TEST_SCHEDULE}), steps))
    assert spy_on.calls == windows * computed < spy_ref.calls
    assert torch.isfinite(on).all() and spy_on.inputs_intact


def test_a_skipped_window_is_extrapolated_from_its_own_history(env):
    """Every skipped call of a window equals the Lagrange extrapolation of *that window's* computed outputs (the
    output extrapolator, so the expected value can be written down): with one history for all windows it would
    be extrapolated from the last window computed at each noise level instead."""
    import comfy.patcher_extension as pe
    from abcache_core import CacheSettings, lagrange_weights

    case = env.case("wan21_t2v")
    latent = case.latent if case.latent.shape[2] >= 4 else case.latent.repeat(1, 1, 4, 1, 1)[:, :, :4]
    seen = []

    def keep(executor, *args, **kwargs):
        to = kwargs.get("transformer_options") or next(a for a in reversed(args) if isinstance(a, dict))
        out = executor(*args, **kwargs)
        w = to.get("context_window")
        seen.append((float(to["sigmas"].flatten()[0]), tuple(w.index_list), out.detach().clone()))
        return out

    outer = case.patcher.clone()
    outer.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "abcache_test_keep", keep)
    sink = env.nodes.TelemetrySink()
    settings = CacheSettings(**{"mode": "fixed", **env.harness.TEST_SCHEDULE, "extrapolator": "output"})
    model = _windows(env.wrappers.apply_ab_cache(outer, settings, sink=sink), 2, 1, "standard_static")
    env.harness.run_spied(case, model, latent=latent, steps=10)
    records = sink.last["records"]
    assert len(records) == len(seen) and len({w for _, w, _ in seen}) >= 2
    history, checked = {}, 0
    for rec, (sigma, window, out) in zip(records, seen):
        h = history.setdefault(window, [])
        if rec["computed"]:
            h.append((sigma, out))
            continue
        k = rec["order"]
        w = lagrange_weights([s for s, _ in h[-k:]], sigma)
        expected = sum(wj * y for wj, (_, y) in zip(w, h[-k:]))
        torch.testing.assert_close(out, expected.to(out.dtype), rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 4
