"""AB-Cache numerical engine: extrapolation weights, skip policies, per-run state, telemetry.

Pure torch/numpy; never imports ComfyUI.
"""
from .exposure import (
    EB_CACHE_DELTA,
    EXPOSURE_APPLY,
    denoised_from_epsilon,
    epsilon_from_denoised,
    rescale_denoised,
)
from .policy import (
    COORDINATES,
    EB_CACHE_TABLE_50,
    MODES,
    TABLE_ALIASES,
    CacheSettings,
    derive_table,
    parse_table,
    parse_table_codes,
    plan,
    planned_compute,
    resample_table,
    schedule_problem,
    step_position,
)
from .state import CacheRun, CallRecord, Decision, sigma_to_coordinate
from .weights import (
    MAX_ORDER,
    adams_bashforth_coefficients,
    amplification,
    binomial_weights,
    lagrange_weights,
    paper_weights,
)

__all__ = [
    "COORDINATES", "EB_CACHE_DELTA", "EB_CACHE_TABLE_50", "EXPOSURE_APPLY", "MODES", "MAX_ORDER", "TABLE_ALIASES",
    "CacheSettings", "CacheRun", "CallRecord", "Decision",
    "adams_bashforth_coefficients", "amplification", "binomial_weights", "denoised_from_epsilon", "derive_table",
    "epsilon_from_denoised", "lagrange_weights", "paper_weights", "parse_table", "parse_table_codes", "plan",
    "planned_compute", "resample_table", "rescale_denoised", "schedule_problem", "sigma_to_coordinate", "step_position",
]
