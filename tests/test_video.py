"""Video specifics on ComfyUI's own video model classes (tiny random weights, devtools.tiny_models; ComfyUI is
real, never mocked): Wan 2.2's two experts in two samplers, batches of several videos, LTX-2's video+audio
output.

* Wan 2.2 A14B (high- and low-noise expert, each a Wan 2.1-architecture model with its own AB-Cache node,
  KSamplerAdvanced 0..k then k..n): each sampler is its own cache run. The second expert starts from no
  history: its first steps are computed, its calls follow the plan of its own part of the schedule, and its
  output equals that of the same stage sampled on its own (nothing carried over from the first expert).
* Batch 2: each video of the batch equals the same video sampled alone (same noise) within fp tolerance,
  with the same calls as planned.
* LTX-2 (ComfyUI >= 0.33; skipped where the runtime has no LTXAV): both parts of the [video, audio] output
  are extrapolated on skipped steps, each from its own computed history; forward calls = plan; caching off is
  bit-identical to the unpatched model.
"""
from __future__ import annotations

import pytest
import torch

STEPS = 12          # one schedule; the split: high-noise expert on steps 0..SPLIT, low-noise on SPLIT..STEPS
SPLIT = 6


def _settings(**kw):
    from abcache_core import CacheSettings

    return CacheSettings(**{"mode": "fixed", **_schedule(), **kw})


def _schedule():
    from devtools.harness import TEST_SCHEDULE

    return dict(TEST_SCHEDULE)               # order 2, interval 3, warm-up 2


def _planned(settings, steps: int) -> int:
    from abcache_core import plan

    p = plan(settings, steps)
    assert None not in p                     # fixed mode: decided per step, before the run
    return sum(bool(c) for c in p)


def _finite(t) -> bool:
    from devtools.tiny_models import streams

    return all(bool(torch.isfinite(s).all()) for s in streams(t))


# ------------------------------------------------------------------------------------- Wan 2.2 experts
def test_wan22_experts_in_two_samplers_start_fresh(env):
    import nodes as comfy_nodes

    high_case = env.tm.build("wan21_t2v", seed=0)       # two experts: same architecture, different weights
    low_case = env.tm.build("wan21_t2v", seed=1)
    pos, neg = high_case.positive(1), high_case.negative(2)
    settings = _settings()
    # the low-noise expert's own node, warm-up 1 (README: its first steps are not the fast-changing ones) and
    # order 3: its first skipped step then has fewer computed outputs of its own than the order, so it would
    # use one more (the high-noise expert's) if any history were carried over
    settings_low = _settings(warmup=1, order=3)

    def cached(case, **kw):
        return env.harness.abcache(env.nodes, case.patcher, **kw)

    ks = comfy_nodes.KSamplerAdvanced()

    def stage(model, latent, start, end, first):
        # KSamplerAdvanced as Wan 2.2 graphs wire it: the first adds noise and returns the leftover noise
        add, leftover = ("enable", "enable") if first else ("disable", "disable")
        return ks.sample(model, add, 0, STEPS, 2.0, "euler", "simple", pos, neg, latent, start, end,
                         leftover)[0]

    lat = {"samples": high_case.latent.clone()}
    high, spy_high = env.harness.with_spy(cached(high_case))
    low_node = cached(low_case, warmup=1, order=3)
    low, spy_low = env.harness.with_spy(low_node)
    mid = stage(high, lat, 0, SPLIT, True)
    out = stage(low, mid, SPLIT, STEPS, False)["samples"]

    # the same stages uncached: which sigmas each stage evaluates
    ref_high, spy_ref_high = env.harness.with_spy(high_case.patcher)
    ref_low, spy_ref_low = env.harness.with_spy(low_case.patcher)
    ref_mid = stage(ref_high, lat, 0, SPLIT, True)
    ref = stage(ref_low, ref_mid, SPLIT, STEPS, False)["samples"]
    assert spy_ref_high.calls == SPLIT and spy_ref_low.calls == STEPS - SPLIT     # euler, cond+uncond batched
    first_low = spy_ref_low.sigmas

    # each stage is its own run: its calls are the plan of its own part of the schedule
    assert spy_high.calls == _planned(settings, SPLIT) < SPLIT
    assert spy_low.calls == _planned(settings_low, STEPS - SPLIT) < STEPS - SPLIT
    # the low-noise expert keeps nothing of the high-noise expert's history: its first and last steps are
    # computed, and its first skipped step is extrapolated from its own computed outputs only
    assert spy_low.sigmas[0] == first_low[0] and spy_low.sigmas[-1] == first_low[-1]
    records = low_node.model_options["ab_cache"].sink.last["records"]
    assert [r["sigma"] for r in records] == first_low and records[0]["computed"]
    first_skip = next(i for i, r in enumerate(records) if not r["computed"])
    assert records[first_skip]["order"] == first_skip < settings_low.order   # only its own computed outputs
    # ... and the stage equals the same stage sampled alone, from the same latent, in a fresh cache run
    alone, spy_alone = env.harness.with_spy(cached(low_case, warmup=1, order=3))
    out_alone = stage(alone, mid, SPLIT, STEPS, False)["samples"]
    assert torch.equal(out, out_alone) and spy_alone.sigmas == spy_low.sigmas
    assert _finite(mid["samples"]) and _finite(out)
    assert float((out - ref).abs().max()) > 0                                     # something was skipped
    # the same AB-Cache node on both stages (one model wired to both samplers) also starts over at the split
    both, spy_both = env.harness.with_spy(cached(high_case))
    stage(both, stage(both, lat, 0, SPLIT, True), SPLIT, STEPS, False)
    assert spy_both.calls == _planned(settings, SPLIT) + _planned(settings, STEPS - SPLIT)


