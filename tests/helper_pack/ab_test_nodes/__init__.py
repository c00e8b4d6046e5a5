"""Test-only ComfyUI node pack: tiny random-weight models and matching random conditioning as nodes,
plus a call counter, so that real graphs run through a headless server without any weights.

Never shipped to users; the server fixture whitelists it next to AB-Cache.
"""
import logging
import sys
from pathlib import Path

from comfy_api.latest import ComfyExtension, io

import comfy.patcher_extension as pe

_REPO = Path(__file__).resolve().parents[3]
if str(_REPO) not in sys.path:
    sys.path.append(str(_REPO))  # appended: ComfyUI's own `nodes` module must keep priority

from devtools import tiny_models  # noqa: E402
from devtools import trained_models  # noqa: E402

FAMILIES = sorted(tiny_models.FAMILIES)


class TinyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ABTest_TinyModel", display_name="Tiny random model (test)", category="testing",
            inputs=[io.Combo.Input("family", options=FAMILIES, default="flux_dev", tooltip="model family"),
                    io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="weight init seed")],
            outputs=[io.Model.Output(), io.Latent.Output()],
        )

    @classmethod
    def execute(cls, family, seed):
        ok, why = tiny_models.available(family)
        if not ok:
            raise ValueError(f"{family} is not available in this ComfyUI: {why}")
        case = tiny_models.build(family, seed=seed)
        return io.NodeOutput(case.patcher, {"samples": case.latent.clone()})


class RandomConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ABTest_RandomConditioning", display_name="Random conditioning (test)", category="testing",
            inputs=[io.Combo.Input("family", options=FAMILIES, default="flux_dev", tooltip="model family"),
                    io.Int.Input("seed", default=0, min=0, max=2**31, tooltip="seed")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, family, seed):
        return io.NodeOutput(tiny_models.conditioning(family, seed))


class CountCalls(io.ComfyNode):
    """Counts the real forward calls (a DIFFUSION_MODEL wrapper added after, i.e. inside, any cache) and
    logs `ABTest_CountCalls: forward calls = N` when each sampling call ends."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="ABTest_CountCalls", category="testing",
                         inputs=[io.Model.Input("model", tooltip="model")],
                         outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model):
        m = model.clone()
        counter = {"n": 0}

        def forward(executor, *a, **kw):
            counter["n"] += 1
            return executor(*a, **kw)

        def outer(executor, *a, **kw):
            counter["n"] = 0
            try:
                return executor(*a, **kw)
            finally:
                logging.info("ABTest_CountCalls: forward calls = %d", counter["n"])

        m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "abtest_count", forward)
        m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, "abtest_count", outer)
        return io.NodeOutput(m)








class TrainedModel(io.ComfyNode):
    """Any of the small trained models (devtools.trained_models: flux, sd15, wan) and an empty latent for it."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ABTest_TrainedModel", display_name="Trained tiny model (test)", category="testing",
            inputs=[io.Combo.Input("name", options=list(trained_models.NAMES), default="wan", tooltip="model"),
                    io.Int.Input("batch_size", default=1, min=1, max=4096, tooltip="latent batch size")],
            outputs=[io.Model.Output(), io.Latent.Output()],
        )

    @classmethod
    def execute(cls, name, batch_size):
        patcher, kit = trained_models.load(name)
        return io.NodeOutput(patcher, {"samples": kit.empty_latent(batch_size)})


class ClassConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ABTest_ClassConditioning", display_name="Class conditioning (test)", category="testing",
            inputs=[io.Combo.Input("name", options=list(trained_models.NAMES), default="wan", tooltip="model"),
                    io.Int.Input("digit", default=0, min=0, max=trained_models.NULL_CLASS,
                                 tooltip=f"class 0-9; {trained_models.NULL_CLASS} = null (unconditional)")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, name, digit):
        return io.NodeOutput(trained_models.load_kit(name).conditioning(digit))


class Ext(ComfyExtension):
    async def get_node_list(self):
        return [TinyModel, RandomConditioning, CountCalls, TrainedModel, ClassConditioning]


async def comfy_entrypoint():
    return Ext()
