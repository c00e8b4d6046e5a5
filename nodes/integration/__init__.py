"""ModelPatcher integration: the layer between the core's maths (abcache_core) and the node classes (nodes/).

* scope.py        -- the sampling-call scope (OUTER_SAMPLE) both caches share, the "other step caches" rule, the
                     clone rule, exposure-bias hook and readers of ComfyUI's call arguments;
* passes.py       -- pass identity (PREDICT_NOISE / CALC_COND_BATCH): guidance passes keep their own history;
* output_cache.py -- the output-level cache (DIFFUSION_MODEL / APPLY_MODEL wrappers), ``apply_ab_cache``;
* block_cache.py  -- the FLUX block-level cache (dit block hooks), ``apply_block_cache``.
"""
from .block_cache import apply_block_cache
from .output_cache import KEY, CacheSpec, apply_ab_cache
from .scope import TelemetrySink

__all__ = ["KEY", "CacheSpec", "TelemetrySink", "apply_ab_cache", "apply_block_cache"]
