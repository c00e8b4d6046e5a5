"""AB-Cache numerical engine: parameters, extrapolation weights, skip policies, per-run state, telemetry.

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
    derive_table,
    parse_table,
    parse_table_codes,
    plan,
    planned_compute,
    schedule_problem,
    step_position,
)
from .state import CacheRun, CallRecord, Decision, sigma_to_coordinate
from .weights import amplification, binomial_weights, lagrange_weights, paper_weights

__all__ = [
    "CACHE_DEVICES", "COORDINATES", "EB_CACHE_DELTA", "EB_CACHE_TABLE_50", "EXPOSURE_APPLY", "MAX_ORDER", "MODES",
    "NODE_MAX_ORDER", "PARAMS", "TABLE_ALIASES",
    "CacheRun", "CacheSettings", "CallRecord", "Decision", "Param",
    "amplification", "binomial_weights", "default", "defaults", "denoised_from_epsilon", "derive_table",
    "epsilon_from_denoised", "lagrange_weights", "paper_weights", "parse_table", "parse_table_codes", "plan",
    "planned_compute", "rescale_denoised", "schedule_problem", "sigma_to_coordinate", "step_position",
]
