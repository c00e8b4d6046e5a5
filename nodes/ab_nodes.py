"""AB-Cache nodes (ComfyUI v3 API, the subset that also runs on ComfyUI 0.3.75).

Node ids and input names are part of saved workflows: never rename them; new inputs are appended and optional.
Every default, range and tooltip comes from the core's parameter table (abcache_core/params.py).
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..abcache_core import NODE_MAX_ORDER, CacheSettings, default
from ..abcache_core.params import (ADVANCED_NODE_INPUTS, ADVANCED_NODE_OPTIONAL, SIMPLE_NODE_INPUTS,
                                   SIMPLE_NODE_OPTIONAL, WHEN_ABSENT)
from ..abcache_core.policy import check_values
from .blocks_node import ABCacheFluxBlocksNode
from .inputs import node_param, widget
from .report import ABCacheReportNode
from .integration import TelemetrySink, apply_ab_cache

CATEGORY = "model_patches/ab_cache"
MODEL_TIP = "The diffusion model to accelerate. Connect it between the model loader (and any LoRA) and the sampler."
OUTPUT_TIP = "The model with AB-Cache attached. Connect it to the sampler."

# What the two nodes show, in widget order. They offer orders up to NODE_MAX_ORDER on purpose: higher orders
# amplify noise too much to be useful.
_NODE_OVERRIDES = {"order": dict(max=NODE_MAX_ORDER)}
SIMPLE = {n: node_param(n, **_NODE_OVERRIDES.get(n, {})) for n in SIMPLE_NODE_INPUTS}
SIMPLE_OPTIONAL = {n: node_param(n) for n in SIMPLE_NODE_OPTIONAL}
ADVANCED = {n: node_param(n, **_NODE_OVERRIDES.get(n, {})) for n in ADVANCED_NODE_INPUTS}
ADVANCED_OPTIONAL = {n: node_param(n) for n in ADVANCED_NODE_OPTIONAL}


def settings_from_inputs(params: dict, **inputs) -> CacheSettings:
    """CacheSettings from node inputs, checked against the node's ``params`` and the core's rules, with the
    message ComfyUI shows at the node. Inputs that are no setting (``verbose``) are skipped; None (an optional
    input left out) takes WHEN_ABSENT's value (the behaviour before that input existed) or the table's default."""
    fields = CacheSettings.__dataclass_fields__
    inputs = {k: WHEN_ABSENT.get(k) if v is None else v for k, v in inputs.items()}
    try:
        check_values({k: v for k, v in inputs.items() if k in params}, params)
        return CacheSettings(**{k: v for k, v in inputs.items() if k in fields and v is not None}).validate()
    except ValueError as e:
        raise ValueError(f"AB-Cache: {e}") from None


class ABCacheNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ABCache",
            display_name="AB-Cache",
            category=CATEGORY,
            description="Speeds up sampling by skipping model calls and extrapolating their output from the "
                        "last computed steps (Adams-Bashforth / Lagrange weights on the real sigma grid). "
                        "Set 'speed' (3 = a third of the model calls, spread over the steps); speed 0 uses order, "
                        "interval and warm-up instead. Works with every sampler that uses this model.",
            inputs=[io.Model.Input("model", tooltip=MODEL_TIP)] + [widget(p) for p in SIMPLE.values()]
                   + [widget(p, optional=True) for p in SIMPLE_OPTIONAL.values()],
            outputs=[io.Model.Output(tooltip=OUTPUT_TIP)],
        )

    @classmethod
    def execute(cls, model, order, interval, warmup, speed=None) -> io.NodeOutput:
        # speed left out (a prompt from before it existed): that prompt's behaviour, bit-identical (WHEN_ABSENT);
        # speed 0 chosen: the fixed schedule with today's extrapolator
        absent = speed is None
        speed = WHEN_ABSENT["speed"] if absent else speed
        mode = "even" if isinstance(speed, (int, float)) and not isinstance(speed, bool) and speed > 0 else "fixed"
        settings = settings_from_inputs(SIMPLE | SIMPLE_OPTIONAL, mode=mode, order=order, interval=interval,
                                        warmup=warmup, speed=speed,
                                        extrapolator=WHEN_ABSENT["extrapolator"] if absent else default("extrapolator"))
        return io.NodeOutput(apply_ab_cache(model, settings, sink=TelemetrySink()))


class ABCacheAdvancedNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ABCacheAdvanced",
            display_name="AB-Cache (Advanced)",
            category=CATEGORY,
            description="AB-Cache with every setting: even (by speed), fixed, adaptive (error-controlled), table "
                        "and paper-exact modes, extrapolator, extrapolation axis, skip window and cache placement.",
            inputs=[io.Model.Input("model", tooltip=MODEL_TIP)] + [widget(p) for p in ADVANCED.values()]
                   + [widget(p, optional=True) for p in ADVANCED_OPTIONAL.values()],
            outputs=[io.Model.Output(tooltip=OUTPUT_TIP)],
        )

    @classmethod
    def validate_inputs(cls, mode=None, order=None, table=None, start_percent=None, end_percent=None,
                        coordinate=None, cache_device=None, exposure_apply=None, speed=None, extrapolator=None):
        """Only the inputs that are cross-checked, and the combos (ComfyUI 0.3.75 does not check a v3 combo's
        value); ComfyUI range-checks every other input itself. An input fed by a link arrives as None here; it
        is checked at execution with the same message."""
        try:
            check_values(dict(mode=mode, order=order, table=table, start_percent=start_percent,
                              end_percent=end_percent, coordinate=coordinate, cache_device=cache_device,
                              exposure_apply=exposure_apply, speed=speed, extrapolator=extrapolator),
                         ADVANCED | ADVANCED_OPTIONAL)
        except ValueError as e:
            return f"AB-Cache: {e}"
        return True

    @classmethod
    def execute(cls, model, order, interval, warmup, mode, coordinate, tolerance, max_skips, start_percent,
                end_percent, final_steps, table, cache_device, verbose, exposure_delta=None,
                exposure_apply=None, speed=None, extrapolator=None) -> io.NodeOutput:
        settings = settings_from_inputs(
            ADVANCED | ADVANCED_OPTIONAL, order=order, interval=interval, warmup=warmup, mode=mode,
            coordinate=coordinate, tolerance=tolerance, max_skips=max_skips, start_percent=start_percent,
            end_percent=end_percent, final_steps=final_steps, table=table, cache_device=cache_device,
            exposure_delta=exposure_delta, exposure_apply=exposure_apply, speed=speed, extrapolator=extrapolator)
        return io.NodeOutput(apply_ab_cache(model, settings, verbose=bool(verbose), sink=TelemetrySink()))


class ABCacheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ABCacheNode, ABCacheAdvancedNode, ABCacheReportNode, ABCacheFluxBlocksNode]
