"""A small *trained* FLUX model (ComfyUI's own ``comfy.ldm.flux.model.Flux``) that draws hand-written digits.

Trained by ``python -m benchmarks.train_tiny_flux`` (rectified flow, class-conditional with a null class)
on scikit-learn's bundled copy of the UCI hand-written digits; the weights and a JSON record of how they
were made live in ``benchmarks/assets/tiny_flux_digits.{safetensors,json}``.

    from devtools import runtime; runtime.activate(cpu=True)   # before anything imports comfy
    from devtools import trained_flux
    patcher, digits = trained_flux.load()                     # ModelPatcher via supported_models.Flux
    latent = digits.empty_latent(4)
    out = comfy.sample.sample(patcher, noise, 28, 3.0, "euler", "simple",
                              digits.conditioning(7), digits.null_conditioning(), latent, ...)
    images = digits.decode(out)                               # (4, 32, 32, 3) in [0, 1], ComfyUI IMAGE

The model is built the way ComfyUI builds a checkpoint: ``comfy.supported_models.Flux(unet_config)`` ->
``get_model({})`` (a real ``comfy.model_base.Flux``: FLUX-dev sampling, ``ModelSamplingFlux`` shift 1.15,
latent format ``latent_formats.Flux``) -> ``diffusion_model.load_state_dict`` -> ``ModelPatcher``, so every
sampler, scheduler and model patch in ComfyUI applies to it unchanged.

"Latent" space -- no VAE, a fixed invertible map of the image:

    8x8 digit (0..16) --bilinear--> 32x32 grayscale in [0, 1] --(2p-1)--> [-1, 1]
    --pixel_unshuffle(4)--> (16, 8, 8)  = what the diffusion model sees ("model space", x0 of training)
    --latent_format.process_out--> LATENT (what KSampler returns / EmptyLatent-style zeros come in as)

``decode`` inverts the last two steps (``process_in`` then ``pixel_shuffle``), so ``decode(KSampler output)``
is the image. 16 latent channels x 8x8 with patch size 2 -> 16 image tokens; 4 text tokens.

Conditioning: a learned table per class (0-9) plus a null class (10) used as the unconditional branch for
CFG (trained with 10 % label dropout). Each entry gives ``context`` (1, 4, 64) and ``pooled_output`` (1, 64);
``guidance`` (FLUX-dev guidance embedding) was drawn uniformly from [0, 10] during training and carries no
information: this model is *not* guidance-distilled, use CFG (cfg 2-4) for guidance.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from devtools import trained_models

REPO = Path(__file__).resolve().parent.parent
ASSET_DIR = trained_models.ASSET_DIR
SPEC = trained_models.spec("flux")
WEIGHTS = SPEC.weights
METADATA = SPEC.metadata_path

NUM_CLASSES = 10
NULL_CLASS = 10                 # conditioning index of the "no class" (unconditional) entry
COND_TOKENS = 4                 # context tokens per class
CONTEXT_DIM = 64                # context_in_dim
POOLED_DIM = 64                 # vec_in_dim
IMAGE_SIZE = 32                 # decoded image side
UNSHUFFLE = 4                   # pixel (un)shuffle factor: 32x32x1 <-> 8x8x16
LATENT_SHAPE = (16, IMAGE_SIZE // UNSHUFFLE, IMAGE_SIZE // UNSHUFFLE)
DEFAULT_GUIDANCE = 3.5
COND_PREFIX = "conditioning."   # keys of the class tables in the safetensors file (rest: Flux state_dict)

UNET_CONFIG = trained_models.FLUX_UNET   # one definition, shared with devtools/trained_models.py


# --------------------------------------------------------------------------------------------------
# Image <-> model space <-> LATENT
# --------------------------------------------------------------------------------------------------


def digits_to_pixels(images8: torch.Tensor) -> torch.Tensor:
    """sklearn digits (N, 8, 8) with values 0..16 -> (N, 1, 32, 32) grayscale in [0, 1] (bilinear)."""
    x = torch.as_tensor(images8, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0)


def pixels_to_model(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1, 32, 32) in [0, 1] -> model space (N, 16, 8, 8) in [-1, 1]."""
    return F.pixel_unshuffle(pixels * 2.0 - 1.0, UNSHUFFLE)


def model_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Model space (N, 16, 8, 8) -> (N, 1, 32, 32) in [0, 1] (clamped)."""
    return ((F.pixel_shuffle(x.float(), UNSHUFFLE) + 1.0) * 0.5).clamp(0.0, 1.0)


def _latent_format():
    import comfy.latent_formats

    return comfy.latent_formats.Flux()      # the format supported_models.Flux uses


def encode(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1, 32, 32) or IMAGE (N, 32, 32, C) in [0, 1] -> LATENT samples (what KSampler accepts/returns)."""
    if pixels.ndim == 4 and pixels.shape[-1] in (1, 3, 4) and pixels.shape[1] != 1:
        pixels = pixels[..., :3].mean(-1, keepdim=True).movedim(-1, 1)
    return _latent_format().process_out(pixels_to_model(pixels.float()))


def decode(latent) -> torch.Tensor:
    """LATENT samples (tensor or {"samples": ...}) -> IMAGE (N, 32, 32, 3) in [0, 1]."""
    if isinstance(latent, dict):
        latent = latent["samples"]
    px = model_to_pixels(_latent_format().process_in(latent.float()))
    return px.movedim(1, -1).expand(-1, -1, -1, 3).contiguous()


def decode_gray(latent) -> torch.Tensor:
    """LATENT samples -> (N, 32, 32) grayscale in [0, 1]."""
    return decode(latent)[..., 0]


# --------------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------------


def unet_config() -> dict:
    """UNET_CONFIG filtered to the keys this ComfyUI's Flux/FluxParams accept."""
    return trained_models.unet_config(SPEC)


def build_model(dtype: torch.dtype = torch.float32):
    """An untrained ``comfy.model_base.Flux`` built through ``comfy.supported_models.Flux`` (weights empty)."""
    return trained_models.build_model(SPEC, dtype)


split_state_dict = trained_models.split_state_dict


class Digits(trained_models.Kit):
    """Conditioning / latent helpers that go with the loaded FLUX model (a :class:`trained_models.Kit`)."""

    def __init__(self, context, pooled, metadata=None):
        super().__init__(spec=SPEC, context=context, pooled=pooled, metadata=metadata or {})


def load_file(path: Path | str | None = None) -> dict:
    return trained_models.load_file(path or WEIGHTS)


def load(dtype: torch.dtype = torch.float32, path: Path | str | None = None):
    """(ModelPatcher on the CPU, Kit helpers) for the committed trained weights: ``trained_models.load("flux")``."""
    return trained_models.load("flux", dtype=dtype, path=path)
