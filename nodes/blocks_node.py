"""The AB-Cache FLUX blocks node (experimental): EB-Cache-style block-level caching, attached with
:func:`nodes.integration.block_cache.apply_block_cache`."""
from __future__ import annotations

from comfy_api.latest import io

from ..abcache_core import CacheSettings
from ..abcache_core.policy import check_values
from .inputs import node_param, widget
from .integration.block_cache import BLOCK_MODES, NAME, apply_block_cache

CATEGORY = "model_patches/ab_cache"

# What the node shows, in widget order. Defaults, choices and wording that differ from the core's table on
# purpose (EB-Cache's published table and plain reuse are this node's starting point):
BLOCK_NODE_DEFAULTS = dict(order=1, mode="table", table="eb50", interval=2)
BLOCK_PARAMS = {
    "compute_blocks": node_param("compute_blocks"),
    "order": node_param("order", default=BLOCK_NODE_DEFAULTS["order"], tooltip=(
        "How many computed steps each reused residual is extrapolated from: 1 = reuse the last one (FORA / "
        "EB-Cache), 2 = linear in sigma, 3-4 = higher order.")),
    "mode": node_param("mode", default=BLOCK_NODE_DEFAULTS["mode"], choices=BLOCK_MODES, tooltip=(
        "table: follow the per-step table. fixed: after warm-up, run all blocks on every interval-th step.")),
    "table": node_param("table", default=BLOCK_NODE_DEFAULTS["table"], tooltip=(
        "table mode: one code per step, F or 1 = run all blocks, s, 0 or 2 = reuse the cached blocks, a = "
        "EB-Cache's 'reuse attention only' (not possible through the block hooks: runs all blocks). 'eb50' = "
        "EB-Cache's published 50-step table (34 of 50 steps run); a table written for another step count is "
        "derived for the schedule (first and last step run, same fraction run).")),
    "interval": node_param("interval", default=BLOCK_NODE_DEFAULTS["interval"], tooltip=(
        "fixed mode: after warm-up, run all blocks on every N-th step (1 = no reuse).")),
    "warmup": node_param("warmup", tooltip="First steps that always run all blocks (both modes)."),
    "final_steps": node_param("final_steps", tooltip="Last steps that always run all blocks (both modes)."),
    "cache_device": node_param("cache_device", tooltip=(
        "Where the cached block residuals are kept: 'same' as the model (fastest) or 'cpu' (saves GPU memory: "
        "FLUX.1 at 1024x1024 stores about 28 MB per block, chunk and history entry in bf16).")),
    "exposure_delta": node_param("exposure_delta", tooltip=(
        "Exposure-bias compensation (EB-Cache): the model's noise estimate is divided by this value (0.965 "
        "enlarges it by 3.6%, EB-Cache's value). 1 = off.")),
    "exposure_apply": node_param("exposure_apply", tooltip=(
        "Where exposure_delta applies: 'extrapolated' = only on steps that reused blocks; 'all' = on every model "
        "call (as EB-Cache does).")),
}


MODEL_TIP = ("A FLUX-family model (FLUX.1 dev/schnell/Kontext, Chroma). Other models are refused: use AB-Cache "
             "(Advanced) for them.")


class ABCacheFluxBlocksNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ABCacheFluxBlocks",
            display_name="AB-Cache FLUX blocks (EB-Cache style)",
            category=CATEGORY,
            description="Experimental. Block-level cache for FLUX and Chroma through ComfyUI's block hooks: on "
                        "skipped steps the first blocks run and every later block adds its cached (order 1) or "
                        "extrapolated residual instead of running. Steps follow a table (EB-Cache's published one "
                        "by default) or a fixed interval; optional EB-Cache exposure-bias compensation. On a "
                        "4-block test model it stayed below output-level caching at equal calls: prefer AB-Cache.",
            inputs=[io.Model.Input("model", tooltip=MODEL_TIP)] + [widget(p) for p in BLOCK_PARAMS.values()],
            outputs=[io.Model.Output(tooltip="The model with block caching attached. Connect it to the sampler.")],
            is_experimental=True,
        )

    @classmethod
    def validate_inputs(cls, mode=None, table=None, cache_device=None, exposure_apply=None):
        """Only the cross-checked inputs and the combos (ComfyUI 0.3.75 does not check a v3 combo's value);
        ComfyUI range-checks the rest. Linked inputs arrive as None and are checked at execution."""
        try:
            check_values(dict(mode=mode, table=table, cache_device=cache_device, exposure_apply=exposure_apply),
                         BLOCK_PARAMS)
        except ValueError as e:
            return f"{NAME}: {e}"
        return True

    @classmethod
    def execute(cls, model, compute_blocks, order, mode, table, interval, warmup, final_steps, cache_device,
                exposure_delta, exposure_apply) -> io.NodeOutput:
        inputs = dict(order=order, mode=mode, table=table, interval=interval, warmup=warmup,
                      final_steps=final_steps, cache_device=cache_device, exposure_delta=exposure_delta,
                      exposure_apply=exposure_apply)
        try:
            check_values(inputs, BLOCK_PARAMS)
            settings = CacheSettings(**inputs)
        except ValueError as e:
            raise ValueError(f"{NAME}: {e}") from None
        return io.NodeOutput(apply_block_cache(model, settings, compute_blocks))
