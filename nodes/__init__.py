"""The ComfyUI layer of AB-Cache: node definitions and ModelPatcher wrappers (the only code importing comfy)."""
from .ab_nodes import ABCacheAdvancedNode, ABCacheExtension, ABCacheNode
from .blocks import ABCacheFluxBlocksNode, apply_block_cache
from .report import ABCacheReportNode
from .wrappers import KEY, CacheSpec, TelemetrySink, apply_ab_cache

__all__ = ["ABCacheAdvancedNode", "ABCacheExtension", "ABCacheFluxBlocksNode", "ABCacheNode", "ABCacheReportNode",
           "CacheSpec", "KEY", "TelemetrySink", "apply_ab_cache", "apply_block_cache"]
