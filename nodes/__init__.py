"""The ComfyUI layer of AB-Cache (the only code importing comfy): node classes here, the ModelPatcher integration
in ``nodes.integration``."""
from .ab_nodes import ABCacheAdvancedNode, ABCacheExtension, ABCacheNode
from .blocks_node import ABCacheFluxBlocksNode
from .integration import KEY, CacheSpec, TelemetrySink, apply_ab_cache, apply_block_cache
from .report import ABCacheReportNode

__all__ = ["ABCacheAdvancedNode", "ABCacheExtension", "ABCacheFluxBlocksNode", "ABCacheNode", "ABCacheReportNode",
           "CacheSpec", "KEY", "TelemetrySink", "apply_ab_cache", "apply_block_cache"]
