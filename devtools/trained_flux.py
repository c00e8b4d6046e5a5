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

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
ASSET_DIR = REPO / "benchmarks" / "assets"
WEIGHTS = ASSET_DIR / "tiny_flux_digits.safetensors"
METADATA = ASSET_DIR / "tiny_flux_digits.json"

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

UNET_CONFIG = dict(
    image_model="flux", guidance_embed=True,
    in_channels=16, out_channels=16, patch_size=2,
    vec_in_dim=POOLED_DIM, context_in_dim=CONTEXT_DIM,
    hidden_size=128, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=2,
    axes_dim=[8, 12, 12], theta=10000, qkv_bias=True,
    txt_ids_dims=[],            # only newer ComfyUI trees know it; filtered out elsewhere
)


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
    import dataclasses
    import inspect

    import comfy.ldm.flux.model as fm

    names = {f.name for f in dataclasses.fields(fm.FluxParams)}
    names |= {n for n in inspect.signature(fm.Flux.__init__).parameters}
    return {k: v for k, v in UNET_CONFIG.items() if k in names}


def build_model(dtype: torch.dtype = torch.float32):
    """An untrained ``comfy.model_base.Flux`` built through ``comfy.supported_models.Flux`` (weights empty)."""
    import comfy.supported_models as sm

    cfg = sm.Flux(unet_config())
    cfg.set_inference_dtype(dtype, None)
    return cfg.get_model({})


def split_state_dict(sd: dict) -> tuple[dict, dict]:
    """(Flux diffusion_model state_dict, class tables {"context", "pooled"})."""
    flux = {k: v for k, v in sd.items() if not k.startswith(COND_PREFIX)}
    cond = {k[len(COND_PREFIX):]: v for k, v in sd.items() if k.startswith(COND_PREFIX)}
    return flux, cond


@dataclass
class Digits:
    """Conditioning / latent helpers that go with the loaded model."""

    context: torch.Tensor           # (11, COND_TOKENS, CONTEXT_DIM) float32
    pooled: torch.Tensor            # (11, POOLED_DIM) float32
    metadata: dict = field(default_factory=dict)
    guidance: float = DEFAULT_GUIDANCE

    def conditioning(self, class_index: int, guidance: float | None = None) -> list:
        """CONDITIONING for digit ``class_index`` (0-9; 10 = null / unconditional)."""
        i = int(class_index)
        if not 0 <= i <= NULL_CLASS:
            raise ValueError(f"class_index must be 0..{NULL_CLASS} (got {class_index})")
        g = self.guidance if guidance is None else float(guidance)
        return [[self.context[i:i + 1].clone(), {"pooled_output": self.pooled[i:i + 1].clone(), "guidance": g}]]

    def null_conditioning(self, guidance: float | None = None) -> list:
        return self.conditioning(NULL_CLASS, guidance)

    @staticmethod
    def empty_latent(batch: int = 1) -> torch.Tensor:
        return torch.zeros((batch, *LATENT_SHAPE))

    encode = staticmethod(encode)
    decode = staticmethod(decode)
    decode_gray = staticmethod(decode_gray)


def load_file(path: Path | str | None = None) -> dict:
    from safetensors.torch import load_file as _load

    return _load(str(path or WEIGHTS))


def load(dtype: torch.dtype = torch.float32, path: Path | str | None = None):
    """(ModelPatcher on the CPU, Digits helpers) for the committed trained weights."""
    import comfy.model_management
    import comfy.model_patcher

    path = Path(path or WEIGHTS)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: train it with `python -m benchmarks.train_tiny_flux`")
    flux_sd, cond = split_state_dict(load_file(path))
    model = build_model(dtype)
    # ComfyUI's own key conversion for this model config (newer trees name the RMSNorm scales `.weight`)
    flux_sd = model.model_config.process_unet_state_dict(flux_sd)
    missing, unexpected = model.diffusion_model.load_state_dict(flux_sd, strict=True)
    assert not missing and not unexpected
    model.diffusion_model.to(dtype)
    model.eval()
    dev = comfy.model_management.get_torch_device()
    offload = comfy.model_management.unet_offload_device()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=offload)
    meta = {}
    mpath = path.with_suffix(".json")
    if mpath.is_file():
        meta = json.loads(mpath.read_text())
    return patcher, Digits(context=cond["context"].float(), pooled=cond["pooled"].float(), metadata=meta)
