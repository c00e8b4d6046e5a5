"""The small *trained* models of ComfyUI's own classes that tests, benchmarks and the demo sample, behind one
interface:

    from devtools import runtime; runtime.activate(cpu=True)     # before anything imports comfy
    from devtools import trained_models
    patcher, kit = trained_models.load("sd15")                   # "flux" | "sd15" | "wan"
    latent = kit.empty_latent(4)
    out = comfy.sample.sample(patcher, noise, 30, 5.0, "dpmpp_2m", "karras",
                              kit.conditioning(7), kit.null_conditioning(), latent, ...)
    frames = kit.decode_gray(out)          # (N, H, W) for image models, (N, F, H, W) for video models

=========  ================================  ==========================  ============================  =======
name       ComfyUI class (supported_models)  objective                   data                          latent
=========  ================================  ==========================  ============================  =======
``flux``   ``Flux`` (FLUX-dev config)        rectified flow              digits, 32x32                 16x8x8
``sd15``   ``SD15`` (SD 1.5 U-Net)           epsilon, SD scaled-linear   digits, 16x16                 4x8x8
``wan``    ``WAN21_T2V`` (Wan 2.1 T2V)       rectified flow (shift 8)    moving digits, 8 x 32x32      16x8x8x8
=========  ================================  ==========================  ============================  =======

Each model is built the way ComfyUI builds a checkpoint: ``comfy.supported_models.<Config>(unet_config)`` ->
``get_model({})`` (the real ``comfy.model_base`` class with its model_sampling and latent format) -> the
config's own state-dict conversion -> ``diffusion_model.load_state_dict`` -> ``ModelPatcher``, so every
sampler, scheduler and model patch in ComfyUI applies unchanged.

"Latent" space: no VAE, a fixed invertible map of grayscale pixels in [0, 1]:
``2p - 1`` -> ``pixel_unshuffle`` (per frame for video) -> model space (what the diffusion model's x0 is in
training) -> ``latent_format.process_out`` -> LATENT (what KSampler takes and returns). ``decode`` inverts it.

Conditioning: a learned table per class (0-9) plus a null class (10) used as the unconditional branch for
CFG (trained with 10 % label dropout): ``context`` tokens (and for FLUX a ``pooled`` vector and the guidance
value). The tables are stored in the same safetensors file under ``conditioning.``.

Weights and a JSON record of how they were made: ``benchmarks/assets/<file>.{safetensors,json}``; FLUX is
trained by ``benchmarks/train_tiny_flux.py``, SD 1.5 and Wan by ``benchmarks/train_tiny_models.py``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
ASSET_DIR = REPO / "benchmarks" / "assets"
NUM_CLASSES = 10
NULL_CLASS = 10
COND_PREFIX = "conditioning."


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: str                     # class name in comfy.supported_models
    target: str                     # "module:Class[:ParamsDataclass]" of the diffusion model (kwarg filter)
    unet_config: dict
    stem: str                       # asset file name without suffix
    image_size: int                 # decoded frame side (pixels)
    unshuffle: int                  # pixel (un)shuffle factor
    frames: int = 0                 # 0: image model; > 0: frames per clip (video model)
    cond_tokens: int = 4
    context_dim: int = 64
    pooled_dim: int = 0             # > 0: a pooled_output table (FLUX)
    guidance: float | None = None   # FLUX-dev guidance value put into the conditioning
    trained_by: str = "benchmarks.train_tiny_models"
    description: str = ""

    @property
    def weights(self) -> Path:
        return ASSET_DIR / f"{self.stem}.safetensors"

    @property
    def metadata_path(self) -> Path:
        return ASSET_DIR / f"{self.stem}.json"

    @property
    def video(self) -> bool:
        return self.frames > 0

    @property
    def latent_shape(self) -> tuple:
        c = self.unshuffle ** 2
        s = self.image_size // self.unshuffle
        return (c, self.frames, s, s) if self.video else (c, s, s)

    @property
    def frame_shape(self) -> tuple:
        """Decoded grayscale shape of one sample: (H, W) or (F, H, W)."""
        s = (self.image_size, self.image_size)
        return (self.frames, *s) if self.video else s


FLUX_UNET = dict(
    image_model="flux", guidance_embed=True,
    in_channels=16, out_channels=16, patch_size=2, vec_in_dim=64, context_in_dim=64,
    hidden_size=128, mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=2,
    axes_dim=[8, 12, 12], theta=10000, qkv_bias=True,
    txt_ids_dims=[],            # only newer ComfyUI trees know it; filtered out elsewhere
)

SD15_UNET = dict(
    image_size=8, in_channels=4, out_channels=4, model_channels=64, channel_mult=[1, 2],
    num_res_blocks=[1, 1], attention_resolutions=[2], use_spatial_transformer=True, legacy=False,
    context_dim=64, transformer_depth=[0, 1], transformer_depth_output=[0, 0, 1, 1],
    transformer_depth_middle=1, use_linear_in_transformer=False, adm_in_channels=None,
    use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False,
)

WAN_UNET = dict(
    image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=4, in_dim=16, dim=128,
    ffn_dim=256, freq_dim=256, text_dim=64, out_dim=16, num_heads=4, num_layers=3, window_size=(-1, -1),
    qk_norm=True, cross_attn_norm=True, eps=1e-6,
)

SPECS = {
    "flux": ModelSpec("flux", "Flux", "comfy.ldm.flux.model:Flux:FluxParams", FLUX_UNET, "tiny_flux_digits",
                      image_size=32, unshuffle=4, pooled_dim=64, guidance=3.5,
                      trained_by="benchmarks.train_tiny_flux",
                      description="FLUX-dev class, rectified flow, hand-written digits"),
    "sd15": ModelSpec("sd15", "SD15", "comfy.ldm.modules.diffusionmodules.openaimodel:UNetModel", SD15_UNET,
                      "tiny_sd15_digits", image_size=16, unshuffle=2,
                      description="SD 1.5 U-Net class, epsilon prediction (VP, scaled-linear betas), digits"),
    "wan": ModelSpec("wan", "WAN21_T2V", "comfy.ldm.wan.model:WanModel", WAN_UNET, "tiny_wan_moving_digits",
                     image_size=32, unshuffle=4, frames=8,
                     description="Wan 2.1 T2V class, rectified flow, moving hand-written digits (8 frames)"),
}
NAMES = tuple(SPECS)


def spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown trained model {name!r}; one of {NAMES}") from None


# --------------------------------------------------------------------------------------------------
# Pixels <-> model space <-> LATENT
# --------------------------------------------------------------------------------------------------


def digits_to_pixels(images8, size: int) -> torch.Tensor:
    """sklearn digits (N, 8, 8) with values 0..16 -> (N, 1, size, size) grayscale in [0, 1] (bilinear)."""
    x = torch.as_tensor(images8, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0)


def pixels_to_model(s: ModelSpec, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) or video (N, F, H, W) in [0, 1] -> model space (N, C, h, w) / (N, C, F, h, w)."""
    x = pixels.float() * 2.0 - 1.0
    if not s.video:
        return F.pixel_unshuffle(x, s.unshuffle)
    n, f, h, w = x.shape
    y = F.pixel_unshuffle(x.reshape(n * f, 1, h, w), s.unshuffle)
    return y.reshape(n, f, *y.shape[1:]).transpose(1, 2).contiguous()