# ------------------------------------------------------------------------------------------------ batch
@pytest.mark.parametrize("family", ["wan21_t2v", "hunyuan_video"])
def test_batch_of_two_videos_equals_two_single_runs(env, family):
    import comfy.sample

    case = env.case(family)
    settings = _settings()
    one = case.latent
    two = torch.cat([one, one], dim=0)
    g = torch.Generator().manual_seed(5)
    noise = [torch.randn(one.shape, generator=g) for _ in range(2)]
    pos, neg = case.positive(1), case.negative(2)

    def run(model, latent, noise_):
        m, spy = env.harness.with_spy(model)
        out = comfy.sample.sample(m, noise_, STEPS, 2.0, "euler", "simple", pos, neg, latent, denoise=1.0,
                                  disable_pbar=True, seed=0)
        return out, spy

    cached = env.harness.abcache(env.nodes, case.patcher)
    batch, spy_batch = run(cached, two, torch.cat(noise, dim=0))
    singles = [run(cached, one, n) for n in noise]
    ref, spy_ref = run(case.patcher, two, torch.cat(noise, dim=0))

    planned = _planned(settings, STEPS)
    assert spy_batch.calls == planned == env.harness.expected_calls(spy_ref, settings) < spy_ref.calls
    assert all(s.calls == planned for _, s in singles)
    assert set(spy_batch.uuids) == {2}                   # cond + uncond, each a chunk of 2 videos
    for i, (single, _) in enumerate(singles):
        torch.testing.assert_close(batch[i:i + 1], single, rtol=1e-4, atol=1e-6)
    assert _finite(batch)
    assert float((batch[0] - batch[1]).abs().max()) > 1e-3, "the two videos must differ (different noise)"
    assert float((batch - ref).abs().max()) > 0            # something was skipped


# ------------------------------------------------------------------------------------ LTX-2 video + audio
def _outputs_seen(env, model):
    """``model`` with an outermost DIFFUSION_MODEL wrapper that keeps (sigma, [video, audio] output) of every
    model call, computed or extrapolated (added before AB-Cache, so AB-Cache's wrapper runs inside it)."""
    wp = env.comfy.patcher_extension.WrappersMP
    seen = []

    def keep(executor, *args, **kwargs):
        to = kwargs.get("transformer_options") or next(a for a in reversed(args) if isinstance(a, dict))
        out = executor(*args, **kwargs)
        seen.append((float(to["sigmas"].flatten()[0]), [o.detach().clone() for o in out]))
        return out

    m = model.clone()
    m.add_wrapper_with_key(wp.DIFFUSION_MODEL, "abcache_test_keep", keep)
    return m, seen


def test_ltx2_video_and_audio_both_extrapolated(env):
    from abcache_core import lagrange_weights

    case = env.case("ltx2")          # skips, naming the runtime, where ComfyUI has no LTXAV (0.3.75)
    # the output extrapolator, so each part's prediction can be written down below; the noise-space default
    # on both parts: see the end
    settings = _settings(extrapolator="output")
    noise_out, noise_spy = env.harness.run_spied(case, env.wrappers.apply_ab_cache(case.patcher, _settings()),
                                                 steps=STEPS)
    sink = env.nodes.TelemetrySink()
    outer, seen = _outputs_seen(env, case.patcher)
    cached = env.wrappers.apply_ab_cache(outer, settings, sink=sink)
    out, spy = env.harness.run_spied(case, cached, steps=STEPS)
    ref, spy_ref = env.harness.run_spied(case, case.patcher, steps=STEPS)

    assert spy.calls == env.harness.expected_calls(spy_ref, settings) == _planned(settings, STEPS) < spy_ref.calls
    assert spy.inputs_intact and _finite(out)
    assert len(env.tm.streams(out)) == 2
    records = sink.last["records"]
    assert [r["computed"] for r in records].count(True) == spy.calls and len(records) == len(seen) == STEPS
    computed = []                                   # (sigma, [video, audio]) of the computed calls so far
    skipped = 0
    for rec, (sigma, parts) in zip(records, seen):
        assert rec["sigma"] == sigma and len(parts) == 2
        if rec["computed"]:
            computed.append((sigma, parts))
            continue
        skipped += 1
        k = rec["order"]
        assert k >= 1 and all(bool(torch.isfinite(p).all()) for p in parts)
        hist = computed[-k:]
        w = lagrange_weights([s for s, _ in hist], sigma)          # flow model: the sigma coordinate
        for i, part in enumerate(parts):                           # video and audio, each from its history
            expected = sum(wj * h[i] for wj, (_, h) in zip(w, hist))
            torch.testing.assert_close(part, expected.to(part.dtype), rtol=1e-5, atol=1e-6)
            if k >= 2:
                assert not torch.equal(part, hist[-1][1][i]), "extrapolated, not the last output reused"
    assert skipped == STEPS - spy.calls > 0
    assert any(r["order"] >= 2 for r in records if not r["computed"])

    # caching off: bit-identical to the unpatched model, every call computed
    off, spy_off = env.harness.run_spied(case, env.harness.abcache(env.nodes, case.patcher, interval=1),
                                         steps=STEPS)
    assert spy_off.calls == spy_ref.calls
    assert all(torch.equal(a, b) for a, b in zip(env.tm.streams(off), env.tm.streams(ref)))
    # the default (noise-space) extrapolator on both parts: same calls, finite, not the output-space values
    assert noise_spy.calls == spy.calls and _finite(noise_out)
    assert any(not torch.equal(a, b) for a, b in zip(env.tm.streams(noise_out), env.tm.streams(out)))
