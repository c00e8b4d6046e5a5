"""Every user-facing parameter of AB-Cache in one table: name, kind, default, range, choices, tooltip.

This table is the single home of each default and range. :class:`abcache_core.policy.CacheSettings` takes
its field defaults from it, the ComfyUI nodes build their input schemas from it, and the harness, the
workflow builder, the benchmarks and the tests read their defaults from it. A node that shows a parameter
with a different default *on purpose* says so by name (for example ``BLOCK_NODE_DEFAULTS`` in the FLUX
blocks node); nothing else restates a default.

``check`` applies a parameter's own range and choices (the checks ComfyUI makes for a widget); cross-checks
between parameters live in :meth:`CacheSettings.validate`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

MAX_ORDER = 5          # the core's limit (weights are defined up to this order)
NODE_MAX_ORDER = 4     # what the nodes offer: order 5 amplifies noise too much to be useful

MODES = ("fixed", "adaptive", "table", "paper", "even")   # append only: saved workflows store the name
COORDINATES = ("auto", "sigma", "lambda", "step", "time")   # append only
CACHE_DEVICES = ("same", "cpu")
EXPOSURE_APPLY = ("extrapolated", "all")
EXTRAPOLATORS = ("noise", "output", "noise_lsq")
NOISE_INJECTED_SPACES = ("data", "noise")
MULTI_CALL_PLANS = ("per_call", "per_step")
DEFERRED_CORRECTIONS = ("auto", "off")
EB_CACHE_DELTA = 0.965     # EB-Cache's published δ (DiT-XL/2, 50 DDPM steps, cfg 1.5)


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str                      # "int" | "float" | "choice" | "text" | "bool"
    default: Any
    tooltip: str
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    choices: tuple = ()

    def check(self, value) -> Any:
        """``value`` converted to this parameter's kind, or ValueError with an actionable message."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {self.choices}, got {value!r}")
            return value
        if self.kind == "text":
            return "" if value is None else str(value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} must be true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{self.name} must be a number, got {value!r}")
        if self.kind == "int":
            if not isinstance(value, int):
                raise ValueError(f"{self.name} must be a whole number, got {value!r}")
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{self.name} must be a finite number, got {value!r}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise ValueError(f"{self.name} must lie in [{_fmt(self.min)}, {_fmt(self.max)}], got {value!r}")
        return value


def _fmt(v) -> str:
    return "-inf" if v is None else f"{v:g}"


