"""Every tiny model family samples through ComfyUI's real sampler (devtools.tiny_models; ComfyUI is real)."""
from __future__ import annotations

import pytest
import torch

# Kept literal so collection does not import anything; test_family_table checks it against FAMILIES.
FAMILY_NAMES = ("flux_dev", "flux_schnell", "hunyuan_video", "ltxv", "wan21_t2v", "wan21_i2v", "wan22_ti2v",
                "sd3", "sd15", "sdxl", "chroma", "qwen_image", "lumina2", "cogvideox", "ltx2")
VP_FAMILIES = {"sd15", "sdxl", "cogvideox"}   # eps / v prediction; everything else samples as FLOW/CONST
STEPS = 6


@pytest.fixture(scope="module")
def tm(comfy):
    """The factory, with torch on one intra-op thread for this module (restored after).

    Tiny matmuls only lose to thread hand-offs: on 2 shared cores one thread makes this file ~4x faster.
    """
    from devtools import tiny_models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_models
    torch.set_num_threads(threads)


def _case(tm, name, **kw):
    ok, reason = tm.available(name)
    if not ok:
        pytest.skip(reason)
    return tm.build(name, **kw)


def _equal(tm, a, b):
    """torch.equal over every stream (ltx2 latents are comfy NestedTensors)."""
    sa, sb = tm.streams(a), tm.streams(b)
    return len(sa) == len(sb) and all(torch.equal(x, y) for x, y in zip(sa, sb))


def _spied(comfy, case):
    """A clone of case.patcher counting rows that reach the DIFFUSION_MODEL and APPLY_MODEL wrappers."""
    wp = comfy.patcher_extension.WrappersMP
    seen = {"diffusion": [], "apply": []}

    def spy(key):
        def wrapper(executor, *args, **kwargs):
            x = args[0]
            x = x[0] if isinstance(x, (list, tuple)) else x   # LTX-2 AV passes [video, audio]
            seen[key].append(tuple(x.shape))
            return executor(*args, **kwargs)
        return wrapper

    patcher = case.patcher.clone()
    patcher.add_wrapper_with_key(wp.DIFFUSION_MODEL, "spy", spy("diffusion"))
    patcher.add_wrapper_with_key(wp.APPLY_MODEL, "spy", spy("apply"))
    return patcher, seen


