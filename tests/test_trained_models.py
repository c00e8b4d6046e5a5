"""The committed trained SD 1.5 (VP, epsilon) and Wan 2.1 (video, flow) models: files and provenance, loading
through ComfyUI's model configs, the training convention matching inference, and class-conditional samples
that follow the training data (checked with a classifier fit on scikit-learn's digits)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

NAMES = ("sd15", "wan")


@pytest.fixture(scope="module")
def tm(comfy):
    from devtools import trained_models

    return trained_models


@pytest.fixture(scope="module")
def loaded(tm):
    return {name: tm.load(name) for name in NAMES}


@pytest.fixture(scope="module")
def clfs():
    """Per model: logistic regression on its own training data (16x16 digits / moving-digit clip frames)."""
    pytest.importorskip("sklearn")
    from benchmarks.train_tiny_models import digit_classifier

    return {name: digit_classifier(name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_weights_small_with_provenance(tm, name):
    s = tm.spec(name)
    assert s.weights.is_file(), f"{s.weights} missing (python -m {s.trained_by} {name})"
    assert s.weights.stat().st_size <= 20 * 1024 * 1024
    meta = json.loads(s.metadata_path.read_text())
    assert meta["weights_file"]["bytes"] == s.weights.stat().st_size
    assert meta["weights_file"]["sha256"] == hashlib.sha256(s.weights.read_bytes()).hexdigest()
    assert "load_digits" in meta["data"]["provenance"] and meta["data"]["images"] == 1797
    tr = meta["training"]
    for key in ("seed", "steps", "batch", "lr", "final_loss", "eval_loss_ema", "trained_on", "cpu_estimate"):
        assert key in tr, key
    assert tr["steps"] > 0 and 0 < tr["final_loss"] < 0.2
    assert tr["cpu_estimate"]["cpu_minutes"] <= 45, "recipe must fit 45 min of the 2-core machine's CPU"
    assert meta["unet_config"] == json.loads(json.dumps(s.unet_config))


def test_load_through_comfy_configs(comfy, tm, loaded):
    import comfy.model_base
    import comfy.model_patcher
    import comfy.model_sampling as ms

    sd, kit = loaded["sd15"]
    assert isinstance(sd, comfy.model_patcher.ModelPatcher)
    assert type(sd.model) is comfy.model_base.BaseModel
    assert type(sd.model.diffusion_model).__name__ == "UNetModel"
    assert isinstance(sd.model.model_sampling, ms.EPS) and isinstance(sd.model.model_sampling, ms.ModelSamplingDiscrete)
    # SD's scaled-linear betas: sigma_max of SD 1.5
    assert float(sd.model.model_sampling.sigma_max) == pytest.approx(14.6146, rel=1e-3)
    assert kit.empty_latent(2).shape == (2, 4, 8, 8)

    wan, vkit = loaded["wan"]
    assert type(wan.model) is comfy.model_base.WAN21
    assert type(wan.model.diffusion_model).__name__ == "WanModel"
    assert isinstance(wan.model.model_sampling, ms.CONST)
    assert float(wan.model.model_sampling.shift) == pytest.approx(8.0)
    assert vkit.empty_latent(1).shape == (1, 16, 8, 8, 8)
    with pytest.raises(ValueError):
        vkit.conditioning(11)


@pytest.mark.parametrize("name", NAMES)
def test_latent_map_round_trip(tm, name):
    s = tm.spec(name)
    kit = tm.Kit(spec=s, context=torch.zeros(11, 4, 64))
    g = torch.Generator().manual_seed(0)
    px = torch.rand((2, *(s.frame_shape if s.video else (1, *s.frame_shape))), generator=g)
    lat = kit.encode(px)
    assert lat.shape == (2, *s.latent_shape)
    back = kit.decode_gray({"samples": lat})
    assert torch.allclose(back, px if s.video else px[:, 0], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_denoising_loss_at_inference_convention(comfy, loaded, name):
    """The saved model predicts well with ComfyUI's own inputs (model_sampling's noise_scaling, calculate_input
    and timestep); the same weights fed a wrong timestep convention do far worse, so this checks the
    convention, not just that the model is trained."""
    from benchmarks.train_tiny_models import load_digits_data, loss_fn, make_batch

    patcher, kit = loaded[name]
    model = patcher.model
    images8, labels, _ = load_digits_data()
    idx = torch.arange(0, 256)
    x0, lab = make_batch(name, kit.spec, images8, labels, idx, torch.Generator().manual_seed(1))

    class Tables:
        context = kit.context

    with torch.no_grad():
        good = float(loss_fn(name, model, Tables, x0, lab, torch.Generator().manual_seed(2), "cpu", False))
        ts = model.model_sampling.timestep
        try:        # a wrong convention: timestep scaled by 1/2
            model.model_sampling.timestep = lambda sigma: ts(sigma) * 0.5
            bad = float(loss_fn(name, model, Tables, x0, lab, torch.Generator().manual_seed(2), "cpu", False))
        finally:
            del model.model_sampling.timestep
    meta_eval = kit.metadata["training"]["eval_loss_ema"]
    assert good < 1.5 * meta_eval + 0.01, (good, meta_eval)
    assert bad > 1.5 * good, (good, bad)


def test_sd15_samples_follow_the_data(comfy, loaded, clfs):
    """One 20-step dpmpp_2m/karras cfg-5 sample per class: a classifier fit on the digits agrees."""
    from benchmarks.train_tiny_models import crop_features
    from devtools import harness

    patcher, kit = loaded["sd15"]
    hits = 0
    for c in range(10):
        out = harness.sample(patcher, kit.empty_latent(1), kit.conditioning(c), kit.null_conditioning(), steps=20,
                             cfg=5.0, sampler="dpmpp_2m", scheduler="karras", seed=200 + c)
        img = kit.decode_gray(out)
        assert img.shape == (1, 16, 16) and torch.isfinite(img).all()
        hits += int(clfs["sd15"].predict(crop_features(img))[0]) == c
    assert hits >= 8, hits


def test_wan_clips_follow_the_data(comfy, loaded, clfs):
    """One 30-step euler cfg-5 clip per class: the digit is recognised in most frames, and it moves smoothly
    (its centre of mass shifts by a few pixels per frame at most, as in the training clips)."""
    from benchmarks.train_tiny_models import crop_features
    from devtools import harness

    patcher, kit = loaded["wan"]
    frame_hits, clip_hits, frames = 0, 0, 0
    for c in range(10):
        out = harness.sample(patcher, kit.empty_latent(1), kit.conditioning(c), kit.null_conditioning(), steps=30,
                             cfg=5.0, sampler="euler", scheduler="simple", seed=300 + c)
        clip = kit.decode_gray(out)[0]                  # (8, 32, 32)
        assert clip.shape == (8, 32, 32) and torch.isfinite(clip).all()
        pred = clfs["wan"].predict(crop_features(clip))
        frame_hits += int((pred == c).sum())
        clip_hits += int((pred == c).sum() * 2 > len(pred))
        frames += len(pred)
        ys = torch.arange(32).float()
        mass = clip.sum((1, 2)).clamp_min(1e-6)
        cy, cx = (clip.sum(2) * ys).sum(1) / mass, (clip.sum(1) * ys).sum(1) / mass
        step = torch.sqrt(cy.diff() ** 2 + cx.diff() ** 2)
        assert float(step.max()) < 6.0, (c, step)
    assert clip_hits >= 7, clip_hits
    assert frame_hits >= 0.7 * frames, (frame_hits, frames)


def test_classifier_check_recognises_training_clips(clfs):
    """The check itself: on generated training clips the crop classifier is right (so a failure above means
    the model, not the check)."""
    from benchmarks.train_tiny_models import crop_features, load_digits_data, moving_clips

    images8, labels, _ = load_digits_data()
    clips = moving_clips(images8[:100], torch.Generator().manual_seed(0))
    pred = clfs["wan"].predict(crop_features(clips.reshape(-1, 32, 32))).reshape(100, 8)
    acc = float((torch.from_numpy(pred) == labels[:100, None]).float().mean())
    assert acc >= 0.9, acc


def test_temporal_metric():
    from benchmarks.user_settings import temporal_metrics

    g = torch.Generator().manual_seed(0)
    ref = torch.rand((2, 8, 16, 16), generator=g)
    same, rel0 = temporal_metrics(ref, ref.clone())
    assert same == 100.0 and rel0 == 0.0
    shifted, rel_s = temporal_metrics(ref, ref + 0.1)          # a constant offset keeps the motion exactly
    assert shifted > 60 and rel_s < 1e-6
    noisy = ref + 0.05 * torch.randn(ref.shape, generator=g)
    p1, r1 = temporal_metrics(ref, noisy)
    p2, r2 = temporal_metrics(ref, ref + 0.2 * torch.randn(ref.shape, generator=g))
    assert p1 > p2 and 0 < r1 < r2
