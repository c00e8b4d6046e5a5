"""AB-Cache numerical engine: extrapolation weights, skip policies, per-run state, telemetry.

Pure torch/numpy; never imports ComfyUI.
"""
from .policy import COORDINATES, MODES, CacheSettings, parse_table, plan, planned_compute, resample_table, step_position
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
    "COORDINATES", "MODES", "MAX_ORDER", "CacheSettings", "CacheRun", "CallRecord", "Decision",
    "adams_bashforth_coefficients", "amplification", "binomial_weights", "lagrange_weights", "paper_weights",
    "parse_table", "plan", "planned_compute", "resample_table", "sigma_to_coordinate", "step_position",
]