def model_to_pixels(s: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """Model space -> (N, 1, H, W) or (N, F, H, W) in [0, 1] (clamped)."""
    x = x.float()
    if s.video:
        n, c, f, h, w = x.shape
        y = F.pixel_shuffle(x.transpose(1, 2).reshape(n * f, c, h, w), s.unshuffle)
        x = y.reshape(n, f, *y.shape[2:])
    else:
        x = F.pixel_shuffle(x, s.unshuffle)
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def latent_format(s: ModelSpec):
    import comfy.supported_models as sm

    return getattr(sm, s.config).latent_format()


# --------------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------------


def unet_config(s: ModelSpec) -> dict:
    """The spec's unet_config filtered to the keys this ComfyUI's diffusion model class accepts."""
    import importlib

    mod, cls, *params = s.target.split(":")
    module = importlib.import_module(mod)
    klass = getattr(module, cls)
    sig = inspect.signature(klass.__init__).parameters
    names = {n for n, p in sig.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if params:
        names |= {f.name for f in dataclasses.fields(getattr(module, params[0]))}
    elif any(p.kind == p.VAR_KEYWORD for p in sig.values()):
        return dict(s.unet_config)
    return {k: v for k, v in s.unet_config.items() if k in names}


def build_model(s: ModelSpec | str, dtype: torch.dtype = torch.float32):
    """An untrained ``comfy.model_base`` model built through ``comfy.supported_models.<Config>``."""
    import comfy.supported_models as sm

    s = spec(s) if isinstance(s, str) else s
    cfg = getattr(sm, s.config)(unet_config(s))
    cfg.set_inference_dtype(dtype, None)
    return cfg.get_model({})


def split_state_dict(sd: dict) -> tuple[dict, dict]:
    """(diffusion_model state_dict, class tables {"context", ["pooled"]})."""
    model = {k: v for k, v in sd.items() if not k.startswith(COND_PREFIX)}
    cond = {k[len(COND_PREFIX):]: v for k, v in sd.items() if k.startswith(COND_PREFIX)}
    return model, cond


@dataclass
class Kit:
    """Conditioning and latent helpers that go with a loaded trained model."""

    spec: ModelSpec
    context: torch.Tensor                 # (11, tokens, context_dim)
    pooled: torch.Tensor | None = None    # (11, pooled_dim) (FLUX)
    metadata: dict = field(default_factory=dict)

    @property
    def guidance(self):
        return self.spec.guidance

    def conditioning(self, class_index: int, guidance: float | None = None) -> list:
        """CONDITIONING for digit ``class_index`` (0-9; 10 = null / unconditional)."""
        i = int(class_index)
        if not 0 <= i <= NULL_CLASS:
            raise ValueError(f"class_index must be 0..{NULL_CLASS} (got {class_index})")
        extra = {}
        if self.pooled is not None:
            extra["pooled_output"] = self.pooled[i:i + 1].clone()
        if self.spec.guidance is not None:
            extra["guidance"] = self.spec.guidance if guidance is None else float(guidance)
        return [[self.context[i:i + 1].clone(), extra]]

    def null_conditioning(self, guidance: float | None = None) -> list:
        return self.conditioning(NULL_CLASS, guidance)

    def empty_latent(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros((batch, *self.spec.latent_shape))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) / video (N, F, H, W) in [0, 1] -> LATENT samples."""
        return latent_format(self.spec).process_out(pixels_to_model(self.spec, pixels))

    def decode_gray(self, latent) -> torch.Tensor:
        """LATENT samples (tensor or {"samples": ...}) -> (N, H, W) or (N, F, H, W) in [0, 1]."""
        if isinstance(latent, dict):
            latent = latent["samples"]
        px = model_to_pixels(self.spec, latent_format(self.spec).process_in(latent.float()))
        return px[:, 0] if not self.spec.video else px

    def decode(self, latent) -> torch.Tensor:
        """LATENT -> ComfyUI IMAGE (N, H, W, 3) (video: frames flattened into the batch, N*F)."""
        g = self.decode_gray(latent)
        g = g.reshape(-1, *g.shape[-2:])
        return g.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()


def load_file(path) -> dict:
    from safetensors.torch import load_file as _load

    return _load(str(path))


def load_kit(name: str, path: Path | str | None = None) -> Kit:
    """The conditioning / latent helpers of ``name`` without building the model (class tables only)."""
    s = spec(name)
    path = Path(path or s.weights)
    cond = split_state_dict(load_file(path))[1]
    pooled = cond["pooled"].float() if "pooled" in cond else None
    mpath = path.with_suffix(".json")
    meta = json.loads(mpath.read_text()) if mpath.is_file() else {}
    return Kit(spec=s, context=cond["context"].float(), pooled=pooled, metadata=meta)


def load(name: str = "flux", dtype: torch.dtype = torch.float32, path: Path | str | None = None):
    """(ModelPatcher, Kit) for the committed trained weights of ``name`` ("flux", "sd15", "wan")."""
    import comfy.model_management
    import comfy.model_patcher

    s = spec(name)
    path = Path(path or s.weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: train it with `python -m {s.trained_by}`")
    model_sd, cond = split_state_dict(load_file(path))
    model = build_model(s, dtype)
    # ComfyUI's own key conversion for this model config (newer trees rename some keys)
    model_sd = model.model_config.process_unet_state_dict(model_sd)
    missing, unexpected = model.diffusion_model.load_state_dict(model_sd, strict=True)
    assert not missing and not unexpected
    model.diffusion_model.to(dtype)
    model.eval()
    dev = comfy.model_management.get_torch_device()
    offload = comfy.model_management.unet_offload_device()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=offload)
    return patcher, load_kit(name, path)
