"""The committed trained tiny FLUX digits model: file, metadata, loading through ComfyUI, sampling, and the
training forward (autograd-safe re-statement) matching ComfyUI's unmodified Flux forward."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch


@pytest.fixture(scope="module")
def tf(comfy):
    from devtools import trained_flux

    return trained_flux


@pytest.fixture(scope="module")
def loaded(tf):
    return tf.load()


def test_weights_file_is_small_and_matches_metadata(tf):
    path = tf.WEIGHTS
    assert path.is_file(), f"{path} missing (python -m benchmarks.train_tiny_flux)"
    assert path.stat().st_size <= 20 * 1024 * 1024
    meta = json.loads(tf.METADATA.read_text())
    assert meta["weights_file"]["bytes"] == path.stat().st_size
    assert meta["weights_file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "load_digits" in meta["data"]["provenance"] and meta["data"]["images"] == 1797
    tr = meta["training"]
    for key in ("seed", "steps", "batch", "lr", "final_loss", "wall_time_s", "cpu_time_s", "eval_loss_ema"):
        assert key in tr, key
    assert tr["steps"] > 0 and 0 < tr["final_loss"] < 1.0
    assert tr["cpu_time_s"] < 3600   # one thread; wall time depends on what else shares the machine
    assert meta["versions"]["torch"] and meta["versions"]["comfyui"]
    assert meta["unet_config"] == json.loads(json.dumps(tf.UNET_CONFIG))


def test_loads_through_comfy_config(comfy, tf, loaded):
    import comfy.model_base
    import comfy.model_sampling

    patcher, digits = loaded
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    model = patcher.model
    assert type(model) is comfy.model_base.Flux
    assert type(model.diffusion_model).__module__ == "comfy.ldm.flux.model"
    assert isinstance(model.model_sampling, comfy.model_sampling.CONST)
    assert digits.context.shape == (tf.NULL_CLASS + 1, tf.COND_TOKENS, tf.CONTEXT_DIM)
    assert digits.pooled.shape == (tf.NULL_CLASS + 1, tf.POOLED_DIM)
    cond = digits.conditioning(3)
    assert cond[0][0].shape == (1, tf.COND_TOKENS, tf.CONTEXT_DIM) and "pooled_output" in cond[0][1]
    with pytest.raises(ValueError):
        digits.conditioning(11)


def test_latent_map_round_trip(tf):
    g = torch.Generator().manual_seed(0)
    px = torch.rand((3, 1, 32, 32), generator=g)
    lat = tf.encode(px)
    assert lat.shape == (3, *tf.LATENT_SHAPE)
    img = tf.decode({"samples": lat})
    assert img.shape == (3, 32, 32, 3)
    assert torch.allclose(img[..., 0], px[:, 0], atol=1e-5)
    assert torch.allclose(tf.encode(img), lat, atol=1e-4)   # IMAGE (N, H, W, 3) input too


def test_six_step_sample_is_finite_and_in_range(comfy, tf, loaded):
    patcher, digits = loaded
    latent = digits.empty_latent(2)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(patcher, noise, 6, 3.0, "euler", "simple", digits.conditioning(1),
                              digits.null_conditioning(), latent, disable_pbar=True, seed=0)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    img = digits.decode(out)
    assert img.shape == (2, 32, 32, 3) and 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def test_unmodified_forward_equals_training_forward(comfy, tf, loaded):
    from benchmarks.train_tiny_flux import forward_equivalence

    patcher, _ = loaded
    diff, scale = forward_equivalence(patcher, seed=3)
    assert scale > 0.1
    assert diff < 1e-4, diff


def test_samples_look_like_the_requested_digit(comfy, tf, loaded):
    """One 12-step cfg-3 sample per class; the nearest class-mean image (training data) should mostly agree."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    patcher, digits = loaded
    d = load_digits()
    px = tf.digits_to_pixels(torch.from_numpy(d.images)).reshape(len(d.images), -1)
    labels = torch.from_numpy(d.target)
    means = torch.stack([px[labels == c].mean(0) for c in range(10)])
    hits = 0
    for c in range(10):
        latent = digits.empty_latent(1)
        noise = comfy.sample.prepare_noise(latent, 100 + c)
        out = comfy.sample.sample(patcher, noise, 12, 3.0, "euler", "simple", digits.conditioning(c),
                                  digits.null_conditioning(), latent, disable_pbar=True, seed=100 + c)
        img = digits.decode_gray(out).reshape(1, -1)
        hits += int(torch.cdist(img, means).argmin()) == c
    assert hits >= 8, hits
