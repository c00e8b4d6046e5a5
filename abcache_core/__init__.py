"""AB-Cache numerical engine: parameters, extrapolation weights and spaces, skip policies, per-run state,
telemetry.

Pure torch/numpy; never imports ComfyUI.
"""
from .exposure import denoised_from_epsilon, epsilon_from_denoised, rescale_denoised
from .params import (
    CACHE_DEVICES,
    COORDINATES,
    EB_CACHE_DELTA,
    EXPOSURE_APPLY,
    MAX_ORDER,
    MODES,
    NODE_MAX_ORDER,
    PARAMS,
    Param,
    default,
    defaults,
)
from .policy import (
    EB_CACHE_TABLE_50,
    TABLE_ALIASES,
    CacheSettings,
    calls_for_speed,
    flow_times,
    spread_steps,
    step_lengths,
    uses_placement,
    extrapolation_rule,
    derive_table,
    parse_table,
    parse_table_codes,
    plan,
    planned_compute,
    schedule_problem,
    step_position,
)
from .sensitivity import VelocityProbe, measure_sensitivity
from .spaces import NoiseMap, noise_map
from .state import CacheRun, CallRecord, Decision, sigma_to_coordinate
from .weights import amplification, binomial_weights, lagrange_weights, least_squares_weights, paper_weights

__all__ = [
    "CACHE_DEVICES", "COORDINATES", "EB_CACHE_DELTA", "EB_CACHE_TABLE_50", "EXPOSURE_APPLY", "MAX_ORDER", "MODES",
    "NODE_MAX_ORDER", "PARAMS", "TABLE_ALIASES",
    "CacheRun", "CacheSettings", "CallRecord", "Decision", "NoiseMap", "Param",
    "amplification", "binomial_weights", "calls_for_speed", "default", "defaults", "denoised_from_epsilon",
    "derive_table", "epsilon_from_denoised", "flow_times", "extrapolation_rule", "lagrange_weights",
    "least_squares_weights", "measure_sensitivity", "noise_map", "paper_weights", "parse_table", "parse_table_codes", "plan",
    "planned_compute", "spread_steps", "rescale_denoised", "schedule_problem", "sigma_to_coordinate", "step_lengths",
    "step_position", "uses_placement", "VelocityProbe",
]
