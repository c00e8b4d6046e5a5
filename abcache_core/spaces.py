"""Spaces of extrapolation: the model's raw output, or its noise estimate ε recombined with the current input.

A skipped call can be predicted in two spaces (docs/DESIGN.md, "Extrapolator by gap"):

* **output** -- extrapolate the tensor the model returned, y, as is (what the paper and today's rule do);
* **noise**  -- extrapolate the model's noise estimate ε, computed exactly from (y, x, σ) at each computed
  call, then turn ε̂ back into an output *with the current input x*. The skipped call's own latent enters
  the prediction (input-aware, like EasyCache's x + Δ, without a stale difference), and ε, the part of the
  output that changes slowly along the trajectory, is what is extrapolated.

One :class:`NoiseMap` per parameterisation, exact in both directions (``to_noise(from_noise(e)) == e``).
``x`` is the tensor the wrapped function received: at ComfyUI's DIFFUSION_MODEL level the scaled model input
``calculate_input(σ, x)``, at the APPLY_MODEL level the sampler's latent (variance-exploding units for VP
models, ``(1 − σ) x0 + σ ε`` for flow models).

* ``flow`` (ComfyUI ``CONST``: FLUX, SD3, Wan, HunyuanVideo, LTX). Output v = ε − x0 and x = (1 − σ) x0 + σ ε,
  so ε = x + (1 − σ) v and v = (ε − x) / (1 − σ). Also the APPLY_MODEL level's d = (x − D)/σ of a flow model,
  which equals v. Not invertible at σ = 1 (pure noise): there :meth:`NoiseMap.usable` is False.
* ``eps`` (EPS: SD 1.x/2.x-base, SDXL; and the APPLY_MODEL level's d = (x − D)/σ of every VP model): the
  output already is ε.
* ``v`` (V_PREDICTION with σ_data, e.g. SD 2.x-v): input x_c = x / r with r = √(σ² + σ_d²), output v with
  D = x σ_d²/r² − v σ σ_d / r, so ε = (x − D)/σ = (σ x_c + σ_d v) / r and v = (r ε − σ x_c) / σ_d.
* ``v_ddpm`` (CogVideoX's V_PREDICTION_DDPM): unscaled input x, D = (x − σ v) / r with r = √(σ² + 1), so
  ε = x (r − 1)/(σ r) + v / r and v = r ε − x (r − 1)/σ.
* ``eps_latent`` (the APPLY_MODEL level's d = (x − D)/σ of a VP model, x the sampler's latent): d is ε, like
  ``eps``; only the data estimate below tells the two apart.

**data** -- samplers that add fresh noise at every step (ancestral, SDE, LCM, DDPM) change the latent by a
random amount between calls. The model's noise estimate takes that noise in (ε jumps from step to step), its
data estimate D (the x0 it predicts) does not. For those samplers the data estimate is extrapolated instead
(policy.extrapolation_rule) and recombined with the current input the same way: :meth:`NoiseMap.to_data` and
:meth:`NoiseMap.from_data` are exact, from D = x − σ v (flow) and x_VE = D + σ ε (VP, x_VE the sampler's
latent: the model input times √(σ² + 1) for ``eps``, times √(σ² + σ_d²) for ``v``, the input itself for
``v_ddpm`` and ``eps_latent``).

Pure torch; never imports ComfyUI.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

from .exposure import FLOW_GUARD

SPACES = ("output", "noise", "data")


@dataclasses.dataclass(frozen=True)
class NoiseMap:
    """Exact conversions between a model's output y and its noise estimate ε, or its data estimate D, at (x, σ)."""

    kind: str                 # flow | eps | v | v_ddpm | eps_latent
    sigma_data: float = 1.0   # v: the model sampling's σ_d

    def usable(self, sigma: float, space: str = "noise") -> bool:
        """Whether the estimate in ``space`` (noise or data) and y determine each other at this σ (the flow
        noise map divides by 1 − σ, the data maps by σ)."""
        if not (sigma > 0 and math.isfinite(sigma)):
            return False
        return space == "data" or not (self.kind == "flow" and 1.0 - sigma < FLOW_GUARD)

    def to_noise(self, y: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        y, x, s = _work(y), _work(x), float(sigma)
        if self.kind == "flow":
            return x + (1.0 - s) * y
        if self.kind in ("eps", "eps_latent"):
            return y
        if self.kind == "v":
            sd = self.sigma_data
            return (s * x + sd * y) / math.sqrt(s * s + sd * sd)
        if self.kind == "v_ddpm":
            r = math.sqrt(s * s + 1.0)
            return x * ((r - 1.0) / (s * r)) + y / r
        raise ValueError(f"unknown noise map {self.kind!r}")

    def from_noise(self, eps: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        eps, x, s = _work(eps), _work(x), float(sigma)
        if self.kind == "flow":
            return (eps - x) / (1.0 - s)
        if self.kind in ("eps", "eps_latent"):
            return eps
        if self.kind == "v":
            sd = self.sigma_data
            return (math.sqrt(s * s + sd * sd) * eps - s * x) / sd
        if self.kind == "v_ddpm":
            r = math.sqrt(s * s + 1.0)
            return r * eps - x * ((r - 1.0) / s)
        raise ValueError(f"unknown noise map {self.kind!r}")

    def _latent_scale(self, sigma: float) -> float:
        """VP kinds: the sampler's latent x_VE = D + σ ε over the input x this map receives."""
        if self.kind == "eps":
            return math.sqrt(sigma * sigma + 1.0)
        if self.kind == "v":
            return math.sqrt(sigma * sigma + self.sigma_data * self.sigma_data)
        if self.kind in ("v_ddpm", "eps_latent"):
            return 1.0
        raise ValueError(f"unknown noise map {self.kind!r}")

    def to_data(self, y: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The data estimate D of output ``y`` at input ``x`` and ``sigma`` (flow: D = x − σ v, defined at σ = 1
        too; VP: D = x_VE − σ ε)."""
        if self.kind == "flow":
            y, x, s = _work(y), _work(x), float(sigma)
            return x - s * y
        s = float(sigma)
        return _work(x) * self._latent_scale(s) - s * self.to_noise(y, x, s)

    def from_data(self, data: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The output whose data estimate at input ``x`` and ``sigma`` (> 0) is ``data``."""
        data, x, s = _work(data), _work(x), float(sigma)
        if self.kind == "flow":
            return (x - data) / s
        return self.from_noise((x * self._latent_scale(s) - data) / s, x, s)


def _work(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))   # fp16/bf16 -> fp32, fp64 stays fp64


def noise_map(kind: Optional[str], sigma_data: float = 1.0) -> Optional[NoiseMap]:
    """The map for a parameterisation name (None: no exact map known, so only the output space is used)."""
    return None if kind is None else NoiseMap(kind, float(sigma_data))
