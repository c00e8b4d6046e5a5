"""Exposure-bias compensation (EB-Cache's constant noise scaling), on the denoised output of a model call.

EB-Cache (arXiv 2503.07120, ``aSleepyTree/EB-Cache``) divides the predicted noise by a constant δ before
the sampler step: ``model_output = model_output / delta`` with δ = 0.965 for DiT-XL/2 at 50 DDPM steps
(δ < 1 *enlarges* ε by 1/δ ≈ 1.036). Caching makes intermediate states "too clean" (a higher SNR than
the sampler expects, i.e. more exposure bias); a larger ε removes a little more noise estimate from x and
gives a data prediction that sits further from x, which pulls the trajectory back.

ComfyUI samplers see every model as ``(x, σ) -> D`` (the denoised estimate); here the rescale is written on
D, so it works for every parameterisation, at the ``APPLY_MODEL`` level, and is exact for the identity:

**VP / ε-type models** (EPS, V_PREDICTION, EDM, X0, CogVideoX's V_PREDICTION_DDPM, ...). k-diffusion
samplers work in variance-exploding units, ``x = x0 + σ ε``, so

    ε  = (x − D) / σ,      ε' = ε / δ,      D' = x − σ ε' = x − (x − D) / δ.

σ cancels in the last form, so it is safe down to σ → 0. Where σ ≤ 0 there is no noise and D is kept.
This is EB-Cache's rule: its ``x̂0 = (x_t − √(1−ᾱ_t) ε/δ) / √ᾱ_t`` is the same map written in VP units
(x_t = √ᾱ_t x, σ = √(1−ᾱ_t)/√ᾱ_t).

**Flow models** (ComfyUI's ``CONST``: FLUX, SD3, Wan, HunyuanVideo, LTX, ...). ``x = (1 − σ) x0 + σ ε``
and D = x0, so

    ε  = (x − (1 − σ) D) / σ,   ε' = ε / δ,   D' = (x − σ ε') / (1 − σ)
                                                = (x − (x − (1 − σ) D) / δ) / (1 − σ).

The velocity the sampler takes, v = (x − D)/σ = ε − x0, changes accordingly. As σ → 1 the map divides by
(1 − σ) (D' − D = (1 − 1/δ)(x − (1 − σ) D)/(1 − σ) grows without bound while x is almost pure noise), so
the rescale is skipped where ``1 − σ < FLOW_GUARD`` (= 1e-3), and where σ ≤ 0.

In both cases the noisy input x is held fixed and the (x0, ε) pair is re-solved with ε scaled by 1/δ, which
is what EB-Cache does inside its DDPM step. δ = 1 returns D itself (the same tensor): bit-identical.

Pure torch; never imports ComfyUI.
"""
from __future__ import annotations

import math
from typing import Union

import torch

FLOW_GUARD = 1e-3          # flow models: no rescale where 1 - sigma < FLOW_GUARD

SigmaLike = Union[float, torch.Tensor]


def _sigma_like(sigma: SigmaLike, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sigma as a tensor broadcastable against ``like`` (scalar, or one value per batch element)."""
    s = torch.as_tensor(sigma, device=like.device, dtype=dtype)
    if s.ndim == 0 or s.numel() == 1:
        return s.reshape([1] * like.ndim)
    if s.numel() != like.shape[0]:
        raise ValueError(f"sigma has {s.numel()} values but the batch has {like.shape[0]} entries")
    return s.reshape([-1] + [1] * (like.ndim - 1))


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays fp64


def epsilon_from_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: SigmaLike, flow: bool) -> torch.Tensor:
    """The noise estimate ε implied by (x, σ, D): (x − D)/σ (VP) or (x − (1−σ) D)/σ (flow); needs σ > 0."""
    w = _work_dtype(denoised)
    s = _sigma_like(sigma, denoised, w)
    x, d = x.to(w), denoised.to(w)
    return (x - d) / s if not flow else (x - (1.0 - s) * d) / s


def denoised_from_epsilon(x: torch.Tensor, eps: torch.Tensor, sigma: SigmaLike, flow: bool) -> torch.Tensor:
    """Inverse of :func:`epsilon_from_denoised` at fixed x: x − σ ε (VP) or (x − σ ε)/(1 − σ) (flow)."""
    w = _work_dtype(eps)
    s = _sigma_like(sigma, eps, w)
    x, e = x.to(w), eps.to(w)
    return x - s * e if not flow else (x - s * e) / (1.0 - s)


def rescale_denoised(x: torch.Tensor, denoised: torch.Tensor, sigma: SigmaLike, delta: float,
                     flow: bool) -> torch.Tensor:
    """D' with ε' = ε / δ at fixed x (see the module docstring). Returns ``denoised`` itself when δ == 1.

    x, denoised: same shape, batch first. sigma: a number or one value per batch element. The result has
    the dtype of ``denoised`` (computed in float32 or wider); entries with σ ≤ 0, or 1 − σ < FLOW_GUARD for
    flow models, are returned unchanged.
    """
    delta = float(delta)
    if not (delta > 0.0 and math.isfinite(delta)):
        raise ValueError(f"exposure delta must be a finite number > 0, got {delta}")
    if delta == 1.0:
        return denoised
    if x.shape != denoised.shape:
        raise ValueError(f"x {tuple(x.shape)} and denoised {tuple(denoised.shape)} must have the same shape")
    w = _work_dtype(denoised)
    s = _sigma_like(sigma, denoised, w)
    xw, d = x.to(w), denoised.to(w)
    inv = 1.0 / delta
    if flow:
        keep = (s <= 0) | ((1.0 - s) < FLOW_GUARD)
        one_minus = torch.where(keep, torch.ones_like(s), 1.0 - s)
        out = (xw - (xw - one_minus * d) * inv) / one_minus
    else:
        keep = s <= 0
        out = xw - (xw - d) * inv
    out = torch.where(keep, d, out)
    return out.to(denoised.dtype)
