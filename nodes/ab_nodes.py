"""AB-Cache nodes (ComfyUI v3 API, the subset that also runs on ComfyUI 0.3.75).

Node ids are part of saved workflows: never rename them.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..abcache_core import COORDINATES, EXPOSURE_APPLY, CacheSettings
from .blocks import ABCacheFluxBlocksNode
from .report import ABCacheReportNode
from .wrappers import TelemetrySink, apply_ab_cache

CATEGORY = "model_patches/ab_cache"
COORDINATE_CHOICES = ("auto",) + COORDINATES

# Defaults of the simple node: fixed interval 4 after 3 warm-up steps, last step computed, order 2 in
# sigma (flow) / lambda (VP): 10/25 computed calls (2.5x), 10/28 (2.8x), 16/50 (3.1x).
DEFAULTS = dict(order=2, interval=4, warmup=3)

_TIPS = {
    "model": "The diffusion model to accelerate. Connect it between the model loader (and any LoRA) and the sampler.",
    "order": "How many computed steps each skipped step is extrapolated from. 1 = reuse the last output "
             "(what other caches do); 2 = linear; 3-4 = higher order (more accurate on smooth schedules, "
             "more sensitive to noise).",
    "interval": "After warm-up, run the model on every N-th step and extrapolate the steps in between. "
                "1 = no skipping; 4 = about 3x fewer model calls at 50 steps.",
    "warmup": "Number of first steps that always run the model (the early, high-noise steps change fastest).",
    "mode": "fixed: every interval-th step. adaptive: skip while the built-in error estimate stays under the "
            "tolerance. table: follow the per-step mask in 'table'. paper: the AB-Cache paper's exact rule "
            "(compute when step < warmup or step % interval == 0, binomial weights; set final_steps to 0 "
            "for the official schedule).",
    "coordinate": "Axis on which the extrapolation weights are computed. auto = sigma for flow models "
                  "(FLUX, Wan, HunyuanVideo, LTX), lambda = -log(sigma) for VP models (SD, CogVideoX); "
                  "step = step index (ignores the real spacing).",
    "tolerance": "adaptive mode: error budget accumulated over skipped steps before the model must run again. "
                 "Smaller = higher fidelity, fewer skips.",
    "max_skips": "adaptive mode: the most consecutive steps that may be skipped.",
    "start_percent": "Skipping is allowed only from this fraction of the steps on (0 = from the first step).",
    "end_percent": "Skipping stops at this fraction of the steps (1 = until the end).",
    "final_steps": "Number of last steps that always run the model (they set the fine detail).",
    "table": "table mode: one character per step, F or 1 = run the model, s, 0 or 2 = extrapolate, e.g. "
             "'FFFFFsFsFsF' (EB-Cache's 'a', reuse attention only, runs the model here). 'eb50' = EB-Cache's "
             "published 50-step table (34 of 50 steps run). A table written for another step count is "
             "derived for the schedule: first and last step run, same fraction of steps run, same density "
             "along the schedule.",
    "cache_device": "Where the cached outputs are kept: 'same' as the model (fastest) or 'cpu' (saves GPU "
                    "memory on long videos).",
    "verbose": "Log one line per model call (computed or extrapolated) to the console.",
    "exposure_delta": "Exposure-bias compensation (EB-Cache): the model's noise estimate is divided by this "
                      "value, in the right space for flow and for eps/v models, so 0.965 enlarges it by 3.6% "
                      "(EB-Cache's value for 50-step DiT). Counters the over-clean intermediate states that "
                      "skipped steps cause. 1 = off (bit-identical).",
    "exposure_apply": "Where exposure_delta applies: 'extrapolated' = only on steps whose output was "
                      "extrapolated; 'all' = on every model call (as EB-Cache does).",
}


def _common_inputs():
    return [
        io.Model.Input("model", tooltip=_TIPS["model"]),
        io.Int.Input("order", default=DEFAULTS["order"], min=1, max=4, step=1, tooltip=_TIPS["order"]),
        io.Int.Input("interval", default=DEFAULTS["interval"], min=1, max=20, step=1, tooltip=_TIPS["interval"]),
        io.Int.Input("warmup", default=DEFAULTS["warmup"], min=0, max=200, step=1, tooltip=_TIPS["warmup"]),
    ]


class ABCacheNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ABCache",
            display_name="AB-Cache",
            category=CATEGORY,
            description="Speeds up sampling by skipping model calls and extrapolating their output from the "
                        "last computed steps (Adams-Bashforth / Lagrange weights on the real sigma grid). "
                        "Works with every sampler that uses this model.",
            inputs=_common_inputs(),
            outputs=[io.Model.Output(tooltip="The model with AB-Cache attached. Connect it to the sampler.")],
        )

    @classmethod
    def execute(cls, model, order, interval, warmup) -> io.NodeOutput:
        settings = CacheSettings(mode="fixed", order=int(order), interval=int(interval), warmup=int(warmup))
        return io.NodeOutput(apply_ab_cache(model, _checked(settings), sink=TelemetrySink()))


class ABCacheAdvancedNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ABCacheAdvanced",
            display_name="AB-Cache (Advanced)",
            category=CATEGORY,
            description="AB-Cache with every setting: fixed, adaptive (error-controlled), table and paper-exact "
                        "modes, extrapolation axis, skip window and cache placement.",
            inputs=_common_inputs() + [
                io.Combo.Input("mode", options=["fixed", "adaptive", "table", "paper"], default="fixed",
                               tooltip=_TIPS["mode"]),
                io.Combo.Input("coordinate", options=list(COORDINATE_CHOICES), default="auto",
                               tooltip=_TIPS["coordinate"]),
                io.Float.Input("tolerance", default=0.01, min=0.0, max=10.0, step=0.001, tooltip=_TIPS["tolerance"]),
                io.Int.Input("max_skips", default=3, min=0, max=50, step=1, tooltip=_TIPS["max_skips"]),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=_TIPS["start_percent"]),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=_TIPS["end_percent"]),
                io.Int.Input("final_steps", default=1, min=0, max=50, step=1, tooltip=_TIPS["final_steps"]),
                io.String.Input("table", default="", multiline=False, tooltip=_TIPS["table"]),
                io.Combo.Input("cache_device", options=["same", "cpu"], default="same", tooltip=_TIPS["cache_device"]),
                io.Boolean.Input("verbose", default=False, tooltip=_TIPS["verbose"]),
                # appended: saved workflows map widget values by position; optional, so API prompts
                # written before these inputs existed still validate and get the defaults
                io.Float.Input("exposure_delta", default=1.0, min=0.8, max=1.2, step=0.001, optional=True,
                               tooltip=_TIPS["exposure_delta"]),
                io.Combo.Input("exposure_apply", options=list(EXPOSURE_APPLY), default="extrapolated",
                               optional=True, tooltip=_TIPS["exposure_apply"]),
            ],
            outputs=[io.Model.Output(tooltip="The model with AB-Cache attached. Connect it to the sampler.")],
        )

    @classmethod
    def validate_inputs(cls, mode="fixed", order=2, start_percent=0.0, end_percent=1.0, table="", tolerance=0.0,
                        coordinate="auto", exposure_delta=1.0, exposure_apply="extrapolated", **kwargs):
        try:
            _check_coordinate(coordinate)
            _advanced_settings(mode, order, 4, 3, tolerance, 3, start_percent, end_percent, 1, table, "same",
                               exposure_delta, exposure_apply)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, model, order, interval, warmup, mode, coordinate, tolerance, max_skips, start_percent,
                end_percent, final_steps, table, cache_device, verbose, exposure_delta=1.0,
                exposure_apply="extrapolated") -> io.NodeOutput:
        settings = _advanced_settings(mode, order, interval, warmup, tolerance, max_skips, start_percent,
                                      end_percent, final_steps, table, cache_device, exposure_delta, exposure_apply)
        return io.NodeOutput(apply_ab_cache(model, settings, coordinate=_check_coordinate(coordinate), verbose=bool(verbose),
                                            sink=TelemetrySink()))


def _advanced_settings(mode, order, interval, warmup, tolerance, max_skips, start_percent, end_percent,
                       final_steps, table, cache_device, exposure_delta=1.0,
                       exposure_apply="extrapolated") -> CacheSettings:
    if cache_device not in ("same", "cpu"):
        raise ValueError(f"cache_device must be 'same' or 'cpu', got {cache_device!r}")
    return _checked(CacheSettings(
        mode=str(mode), order=int(order), interval=int(interval), warmup=int(warmup),
        tolerance=float(tolerance), max_skips=int(max_skips), start_percent=float(start_percent),
        end_percent=float(end_percent), final_steps=int(final_steps), table=str(table or ""),
        offload=cache_device == "cpu",
        exposure_delta=float(1.0 if exposure_delta is None else exposure_delta),
        exposure_apply=str(exposure_apply or "extrapolated"),
        coordinate="sigma",  # placeholder; the node's coordinate input is resolved per model at run time
    ))


def _check_coordinate(coordinate) -> str:
    if coordinate not in COORDINATE_CHOICES:
        raise ValueError(f"AB-Cache: coordinate must be one of {COORDINATE_CHOICES}, got {coordinate!r}")
    return coordinate


def _checked(settings: CacheSettings) -> CacheSettings:
    try:
        return settings.validate()
    except ValueError as e:
        raise ValueError(f"AB-Cache: {e}") from None


class ABCacheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [ABCacheNode, ABCacheAdvancedNode, ABCacheReportNode, ABCacheFluxBlocksNode]