_TABLE = (
    Param("order", "int", 2, min=1, max=MAX_ORDER, step=1, tooltip=(
        "How many computed steps each skipped step is extrapolated from. 1 = reuse the last output (what other "
        "caches do); 2 = linear; 3-4 = higher order (more accurate on smooth schedules, more sensitive to "
        "noise).")),
    Param("interval", "int", 4, min=1, max=20, step=1, tooltip=(
        "Fixed schedule (speed 0, or mode fixed): after warm-up, run the model on every N-th step and extrapolate "
        "the steps in between. 1 = no skipping; 4 = about 3x fewer model calls at 50 steps.")),
    Param("warmup", "int", 3, min=0, max=200, step=1, tooltip=(
        "Fixed schedule (speed 0, or mode fixed): number of first steps that always run the model (the early, "
        "high-noise steps change fastest).")),
    Param("mode", "choice", "even", choices=MODES, tooltip=(
        "even: run the model on the first and the last step and on steps spread between (closer together where "
        "the schedule's steps are longer or the sampler leans on a step's output more), as many as 'speed' allows (no warm-up). fixed: the first warm-up "
        "steps, then every interval-th step. adaptive: skip while the built-in error estimate stays under the "
        "tolerance. table: follow the per-step mask in 'table'. paper: the AB-Cache paper's exact rule (compute "
        "when step < warmup or step % interval == 0, binomial weights; set final_steps to 0 for the official "
        "schedule).")),
    Param("coordinate", "choice", "auto", choices=COORDINATES, tooltip=(
        "Axis on which the extrapolation weights are computed. auto = sigma for flow models (FLUX, Wan, "
        "HunyuanVideo, LTX); for VP models (SD, CogVideoX) flow time in mode even (the speed input) and "
        "lambda = -log(sigma) in the other modes. time = flow time sigma/(1+sigma) (sigma for flow models); "
        "step = step index (ignores the real spacing).")),
    Param("tolerance", "float", 0.01, min=0.0, max=10.0, step=0.001, tooltip=(
        "adaptive mode: error budget accumulated over skipped steps before the model must run again. Smaller = "
        "higher fidelity, fewer skips.")),
    Param("max_skips", "int", 3, min=0, max=50, step=1, tooltip=(
        "adaptive mode: the most consecutive steps that may be skipped.")),
    Param("start_percent", "float", 0.0, min=0.0, max=1.0, step=0.01, tooltip=(
        "Skipping is allowed only from this fraction of the steps on (0 = from the first step).")),
    Param("end_percent", "float", 1.0, min=0.0, max=1.0, step=0.01, tooltip=(
        "Skipping stops at this fraction of the steps (1 = until the end).")),
    Param("final_steps", "int", 1, min=0, max=50, step=1, tooltip=(
        "Number of last steps that always run the model (they set the fine detail).")),
    Param("table", "text", "", tooltip=(
        "table mode: one character per step, F or 1 = run the model, s, 0 or 2 = extrapolate, e.g. "
        "'FFFFFsFsFsF' (EB-Cache's 'a', reuse attention only, runs the model here). 'eb50' = EB-Cache's "
        "published 50-step table (34 of 50 steps run). A table written for another step count is derived for "
        "the schedule: first and last step run, same fraction of steps run, same density along the schedule.")),
    Param("cache_device", "choice", "same", choices=CACHE_DEVICES, tooltip=(
        "Where the cached outputs are kept: 'same' as the model (fastest) or 'cpu' (saves GPU memory on long "
        "videos).")),
    Param("verbose", "bool", False, tooltip="Log one line per model call (computed or extrapolated) to the console."),
    Param("exposure_delta", "float", 1.0, min=0.8, max=1.2, step=0.001, tooltip=(
        "Exposure-bias compensation (EB-Cache): the model's noise estimate is divided by this value, in the "
        "right space for flow and for eps/v models, so 0.965 enlarges it by 3.6% (EB-Cache's value for 50-step "
        "DiT). Counters the over-clean intermediate states that skipped steps cause. 1 = off (bit-identical).")),
    Param("exposure_apply", "choice", "extrapolated", choices=EXPOSURE_APPLY, tooltip=(
        "Where exposure_delta applies: 'extrapolated' = only on steps whose output was extrapolated; 'all' = on "
        "every model call (as EB-Cache does).")),
    Param("compute_blocks", "int", 1, min=0, max=200, step=1, tooltip=(
        "Blocks (in execution order: the double-stream blocks, then the single-stream blocks; FLUX.1 has "
        "19 + 38) that run on every step. The later blocks reuse or extrapolate their cached residual on "
        "skipped steps. 0 = reuse every block on skipped steps.")),
    Param("speed", "float", 3.0, min=0.0, max=10.0, step=0.25, tooltip=(
        "How many times fewer model calls to make: 3 = one call in three (about 3x faster), spread over the "
        "steps (closer together where the schedule's steps are longer or the sampler leans on a step's output "
        "more), first and last step included. Samplers that call the model twice a step (heun, dpm_2) are "
        "planned call by call: both calls of the first and last step run, elsewhere one call a step runs (heun's "
        "corrector, dpm_2's midpoint) and the other is extrapolated. 0 = use "
        "order/interval/warm-up as set (the fixed schedule of earlier versions).")),
    Param("extrapolator", "choice", "noise", choices=EXTRAPOLATORS, tooltip=(
        "What a skipped step is extrapolated from. noise: the model's noise estimate at the last computed steps, "
        "recombined with the skipped step's own latent (the model output where no exact map exists: EDM, x0). "
        "output: the raw model output (the paper's rule; earlier versions). noise_lsq: noise, but a step more "
        "than two steps beyond the last computed one uses a least-squares line through the last three.")),
    # Core-only settings and guards, not shown in any node.
    Param("long_gap", "float", 2.0, min=0.0, tooltip=(
        "extrapolator noise_lsq: a skipped step further than this many steps beyond the last computed one uses "
        "the least-squares line.")),
    Param("fit_points", "int", 3, min=2, max=MAX_ORDER, tooltip=(
        "Computed steps the least-squares line is fitted through.")),
    Param("noise_injected_space", "choice", "data", choices=NOISE_INJECTED_SPACES, tooltip=(
        "extrapolator noise / noise_lsq under a sampler that adds fresh noise at every step (ancestral, SDE, LCM, "
        "DDPM): data = extrapolate the model's data estimate (x0) and recombine it with the current latent, "
        "which carries the injected noise; noise = the noise estimate, as for the other samplers.")),
    Param("multi_call", "choice", "per_call", choices=MULTI_CALL_PLANS, tooltip=(
        "mode even under a sampler that calls the model more than once in a step (heun, dpm_2, heunpp2): "
        "per_call = every call of the first and the last step computed, elsewhere the call that completes a step "
        "(heun's corrector, dpm_2's midpoint) computed at steps spread as usual and the other calls extrapolated "
        "(heun's call on the trajectory from that corrector at the same noise level, dpm_2's from the midpoints "
        "before it); "
        "per_step = all calls of a step computed or all extrapolated (earlier versions).")),
    Param("deferred_correction", "choice", "auto", choices=DEFERRED_CORRECTIONS, tooltip=(
        "mode even: auto = at a computed step, correct the steps skipped since the last one (their data estimate "
        "interpolated through the new call, the difference carried into this step's output by the sampler's "
        "sensitivity), under samplers whose measured sensitivity is their step lengths (euler); off = never.")),
    Param("max_amplification", "float", 8.0, min=1.0, tooltip=(
        "Guard: when the extrapolation weights amplify the history by more than this (sum |w|), a lower order "
        "is used.")),
)

PARAMS: dict[str, Param] = {p.name: p for p in _TABLE}

# The widgets of the two AB-Cache nodes, in widget order (saved workflows map widget values by position:
# append, never reorder). The last ones of the Advanced node were added later and are optional.
SIMPLE_NODE_INPUTS = ("order", "interval", "warmup")
SIMPLE_NODE_OPTIONAL = ("speed",)
ADVANCED_NODE_INPUTS = SIMPLE_NODE_INPUTS + (
    "mode", "coordinate", "tolerance", "max_skips", "start_percent", "end_percent", "final_steps", "table",
    "cache_device", "verbose")
ADVANCED_NODE_OPTIONAL = ("exposure_delta", "exposure_apply", "speed", "extrapolator")
# What an optional input means when a prompt leaves it out (an API prompt or a script written before the input
# existed): the behaviour before it existed, so such a graph samples exactly as it did. A graph opened in the
# UI shows the new widget at its default instead (the frontend fills it in).
WHEN_ABSENT = {"speed": 0.0, "extrapolator": "output"}


def default(name: str) -> Any:
    """The default of parameter ``name`` (the one place defaults are read from)."""
    return PARAMS[name].default


def defaults(*names: str) -> dict[str, Any]:
    """``{name: default}`` for the given parameters (all of them when none is named)."""
    return {n: PARAMS[n].default for n in (names or PARAMS)}