def test_family_table(comfy, tm):
    assert set(tm.FAMILIES) == set(FAMILY_NAMES)
    for name in FAMILY_NAMES:
        ok, reason = tm.available(name)
        assert isinstance(ok, bool) and isinstance(reason, str)
        assert ok or reason, f"{name}: unavailable without a reason"
    has = lambda cls: hasattr(comfy.supported_models, cls)  # noqa: E731
    assert tm.available("cogvideox")[0] == has("CogVideoX_T2V")
    if not has("LTXAV"):
        assert "LTXAV" in tm.available("ltx2")[1]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_samples(comfy, tm, name):
    case = _case(tm, name)
    spec = case.spec
    assert case.latent.shape == spec.latent_shape and case.latent.shape[0] == 1
    assert not any(t.any() for t in tm.streams(case.latent))   # ltx2: NestedTensor [video, audio]
    assert case.flow == (name not in VP_FAMILIES)

    patcher, seen = _spied(comfy, case)
    out = tm.sample(case, steps=STEPS, cfg=2.0, patcher=patcher)

    assert [o.shape for o in tm.streams(out)] == [t.shape for t in tm.streams(case.latent)]
    assert all(torch.isfinite(o).all() for o in tm.streams(out))
    # euler: one evaluation per step, cond + uncond rows each time (batched or not).
    assert sum(s[0] for s in seen["apply"]) == 2 * STEPS
    if case.has_diffusion_model_wrapper:
        assert sum(s[0] for s in seen["diffusion"]) == 2 * STEPS
        channels = spec.x_channels or case.latent.shape[1]
        assert {s[1] for s in seen["diffusion"]} == {channels}      # wan21_i2v: 16 latent + 20 concat
        assert {s[2:] for s in seen["diffusion"]} == {tuple(case.latent.shape[2:])}
    else:
        assert seen["diffusion"] == []      # sd3: its forward has no DIFFUSION_MODEL WrapperExecutor
    assert all(o.dtype == torch.float32 for o in tm.streams(out))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_deterministic(comfy, tm, name):
    a = _case(tm, name, seed=3)
    b = tm.build(name, seed=3)
    for (ka, pa), (kb, pb) in zip(a.patcher.model.diffusion_model.state_dict().items(),
                                  b.patcher.model.diffusion_model.state_dict().items()):
        assert ka == kb and torch.equal(pa, pb), ka
    assert torch.equal(a.positive(5)[0][0], b.positive(5)[0][0])
    assert not torch.equal(a.positive(5)[0][0], a.negative(5)[0][0])

    out1 = tm.sample(a, steps=STEPS, cfg=2.0, seed=11)
    out2 = tm.sample(b, steps=STEPS, cfg=2.0, seed=11)
    out3 = tm.sample(a, steps=STEPS, cfg=2.0, seed=12)
    assert _equal(tm, out1, out2)
    assert not _equal(tm, out1, out3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_low_precision(comfy, tm, name, dtype):
    case = _case(tm, name, dtype=dtype)
    assert case.patcher.model.get_dtype() == dtype
    out = tm.sample(case, steps=3, cfg=2.0)
    assert [o.shape for o in tm.streams(out)] == [t.shape for t in tm.streams(case.latent)]
    assert all(torch.isfinite(o).all() for o in tm.streams(out))


@pytest.mark.parametrize("name", ["flux_dev", "wan21_i2v", "sd3", "sd15"])
def test_ksampler_node_matches_sample(comfy, tm, name):
    """The real KSampler node class on a tiny model equals tiny_models.sample (same seed) bit for bit."""
    import nodes  # ComfyUI's nodes.py (runtime.activate puts ComfyUI first on sys.path)

    case = _case(tm, name)
    patcher, seen = _spied(comfy, case)
    pos, neg = case.positive(case.seed), case.negative(case.seed)
    (latent_out,) = nodes.KSampler().sample(patcher, 7, STEPS, 2.0, "euler", "simple", pos, neg,
                                            {"samples": case.latent.clone()}, denoise=1.0)
    out = latent_out["samples"]
    assert out.shape == case.latent.shape and torch.isfinite(out).all()
    key = "diffusion" if case.has_diffusion_model_wrapper else "apply"
    assert sum(s[0] for s in seen[key]) == 2 * STEPS
    assert torch.equal(out, tm.sample(case, steps=STEPS, cfg=2.0, seed=7))


def test_wan22_ti2v_noise_mask_gives_per_frame_timesteps(comfy, tm):
    """TI2V as Wan22ImageToVideoLatent sets it up: a noise_mask makes WAN22 pass a (batch, frames) timestep."""
    case = _case(tm, "wan22_ti2v")
    t_shapes = []

    def spy(executor, *args, **kwargs):
        t_shapes.append(tuple(args[1].shape))
        return executor(*args, **kwargs)

    patcher = case.patcher.clone()
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "spy", spy)
    frames = case.latent.shape[2]
    mask = torch.ones((1, 1) + tuple(case.latent.shape[2:]))
    mask[:, :, :1] = 0.0                                   # first frame is the given image
    latent = torch.randn(case.latent.shape, generator=torch.Generator().manual_seed(0))
    out = tm.sample(case, steps=STEPS, cfg=2.0, latent=latent, noise_mask=mask, patcher=patcher)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert {t[1:] for t in t_shapes} == {(frames,)}
    assert sum(t[0] for t in t_shapes) == 2 * STEPS
