"""Tiny random-weight instances of ComfyUI's own diffusion models, for CPU tests and demos.

Every family is built the way ComfyUI builds a real checkpoint (``comfy/sd.py``), minus the weights:

    cfg = comfy.supported_models.<Config>(unet_config)   # the real config class
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({})                             # the real comfy.model_base class
    ModelPatcher(model, load_device=cpu, offload_device=cpu)

ComfyUI creates layers with ``torch.empty`` and never initialises them, so :func:`build` fills every
parameter from a seeded ``torch.Generator``: ``randn * 0.02`` for ndim >= 2, ones for the weight/scale
of normalisation layers, zeros for every other 1-D parameter (biases).

    from devtools import runtime; runtime.activate(cpu=True)   # before anything imports comfy
    from devtools import tiny_models
    case = tiny_models.build("flux_dev")
    out = tiny_models.sample(case, steps=6, cfg=2.0)           # comfy.sample.sample, real sampler

Constructor keyword sets differ between ComfyUI versions; each unet_config is filtered against the
target class's signature (or its params dataclass), so the same recipes work on 0.3.75 and newer trees.
The weights are random, so outputs are meaningless images: test wiring (shapes, call counts,
determinism, cache on/off equality), not quality. With 0.02-scaled weights the text conditioning moves
the result only a little (cfg 1 vs 2 differs by ~1e-4..1e-1 mean abs), but never by exactly zero.
Each 6-step run takes ~0.01-0.1 s on one CPU thread; torch.set_num_threads(1) is much faster than the
default on a small shared machine (tiny matmuls lose to thread hand-offs).

dtype: float32, float16 and bfloat16 all build and sample on CPU for every available family
(weights stored in that dtype, no manual cast; ComfyUI's conditioning and latents stay float32).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

CPU = torch.device("cpu")
CTX = 32        # width of every tiny text embedding (context_dim / text_dim / caption_channels ...)
CTX_LEN = 8     # tokens per tiny prompt

# --------------------------------------------------------------------------------------------------
# Family table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySpec:
    name: str
    config: str                     # class name in comfy.supported_models
    target: str                     # "module:Class" or "module:Class:ParamsDataclass" (for kwarg filtering)
    unet_config: dict               # constructor kwargs (filtered against target before use)
    latent_shape: tuple             # batch 1
    cond: Callable                  # (generator, latent_shape) -> extras dict of one CONDITIONING entry
    ctx_len: int = CTX_LEN
    x_channels: int | None = None   # channels the diffusion model receives (concat models: > latent C)
    has_diffusion_model_wrapper: bool = True
    unavailable: str | None = None  # set when no tiny recipe exists even if the runtime has the class
    notes: str = ""
    # Further latent streams after the main one (shapes, batch first; the batch follows the main latent).
    # Non-empty: TinyCase.latent is a comfy.nested_tensor.NestedTensor([main, *extra]) -- what ComfyUI's
    # LTXVConcatAVLatent hands the sampler -- and sample() returns one too (ltx2: [video, audio]).
    extra_latents: tuple = ()


def _rand(g, *shape):
    return torch.randn(shape, generator=g)


def _pooled(dim=CTX):
    return lambda g, shape: {"pooled_output": _rand(g, 1, dim)}


def _flux_dev_cond(g, shape):
    return {"pooled_output": _rand(g, 1, CTX), "guidance": 3.5}


def _hunyuan_cond(g, shape):
    return {"pooled_output": _rand(g, 1, CTX), "guidance": 6.0}


def _ltxv_cond(g, shape):
    return {"attention_mask": torch.ones(1, CTX_LEN, dtype=torch.long), "frame_rate": 25}


def _ltx2_cond(g, shape):
    # As comfy.text_encoders.lt (LTX-2 TE) emits it: raw per-token embeddings, no attention mask;
    # model_base.LTXAV.extra_conds runs them through the model's own text connectors.
    return {"unprocessed_ltxav_embeds": True, "frame_rate": 25}


def _no_extras(g, shape):
    return {}


def _chroma_cond(g, shape):
    # Flux.encode_adm reads kwargs["pooled_output"]; T5-only encoders (Chroma) hand ComfyUI a None there.
    return {"pooled_output": None}


def _wan_i2v_cond(g, shape):
    b, c, t, h, w = shape
    mask = torch.ones(1, 1, t, h, w)
    mask[:, :, :1] = 0.0            # as WanImageToVideo: first frame is the given image
    return {"concat_latent_image": _rand(g, b, c, t, h, w), "concat_mask": mask}


def _sdxl_cond(g, shape):
    return {"pooled_output": _rand(g, 1, CTX), "width": 64, "height": 64,
            "crop_w": 0, "crop_h": 0, "target_width": 64, "target_height": 64}


_FLUX = dict(in_channels=16, out_channels=16, vec_in_dim=CTX, context_in_dim=CTX, hidden_size=64,
             mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000,
             patch_size=2, qkv_bias=True, txt_ids_dims=[])   # txt_ids_dims: required on newer trees only

_WAN = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=CTX_LEN, in_dim=16,
            dim=64, ffn_dim=128, freq_dim=256, text_dim=CTX, out_dim=16, num_heads=2, num_layers=1,
            window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)

_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 2],
             num_res_blocks=[1, 1], use_spatial_transformer=True, legacy=False, context_dim=CTX,
             transformer_depth_middle=1, use_checkpoint=False, use_temporal_attention=False,
             use_temporal_resblock=False)

_SPECS = [
    FamilySpec("flux_dev", "Flux", "comfy.ldm.flux.model:Flux:FluxParams",
               dict(_FLUX, image_model="flux", guidance_embed=True), (1, 16, 8, 8), _flux_dev_cond,
               notes="cond: pooled_output (y), guidance 3.5"),
    FamilySpec("flux_schnell", "FluxSchnell", "comfy.ldm.flux.model:Flux:FluxParams",
               dict(_FLUX, image_model="flux", guidance_embed=False), (1, 16, 8, 8), _pooled(),
               notes="cond: pooled_output; no guidance embedding"),
    FamilySpec("hunyuan_video", "HunyuanVideo", "comfy.ldm.hunyuan_video.model:HunyuanVideo:HunyuanVideoParams",
               dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=CTX,
                    context_in_dim=CTX, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1,
                    depth_single_blocks=1, axes_dim=[8, 12, 12], theta=256, patch_size=[1, 2, 2],
                    qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
                    use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False),
               (1, 16, 3, 8, 8), _hunyuan_cond, notes="cond: pooled_output (required), guidance 6.0"),
    FamilySpec("ltxv", "LTXV", "comfy.ldm.lightricks.model:LTXVModel",
               dict(image_model="ltxv", in_channels=128, cross_attention_dim=64, attention_head_dim=32,
                    num_attention_heads=2, caption_channels=CTX, num_layers=1),
               (1, 128, 2, 4, 4), _ltxv_cond, notes="cond: attention_mask (positional arg), frame_rate"),
    FamilySpec("wan21_t2v", "WAN21_T2V", "comfy.ldm.wan.model:WanModel", dict(_WAN),
               (1, 16, 3, 8, 8), _no_extras, notes="cond: cross_attn only"),
    FamilySpec("wan21_i2v", "WAN21_I2V", "comfy.ldm.wan.model:WanModel",
               dict(_WAN, model_type="i2v", in_dim=36), (1, 16, 3, 8, 8), _wan_i2v_cond, x_channels=36,
               notes="cond: concat_latent_image (16 ch) + concat_mask; WAN21.concat_cond adds 4 mask + 16 "
                     "image channels -> the model sees 36 (zero-filled if the keys are absent)"),
    FamilySpec("wan22_ti2v", "WAN22_T2V", "comfy.ldm.wan.model:WanModel",
               dict(_WAN, in_dim=48, out_dim=48), (1, 48, 3, 8, 8), _no_extras,
               notes="TI2V-5B layout: 48-ch Wan22 latent, model_base.WAN22 (per-token timesteps only with a "
                     "noise_mask)"),
    FamilySpec("sd3", "SD3", "comfy.ldm.modules.diffusionmodules.mmdit:MMDiT",
               dict(in_channels=16, out_channels=16, patch_size=2, depth=1, adm_in_channels=CTX,
                    pos_embed_scaling_factor=None, pos_embed_max_size=None, num_patches=None,
                    context_embedder_config={"target": "torch.nn.Linear",
                                             "params": {"in_features": CTX, "out_features": 64}}),
               (1, 16, 8, 8), _pooled(), has_diffusion_model_wrapper=False,
               notes="MMDiT hidden = 64*depth; sin-cos pos-embed (no pos_embed buffer); cond: pooled_output; "
                     "no DIFFUSION_MODEL wrapper -> use APPLY_MODEL"),
    FamilySpec("sd15", "SD15", "comfy.ldm.modules.diffusionmodules.openaimodel:UNetModel",
               dict(_UNET, adm_in_channels=None, use_linear_in_transformer=False, transformer_depth=[1, 1],
                    transformer_depth_output=[1, 1, 1, 1]),
               (1, 4, 8, 8), _no_extras,
               notes="UNet 32/64 ch, 2 levels, 8 heads (forced by SD15.unet_extra_config); EPS"),
    FamilySpec("sdxl", "SDXL", "comfy.ldm.modules.diffusionmodules.openaimodel:UNetModel",
               dict(_UNET, num_classes="sequential", adm_in_channels=CTX + 6 * 256,
                    use_linear_in_transformer=True, transformer_depth=[0, 1],
                    transformer_depth_output=[0, 0, 1, 1]),
               (1, 4, 8, 8), _sdxl_cond,
               notes="adm = pooled (32) + 6 size embeddings x 256; attention only at 64 ch (head dim 64); EPS"),
    FamilySpec("chroma", "Chroma", "comfy.ldm.chroma.model:Chroma:ChromaParams",
               dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=CTX, hidden_size=64,
                    mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
                    theta=10000, patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32,
                    n_layers=1, txt_ids_dims=[], vec_in_dim=CTX),   # last two: required on newer trees
               (1, 16, 8, 8), _chroma_cond,
               notes="in/out_channels are post-patchify (16*2*2); cond: pooled_output=None (T5 only)"),
    FamilySpec("qwen_image", "QwenImage", "comfy.ldm.qwen_image.model:QwenImageTransformer2DModel",
               dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=1,
                    attention_head_dim=32, num_attention_heads=2, joint_attention_dim=CTX,
                    pooled_projection_dim=CTX, axes_dims_rope=(8, 12, 12)),
               (1, 16, 1, 8, 8), _no_extras,
               notes="5-D latent (B,16,1,H,W): Wan21 latent format, 3 latent dims"),
    FamilySpec("lumina2", "Lumina2", "comfy.ldm.lumina.model:NextDiT",
               dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, n_layers=1,
                    n_refiner_layers=1, n_heads=2, n_kv_heads=2, multiple_of=16, ffn_dim_multiplier=1.0,
                    norm_eps=1e-5, qk_norm=True, cap_feat_dim=CTX, axes_dims=[8, 12, 12],
                    axes_lens=[16, 64, 64]),
               (1, 16, 8, 8), _no_extras, notes="cond: cross_attn (num_tokens derived from it)"),
    FamilySpec("cogvideox", "CogVideoX_T2V", "comfy.ldm.cogvideo.model:CogVideoXTransformer3DModel",
               dict(image_model="cogvideox", num_attention_heads=2, attention_head_dim=32, in_channels=16,
                    out_channels=16, time_embed_dim=64, text_embed_dim=CTX, num_layers=1, sample_width=8,
                    sample_height=8, sample_frames=9, patch_size=2, max_text_seq_length=CTX_LEN,
                    use_rotary_positional_embeddings=True),
               (1, 16, 3, 8, 8), _no_extras,
               notes="ComfyUI >= 0.21; V_PREDICTION_DDPM (zsnr) -> flow=False"),
    FamilySpec("ltx2", "LTXAV", "comfy.ldm.lightricks.av_model:LTXAVModel",
               dict(image_model="ltxav", in_channels=128, audio_in_channels=128, num_layers=1,
                    num_attention_heads=2, attention_head_dim=32, cross_attention_dim=64,
                    audio_num_attention_heads=2, audio_attention_head_dim=16, audio_cross_attention_dim=32,
                    caption_channels=CTX, connector_num_attention_heads=2, connector_attention_head_dim=16,
                    connector_num_layers=1, rope_type="split", frequencies_precision="float64"),
               (1, 128, 2, 4, 4), _ltx2_cond, extra_latents=((1, 8, 4, 16),),
               notes="LTX-2 audio+video. latent: NestedTensor([video (1,128,2,4,4), audio (1,8,4,16)]); the "
                     "sampler packs it to (B,1,N) (APPLY_MODEL sees that), the DIFFUSION_MODEL gets x = "
                     "[video, audio] and returns [video, audio]. Audio is 8 ch x 16 freq bins (fixed in "
                     "LTXAVModel) -> audio_in_channels 128. Video 2x32=64 wide (= cross_attention_dim), audio "
                     "2x16=32 (= audio_cross_attention_dim); the two text connectors (connector_* kwargs, "
                     "passed through **kwargs) are 2x16=32 = caption_channels wide, 1 layer. cond: raw text "
                     "embeddings + unprocessed_ltxav_embeds=True + frame_rate (no attention mask): "
                     "extra_conds runs the connectors once per sampling call; they pad to 1024 tokens with "
                     "learnable registers -> c_crossattn (1,1024,64) = [video 32 | audio 32]. So the 8 prompt "
                     "tokens are 8 of 1024: cfg 1 vs 2 differs by only ~1e-7..1e-6 mean abs (never 0). "
                     "~0.2-0.35 s per 6-step run (cross-attention over 1024 text tokens). latent_shape= in "
                     "build() sets the video stream; the audio stream follows its batch"),
]

FAMILIES: dict[str, FamilySpec] = {s.name: s for s in _SPECS}


def available(name: str) -> tuple[bool, str]:
    """(True, "") when ``build(name)`` works in this ComfyUI runtime, else (False, reason)."""
    import comfy.supported_models as sm

    spec = FAMILIES[name]
    if not hasattr(sm, spec.config):
        return False, f"comfy.supported_models.{spec.config} is not in this ComfyUI runtime ({_version()})"
    if spec.unavailable:
        return False, spec.unavailable
    return True, ""


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


@dataclass
class TinyCase:
    name: str
    patcher: "comfy.model_patcher.ModelPatcher"  # noqa: F821
    latent: torch.Tensor                      # zeros, batch 1, float32 (NestedTensor: spec.extra_latents)
    positive: Callable[[int], list]           # seed -> CONDITIONING [[cross_attn, extras]]
    negative: Callable[[int], list]
    flow: bool                                # FLOW/CONST sampling (True) or VP eps/v (False)
    has_diffusion_model_wrapper: bool         # False: DIFFUSION_MODEL wrappers never fire (sd3)
    seed: int = 0                             # build seed; default conditioning seed in sample()
    spec: FamilySpec | None = field(default=None, repr=False)


def _version() -> str:
    try:
        import comfyui_version

        return f"ComfyUI {comfyui_version.__version__}"
    except Exception:
        return "ComfyUI version unknown"


def _target(spec: FamilySpec):
    mod, cls, *params = spec.target.split(":")
    module = importlib.import_module(mod)
    return getattr(module, cls), (getattr(module, params[0]) if params else None)


def _filter_kwargs(cfg: dict, cls, params_dc=None) -> dict:
    """Keep only the keys the constructor (or its params dataclass) knows in this ComfyUI version."""
    sig = inspect.signature(cls.__init__).parameters
    names = {n for n, p in sig.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if params_dc is not None:       # Flux-style: explicit args + Params(**kwargs)
        names |= {f.name for f in dataclasses.fields(params_dc)}
    elif any(p.kind == p.VAR_KEYWORD for p in sig.values()):
        return dict(cfg)            # **kwargs swallows unknown keys (LTXVModel)
    return {k: v for k, v in cfg.items() if k in names}


def init_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """randn*0.02 for ndim >= 2; ones for norm weights/scales; zeros for other 1-D params (deterministic)."""
    with torch.no_grad():
        for mod in module.modules():
            is_norm = "norm" in type(mod).__name__.lower()
            for pname, p in mod.named_parameters(recurse=False):
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
                elif is_norm and pname in ("weight", "scale"):
                    p.fill_(1.0)
                else:
                    p.zero_()


def _conditioning(spec: FamilySpec, shape: tuple, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    cross_attn = torch.randn((1, spec.ctx_len, CTX), generator=g)
    return [[cross_attn, spec.cond(g, shape)]]


def conditioning(name: str, seed: int) -> list:
    """Random CONDITIONING matching family ``name`` (the stream TinyCase.positive draws from)."""
    spec = FAMILIES[name]
    return _conditioning(spec, spec.latent_shape, seed)


def _zeros_latent(spec: FamilySpec, shape: tuple):
    """torch.zeros(shape), or a comfy NestedTensor [main, *extra streams] for multi-stream families."""
    if not spec.extra_latents:
        return torch.zeros(shape)
    import comfy.nested_tensor

    return comfy.nested_tensor.NestedTensor([torch.zeros(shape)] +
                                            [torch.zeros((shape[0],) + tuple(s[1:])) for s in spec.extra_latents])


def streams(latent) -> list:
    """The tensors of a latent: [latent] for a tensor, [video, audio, ...] for a NestedTensor (ltx2)."""
    return list(latent.unbind()) if getattr(latent, "is_nested", False) else [latent]


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, overrides: dict | None = None,
          latent_shape: tuple | None = None) -> TinyCase:
    """A tiny random-weight ComfyUI model of family ``name`` wrapped in a CPU ModelPatcher.

    ``overrides`` change constructor parameters (e.g. a larger hidden size for speed benchmarks);
    ``latent_shape`` changes the latent (batch first; the first stream of a NestedTensor latent, the other
    streams take its batch size)."""
    ok, reason = available(name)
    if not ok:
        raise RuntimeError(f"tiny model family {name!r} unavailable: {reason}")
    import comfy.model_patcher
    import comfy.model_sampling
    import comfy.supported_models as sm

    spec = FAMILIES[name]
    cls, params_dc = _target(spec)
    cfg = getattr(sm, spec.config)(_filter_kwargs({**spec.unet_config, **(overrides or {})}, cls, params_dc))
    cfg.set_inference_dtype(dtype, None)
    model = cfg.get_model({})
    init_weights(model.diffusion_model, torch.Generator().manual_seed(seed))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)

    shape = tuple(latent_shape or spec.latent_shape)
    # Conditioning streams: positive(s) and negative(s) never coincide (2s vs 2s+1).
    return TinyCase(
        name=name,
        patcher=patcher,
        latent=_zeros_latent(spec, shape),
        positive=lambda s: _conditioning(spec, shape, 2 * s),
        negative=lambda s: _conditioning(spec, shape, 2 * s + 1),
        flow=isinstance(model.model_sampling, comfy.model_sampling.CONST),
        has_diffusion_model_wrapper=spec.has_diffusion_model_wrapper,
        seed=seed,
        spec=spec,
    )


def sample(case: TinyCase, steps: int = 6, cfg: float = 2.0, sampler: str = "euler", scheduler: str = "simple",
           seed: int = 0, denoise: float = 1.0, latent: torch.Tensor | None = None, positive: list | None = None,
           negative: list | None = None, patcher=None, **kw) -> torch.Tensor:
    """One run of ComfyUI's real sampler (``comfy.sample.sample``) on ``case``.

    ``seed`` seeds the noise (``comfy.sample.prepare_noise``); the default conditioning is
    ``case.positive(case.seed)`` / ``case.negative(case.seed)``, fixed per case like a prompt.
    ``patcher`` overrides ``case.patcher`` (e.g. a clone carrying wrappers); ``**kw`` goes to
    ``comfy.sample.sample`` (sigmas=, callback=, noise_mask=, start_step=, ...).
    """
    import comfy.sample

    latent = case.latent if latent is None else latent
    positive = case.positive(case.seed) if positive is None else positive
    negative = case.negative(case.seed) if negative is None else negative
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher or case.patcher, noise, steps, cfg, sampler, scheduler, positive, negative,
                               latent, denoise=denoise, disable_pbar=True, seed=seed, **kw)
