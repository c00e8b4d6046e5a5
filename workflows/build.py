"""Example workflows for the AB-Cache pack: each graph is defined once here and written twice.

    python -m workflows.build            # rewrite workflows/*.json (UI) and workflows/api/*.json (API)
    python -m workflows.build --check    # exit 1 if a committed file differs from what this script writes

* ``workflows/<name>.json``     -- the UI format ComfyUI's "Save" writes (nodes, links, positions). ComfyUI
  lists these in its template browser under the pack's name (the folder name ``workflows`` is one it scans).
* ``workflows/api/<name>.json`` -- the same graph in the API format ("Export (API)") for ``POST /prompt``.

Only ComfyUI core nodes plus AB-Cache are used, with the model file names the official ComfyUI examples
use. ``NODES`` below is the small slice of each core node's schema this script needs (socket inputs,
widgets in widget order, outputs); tests/test_workflows.py checks every graph against a live server's
``/object_info``, so a wrong entry here fails the tests instead of shipping a broken workflow.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(HERE.parent))

from abcache_core import PARAMS, CacheSettings, plan  # noqa: E402  (pure torch, never imports ComfyUI)
from abcache_core.params import (  # noqa: E402
    ADVANCED_NODE_INPUTS,
    ADVANCED_NODE_OPTIONAL,
    SIMPLE_NODE_INPUTS,
    SIMPLE_NODE_OPTIONAL,
)

# --------------------------------------------------------------------------------------------- node schemas
# "sockets | widgets | outputs". Sockets are name:TYPE. Widgets are listed in the order of the node's
# widgets_values, optionally name=default. Two widgets exist only in the UI and are left out of the API
# format: control_after_generate (the frontend's fixed/randomize value after a seed) and upload (LoadImage's
# upload button). Outputs are TYPE or name:TYPE.
NODES = {
    "UNETLoader": " | unet_name weight_dtype=default | MODEL",
    "CLIPLoader": " | clip_name type device=default | CLIP",
    "DualCLIPLoader": " | clip_name1 clip_name2 type device=default | CLIP",
    "VAELoader": " | vae_name | VAE",
    "CheckpointLoaderSimple": " | ckpt_name | MODEL CLIP VAE",
    "LoadImage": " | image upload=image | IMAGE MASK",
    "CLIPTextEncode": "clip:CLIP | text | CONDITIONING",
    "ConditioningZeroOut": "conditioning:CONDITIONING | | CONDITIONING",
    "FluxGuidance": "conditioning:CONDITIONING | guidance | CONDITIONING",
    "ModelSamplingSD3": "model:MODEL | shift | MODEL",
    "EmptySD3LatentImage": " | width height batch_size=1 | LATENT",
    "EmptyHunyuanLatentVideo": " | width height length batch_size=1 | LATENT",
    "EmptyLTXVLatentVideo": " | width height length batch_size=1 | LATENT",
    "LTXVImgToVideo": "positive:CONDITIONING negative:CONDITIONING vae:VAE image:IMAGE"
                      " | width height length batch_size=1 strength"
                      " | positive:CONDITIONING negative:CONDITIONING latent:LATENT",
    "LTXVConditioning": "positive:CONDITIONING negative:CONDITIONING | frame_rate"
                        " | positive:CONDITIONING negative:CONDITIONING",
    "LTXVScheduler": "latent:LATENT | steps max_shift base_shift stretch terminal | SIGMAS",
    "KSampler": "model:MODEL positive:CONDITIONING negative:CONDITIONING latent_image:LATENT"
                " | seed control_after_generate=fixed steps cfg sampler_name scheduler denoise=1.0 | LATENT",
    "KSamplerAdvanced": "model:MODEL positive:CONDITIONING negative:CONDITIONING latent_image:LATENT"
                        " | add_noise noise_seed control_after_generate=fixed steps cfg sampler_name scheduler"
                        " start_at_step end_at_step return_with_leftover_noise | LATENT",
    "SamplerCustom": "model:MODEL positive:CONDITIONING negative:CONDITIONING sampler:SAMPLER sigmas:SIGMAS"
                     " latent_image:LATENT | add_noise=True noise_seed control_after_generate=fixed cfg"
                     " | output:LATENT denoised_output:LATENT",
    "SamplerCustomAdvanced": "noise:NOISE guider:GUIDER sampler:SAMPLER sigmas:SIGMAS latent_image:LATENT"
                             " | | output:LATENT denoised_output:LATENT",
    "RandomNoise": " | noise_seed control_after_generate=fixed | NOISE",
    "KSamplerSelect": " | sampler_name | SAMPLER",
    "BasicScheduler": "model:MODEL | scheduler steps denoise=1.0 | SIGMAS",
    "BasicGuider": "model:MODEL conditioning:CONDITIONING | | GUIDER",
    "VAEDecode": "samples:LATENT vae:VAE | | IMAGE",
    "VAEDecodeTiled": "samples:LATENT vae:VAE | tile_size overlap temporal_size temporal_overlap | IMAGE",
    "SaveImage": "images:IMAGE | filename_prefix |",
    "SaveAnimatedWEBP": "images:IMAGE | filename_prefix fps lossless=False quality=90 method=default |",
    "Note": " | text |",  # frontend-only: never part of the API format
}
UI_ONLY_WIDGETS = {"control_after_generate", "upload"}
FRONTEND_ONLY_NODES = {"Note"}
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}
NO_DEFAULT = object()


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word: a combo value


@dataclass(frozen=True)
class Schema:
    sockets: list[tuple[str, str]]
    widgets: list[tuple[str, Any]]  # (name, default or NO_DEFAULT)
    outputs: list[tuple[str, str]]


# This pack's nodes: widgets and defaults from the core's parameter table, their one home.
PACK_NODES = {"ABCache": SIMPLE_NODE_INPUTS + SIMPLE_NODE_OPTIONAL,
              "ABCacheAdvanced": ADVANCED_NODE_INPUTS + ADVANCED_NODE_OPTIONAL}


def schema(node_type: str) -> Schema:
    if node_type in PACK_NODES:
        return Schema(sockets=[("model", "MODEL")], outputs=[("MODEL", "MODEL")],
                      widgets=[(n, PARAMS[n].default) for n in PACK_NODES[node_type]])
    sockets, widgets, outputs = (part.split() for part in NODES[node_type].split("|"))
    return Schema(
        sockets=[tuple(s.split(":")) for s in sockets],
        widgets=[(w.split("=", 1)[0], _literal(w.split("=", 1)[1]) if "=" in w else NO_DEFAULT) for w in widgets],
        outputs=[tuple(o.split(":")) if ":" in o else (o, o) for o in outputs],
    )


# ---------------------------------------------------------------------------------------------- graph model
@dataclass(frozen=True)
class Model:
    """A file the user downloads: the loader widget gets its name, the node's properties get the link."""
    name: str
    directory: str  # ComfyUI/models/<directory>
    url: Optional[str] = None


@dataclass(frozen=True)
class Out:
    node: "Node"
    slot: int


@dataclass(eq=False)
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    size: tuple[float, float]
    inputs: dict[str, Out]  # socket name -> source
    widgets: list[tuple[str, Any]]  # in widget order, UI-only ones included
    title: Optional[str] = None
    models: list[Model] = field(default_factory=list)

    def __getitem__(self, output: str | int) -> Out:
        if isinstance(output, int):
            return Out(self, output)
        names = [n for n, _ in schema(self.type).outputs]
        return Out(self, names.index(output))


TITLE_H, GAP = 30, 10   # LiteGraph draws a node's title bar above its pos


def _auto_size(s: Schema, width: float) -> tuple[float, float]:
    # LiteGraph's computeSize: 20 px per slot row, 24 px per widget, small margins.
    rows = max(len(s.sockets), len(s.outputs))
    return (width, rows * 20 + 6 + (len(s.widgets) * 24 + 8 if s.widgets else 0))


class Workflow:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[Node] = []

    def add(self, node_type: str, pos, size=315, title=None, **values) -> Node:
        """A node at ``pos``; ``size`` is (w, h) or just w (height from the widgets). Sockets take a Node
        (its first output) or node["output name"]; everything else is a widget value."""
        s = schema(node_type)
        socket_names = [n for n, _ in s.sockets]
        widget_names = [n for n, _ in s.widgets]
        unknown = set(values) - set(socket_names) - set(widget_names)
        if unknown:
            raise TypeError(f"{node_type}: unknown inputs {sorted(unknown)}")
        inputs = {}
        for name in socket_names:
            src = values.get(name)
            if src is not None:
                inputs[name] = src if isinstance(src, Out) else Out(src, 0)
        widgets, models = [], []
        for name, default in s.widgets:
            value = values.get(name, default)
            if value is NO_DEFAULT:
                raise TypeError(f"{node_type}: widget {name!r} needs a value")
            if isinstance(value, Model):
                models.append(value)
                value = value.name
            widgets.append((name, value))
        node = Node(len(self.nodes) + 1, node_type, tuple(pos), tuple(size) if isinstance(size, tuple) else _auto_size(s, size), inputs,
                    widgets, title, models)
        self.nodes.append(node)
        return node

    def note(self, pos, *paragraphs: str, size=(420, 300), title=None) -> Node:
        return self.add("Note", pos, size=size, title=title, text="\n\n".join(p.strip() for p in paragraphs))

    def settings_note(self, pos, *paragraphs: str, size=(440, 380)) -> Node:
        return self.note(pos, *paragraphs, AB_HOW, AB_TUNE, size=size, title="AB-Cache settings")

    # ------------------------------------------------------------------ writers
    def _links(self):
        links = []  # [id, from_node, from_slot, to_node, to_slot, type]
        for node in self.nodes:
            sockets = schema(node.type).sockets
            for slot, (name, typ) in enumerate(sockets):
                if name in node.inputs:
                    src = node.inputs[name]
                    links.append([len(links) + 1, src.node.id, src.slot, node.id, slot, typ])
        return links

    def _order(self) -> dict[int, int]:
        """Execution order as the frontend stores it: topological (ties by id), notes last."""
        graph = [n for n in self.nodes if n.type not in FRONTEND_ONLY_NODES]
        order: dict[int, int] = {}
        while len(order) < len(graph):
            for n in graph:
                if n.id not in order and all(o.node.id in order for o in n.inputs.values()):
                    order[n.id] = len(order)
                    break
        for n in self.nodes:
            order.setdefault(n.id, len(order))
        return order

    def _spread(self) -> None:
        """Move nodes down until no node (title bar included) overlaps another in the same column."""
        placed: list[Node] = []
        for n in sorted(self.nodes, key=lambda n: (n.pos[1], n.pos[0])):
            x, y = n.pos
            moved = True
            while moved:
                moved = False
                for p in placed:
                    same_column = x < p.pos[0] + p.size[0] and p.pos[0] < x + n.size[0]
                    if same_column and y - TITLE_H < p.pos[1] + p.size[1] + GAP and y + n.size[1] > p.pos[1] - TITLE_H:
                        y, moved = p.pos[1] + p.size[1] + TITLE_H + GAP, True
            n.pos = (x, y)
            placed.append(n)

    def ui(self) -> dict:
        self._spread()
        links = self._links()
        order = self._order()
        # top-left node at (0, 40) (room for its title bar), so the graph opens in view without extra.ds
        x0, y0 = min(n.pos[0] for n in self.nodes), min(n.pos[1] for n in self.nodes) - 40
        nodes = []
        for node in self.nodes:
            s = schema(node.type)
            ins = [{"name": name, "type": typ, "link": next((l[0] for l in links if l[3] == node.id and l[4] == slot),
                                                             None)}
                   for slot, (name, typ) in enumerate(s.sockets)]
            outs = [{"name": name, "type": typ, "links": [l[0] for l in links if l[1] == node.id and l[2] == slot],
                     "slot_index": slot}
                    for slot, (name, typ) in enumerate(s.outputs)]
            d = {"id": node.id, "type": node.type}
            if node.title:
                d["title"] = node.title
            d.update({"pos": [node.pos[0] - x0, node.pos[1] - y0], "size": list(node.size), "flags": {}, "order": order[node.id],
                      "mode": 0, "inputs": ins, "outputs": outs})
            if node.type in FRONTEND_ONLY_NODES:
                d["properties"] = {}
                d.update(NOTE_COLORS)
            else:
                d["properties"] = {"Node name for S&R": node.type}
            if node.models:
                d["properties"]["models"] = [{"name": m.name, "url": m.url, "directory": m.directory}
                                             for m in node.models if m.url]
                if not d["properties"]["models"]:
                    del d["properties"]["models"]
            d["widgets_values"] = [v for _, v in node.widgets]
            nodes.append(d)
        return {"last_node_id": len(self.nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
                "groups": [], "config": {}, "extra": {}, "version": 0.4}

    def api(self) -> dict:
        out = {}
        for node in self.nodes:
            if node.type in FRONTEND_ONLY_NODES:
                continue
            inputs = {name: v for name, v in node.widgets if name not in UI_ONLY_WIDGETS}
            for name, _ in schema(node.type).sockets:
                if name in node.inputs:
                    src = node.inputs[name]
                    inputs[name] = [str(src.node.id), src.slot]
            out[str(node.id)] = {"class_type": node.type, "inputs": inputs}
        return out


# ------------------------------------------------------------------------------------------ shared pieces
HF = "https://huggingface.co"
CLIP_L = Model("clip_l.safetensors", "text_encoders", f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors")
T5XXL = Model("t5xxl_fp16.safetensors", "text_encoders", f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors")
UMT5 = Model("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders",
             f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors")
WAN_VAE = Model("wan_2.1_vae.safetensors", "vae",
                f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/vae/wan_2.1_vae.safetensors")
LTXV = Model("ltx-video-2b-v0.9.5.safetensors", "checkpoints",
             f"{HF}/Lightricks/LTX-Video/resolve/main/ltx-video-2b-v0.9.5.safetensors")
LTXV_NEGATIVE = ("low quality, worst quality, blurry, deformed, distorted, disfigured, motion smear, "
                 "motion artifacts, flicker, fused fingers, bad anatomy, watermark, text")
WAN_NEGATIVE = ("oversaturated colors, overexposed, static, blurry details, subtitles, text, watermark, "
                "worst quality, low quality, JPEG artifacts, ugly, deformed, extra fingers, poorly drawn hands, "
                "poorly drawn face, fused fingers, messy background, still frame")
SEED = 20250101


def cache_plan(steps: int, order: int, interval: int, warmup: int, final_steps: int = 1, mode: str = "fixed",
               speed: float = 0.0, **_ignored) -> str:
    """One line saying which steps run the model, computed by the same code the node runs (``speed`` > 0: the
    simple node's even placement, whose steps depend on the model's schedule: only their number is given)."""
    if speed > 0:
        mode = "even"
    flags = plan(CacheSettings(mode=mode, order=order, interval=interval, warmup=warmup, speed=speed,
                               final_steps=final_steps).validate(), steps)
    computed = [i for i, f in enumerate(flags) if f]
    if mode == "even":
        return (f"With {steps} steps the model runs on {len(computed)} of them ({steps / len(computed):.1f}x fewer "
                f"calls): the first, the last, and steps spread between, closer together where the schedule's "
                f"steps are longer or the sampler leans on a step's output more. Every other step is extrapolated.")
    return (f"With {steps} steps the model runs on steps {', '.join(map(str, computed))} "
            f"({len(computed)} of {steps} calls, {steps / len(computed):.1f}x fewer); every other step "
            f"is extrapolated.")


def models_note(wf: Workflow, pos, extra: str = "", size=(420, 260)) -> Node:
    lines = ["Model files (ComfyUI/models/<folder>/):", ""]
    seen = set()
    for node in wf.nodes:
        for m in node.models:
            if m.name not in seen:
                seen.add(m.name)
                lines.append(f"- {m.directory}/{m.name}" + (f"\n  {m.url}" if m.url else ""))
    if extra:
        lines += ["", extra.strip()]
    return wf.note(pos, "\n".join(lines), size=size, title="Models")


def video_out(wf: Workflow, pos, images, fps: float, prefix: str) -> Node:
    """Animated WEBP: loads and plays in every ComfyUI version (swap in CreateVideo + Save Video for MP4)."""
    return wf.add("SaveAnimatedWEBP", pos, size=(560, 520), images=images, filename_prefix=prefix, fps=fps)


AB_HOW = ("AB-Cache skips model calls and extrapolates the skipped outputs from the last computed ones "
          "(Adams-Bashforth / Lagrange weights on the real noise levels). AB-Cache node: speed = how many times "
          "fewer model calls spread over the steps, first and last step included (speed 0 uses order / interval / "
          "warm-up instead). Advanced node, fixed mode: order = how many computed outputs each skipped one is "
          "extrapolated from; interval = after the warm-up, the model runs on every interval-th step; warmup = "
          "first steps that always run; the last step always runs.")
AB_TUNE = ("For more speed raise the speed (3, 4) or, in fixed mode, the interval; for more fidelity lower it. "
           "To compare, bypass the AB-Cache node (Ctrl+B): the seed is fixed.")


# ------------------------------------------------------------------------------------------------ workflows
def flux1_dev_t2i() -> Workflow:
    wf = Workflow("flux1_dev_t2i")
    steps, ab = 20, dict(order=2, interval=4, warmup=3, speed=2.5)
    unet = wf.add("UNETLoader", (0, 0), size=350, unet_name=Model(
        "flux1-dev.safetensors", "diffusion_models", f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors"))
    clip = wf.add("DualCLIPLoader", (0, 130), size=350, clip_name1=CLIP_L, clip_name2=T5XXL, type="flux")
    vae = wf.add("VAELoader", (0, 300), size=350, vae_name=Model(
        "ae.safetensors", "vae", f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors"))
    latent = wf.add("EmptySD3LatentImage", (0, 400), width=1024, height=1024)
    text = wf.add("CLIPTextEncode", (400, 130), size=(420, 180), clip=clip, text=(
        "A cozy wooden cabin on a snowy mountain ridge at blue hour, warm light glowing from the windows, "
        "smoke curling from the chimney, pine trees dusted with snow, the first stars in a clear sky, "
        "highly detailed photograph"))
    positive = wf.add("FluxGuidance", (400, 350), conditioning=text, guidance=3.5)
    negative = wf.add("ConditioningZeroOut", (400, 450), conditioning=text)
    cache = wf.add("ABCache", (400, 0), model=unet, **ab)
    sampler = wf.add("KSampler", (870, 0), model=cache, positive=positive, negative=negative, latent_image=latent,
                     seed=SEED, steps=steps, cfg=1.0, sampler_name="euler", scheduler="simple")
    image = wf.add("VAEDecode", (870, 300), samples=sampler, vae=vae)
    wf.add("SaveImage", (1220, 0), size=(560, 600), images=image, filename_prefix="abcache/flux1_dev")
    wf.settings_note(
        (400, 560),
        f"AB-Cache on FLUX.1 [dev]: speed {ab['speed']:g} (model calls spread over the steps, first and last step "
        f"included).",
        cache_plan(steps, **ab),
        "FLUX dev is guidance-distilled (cfg 1, no negative pass), so every skipped step saves one full "
        "forward. Its flow trajectory is smooth: a step right after a computed one extrapolates the output "
        "linearly in sigma, a step further away the model's noise estimate (fitted through the last computed "
        "steps and recombined with the current latent). At 28-50 steps speed 3 is a good choice.")
    models_note(wf, (0, 560), "Low on memory: flux1-dev-fp8 weights (weight_dtype fp8_e4m3fn) and "
                              "t5xxl_fp8_e4m3fn.safetensors work the same way.", size=(380, 330))
    return wf


def hunyuan_video_t2v() -> Workflow:
    wf = Workflow("hunyuan_video_t2v")
    steps, ab = 20, dict(order=2, interval=3, warmup=3)
    base = f"{HF}/Comfy-Org/HunyuanVideo_repackaged/resolve/main/split_files"
    unet = wf.add("UNETLoader", (0, 0), size=380, unet_name=Model(
        "hunyuan_video_t2v_720p_bf16.safetensors", "diffusion_models",
        f"{base}/diffusion_models/hunyuan_video_t2v_720p_bf16.safetensors"))
    clip = wf.add("DualCLIPLoader", (0, 130), size=380, clip_name1=CLIP_L, type="hunyuan_video", clip_name2=Model(
        "llava_llama3_fp8_scaled.safetensors", "text_encoders", f"{base}/text_encoders/llava_llama3_fp8_scaled.safetensors"))
    vae = wf.add("VAELoader", (0, 300), size=380, vae_name=Model(
        "hunyuan_video_vae_bf16.safetensors", "vae", f"{base}/vae/hunyuan_video_vae_bf16.safetensors"))
    latent = wf.add("EmptyHunyuanLatentVideo", (0, 400), width=848, height=480, length=73)
    text = wf.add("CLIPTextEncode", (420, 130), size=(420, 180), clip=clip, text=(
        "A red fox trots through fresh snow in a quiet birch forest, its breath steaming in the cold air, "
        "soft morning light between the trees, the camera tracking alongside at ground level"))
    guidance = wf.add("FluxGuidance", (420, 350), conditioning=text, guidance=6.0)
    shift = wf.add("ModelSamplingSD3", (420, 0), model=unet, shift=7.0)
    cache = wf.add("ABCacheAdvanced", (880, -260), model=shift, mode="fixed", coordinate="auto",
                   final_steps=1, cache_device="same", **ab)
    guider = wf.add("BasicGuider", (880, 130), model=cache, conditioning=guidance)
    noise = wf.add("RandomNoise", (880, 230), noise_seed=SEED)
    ksel = wf.add("KSamplerSelect", (880, 340), sampler_name="euler")
    sigmas = wf.add("BasicScheduler", (880, 430), model=shift, scheduler="simple", steps=steps)
    sampler = wf.add("SamplerCustomAdvanced", (1240, 0), noise=noise, guider=guider, sampler=ksel, sigmas=sigmas,
                     latent_image=latent)
    frames = wf.add("VAEDecodeTiled", (1240, 160), samples=sampler["output"], vae=vae, tile_size=256, overlap=64,
                    temporal_size=64, temporal_overlap=8)
    video_out(wf, (1600, 0), frames, 24.0, "abcache/hunyuan_video")
    wf.settings_note(
        (420, 560),
        f"AB-Cache (Advanced) on HunyuanVideo: fixed mode, order {ab['order']}, interval {ab['interval']}, "
        f"warmup {ab['warmup']}, final_steps 1, coordinate auto (= sigma: a flow model).",
        cache_plan(steps, **ab),
        "HunyuanVideo uses embedded guidance (FluxGuidance, no negative pass), so each skipped step saves one "
        "full forward of the 13B transformer. The advanced node lets you switch to mode 'adaptive' "
        "(error-controlled skipping; tolerance and max_skips apply) or keep more final steps exact. "
        "At 30-50 steps, interval 4 is a good choice.")
    models_note(wf, (0, 560), size=(400, 380))
    return wf


def _ltxv(name: str, i2v: bool) -> Workflow:
    wf = Workflow(name)
    steps = 30
    ckpt = wf.add("CheckpointLoaderSimple", (0, 0), size=350, ckpt_name=LTXV)
    clip = wf.add("CLIPLoader", (0, 130), size=350, clip_name=T5XXL, type="ltxv")
    prompt = ("A lighthouse stands on a rocky cliff above a stormy sea at dusk. Waves crash against the rocks "
              "below and throw white spray into the air while the beam of the lamp sweeps slowly across low, "
              "fast-moving clouds. The camera pushes in slowly from a distance. The scene is lit by the last "
              "orange glow on the horizon and the cold white light of the lamp. The footage looks like a real "
              "documentary shot.")
    if i2v:
        prompt = ("The scene in the image comes to life. The camera pushes in slowly and steadily while a gentle "
                  "breeze moves through the scene, light shifts softly across the surfaces and small details move "
                  "naturally. Realistic lighting, smooth motion, high detail, consistent with the first frame.")
    pos = wf.add("CLIPTextEncode", (400, 0), size=(420, 200), clip=clip, text=prompt)
    neg = wf.add("CLIPTextEncode", (400, 240), size=(420, 130), clip=clip, text=LTXV_NEGATIVE)
    if i2v:
        image = wf.add("LoadImage", (0, 280), size=(350, 330), image="example.png")
        cond = wf.add("LTXVImgToVideo", (400, 420), positive=pos, negative=neg, vae=ckpt["VAE"], image=image,
                      width=768, height=512, length=97, strength=0.15)
        pos, neg, latent = cond["positive"], cond["negative"], cond["latent"]
        ab = dict(order=2, interval=3, warmup=3, final_steps=2)
        cache = wf.add("ABCacheAdvanced", (870, -400), model=ckpt["MODEL"], mode="fixed", coordinate="auto",
                       cache_device="same", **ab)
    else:
        latent = wf.add("EmptyLTXVLatentVideo", (0, 280), width=768, height=512, length=97)
        ab = dict(order=2, interval=4, warmup=3, speed=2.5)
        cache = wf.add("ABCache", (870, -150), model=ckpt["MODEL"], **ab)
    conditioning = wf.add("LTXVConditioning", (400, 660 if i2v else 420), positive=pos, negative=neg, frame_rate=25.0)
    sigmas = wf.add("LTXVScheduler", (870, 0), latent=latent, steps=steps, max_shift=2.05, base_shift=0.95,
                    stretch=True, terminal=0.1)
    ksel = wf.add("KSamplerSelect", (870, 180), sampler_name="euler")
    sampler = wf.add("SamplerCustom", (870, 280), model=cache, positive=conditioning["positive"],
                     negative=conditioning["negative"], sampler=ksel, sigmas=sigmas, latent_image=latent,
                     noise_seed=SEED, cfg=3.0)
    frames = wf.add("VAEDecode", (1220, 0), samples=sampler["output"], vae=ckpt["VAE"])
    video_out(wf, (1220, 120), frames, 24.0, f"abcache/{name}")
    if i2v:
        what = (f"AB-Cache (Advanced) on LTX-Video image-to-video: fixed mode, order {ab['order']}, interval "
                f"{ab['interval']}, warmup {ab['warmup']}, final_steps {ab['final_steps']}. final_steps 2 keeps "
                f"the last two (lowest-noise) steps exact, where the fine detail is set.")
    else:
        what = f"AB-Cache on LTX-Video text-to-video: speed {ab['speed']:g} (model calls spread over the steps)."
    wf.settings_note(
        (0, 660 if i2v else 450), what, cache_plan(steps, **ab),
        "With cfg 3 each model call runs the positive and the negative prompt; each is extrapolated from its "
        "own history. The cache sits between the checkpoint's MODEL output and SamplerCustom; "
        "LTXVScheduler needs no model.", size=(380, 420))
    models_note(wf, (1220, 680), "LTX-Video needs long, descriptive prompts." +
                (" Load any image in the Load Image node; it becomes the first frame." if i2v else ""),
                size=(560, 200))
    return wf


def ltxv_t2v() -> Workflow:
    return _ltxv("ltxv_t2v", i2v=False)


def ltxv_i2v() -> Workflow:
    return _ltxv("ltxv_i2v", i2v=True)


def wan21_t2v() -> Workflow:
    wf = Workflow("wan21_t2v")
    steps, ab = 30, dict(order=2, interval=4, warmup=3, speed=3.0)
    unet = wf.add("UNETLoader", (0, 0), size=380, unet_name=Model(
        "wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models",
        f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors"))
    clip = wf.add("CLIPLoader", (0, 130), size=380, clip_name=UMT5, type="wan")
    vae = wf.add("VAELoader", (0, 280), size=380, vae_name=WAN_VAE)
    latent = wf.add("EmptyHunyuanLatentVideo", (0, 380), width=832, height=480, length=33)
    pos = wf.add("CLIPTextEncode", (420, 0), size=(420, 180), clip=clip, text=(
        "A small sailboat glides across a calm turquoise bay at sunrise, gentle ripples spreading behind it, "
        "seagulls circling overhead, the camera slowly orbiting the boat"))
    neg = wf.add("CLIPTextEncode", (420, 220), size=(420, 180), clip=clip, text=WAN_NEGATIVE)
    shift = wf.add("ModelSamplingSD3", (880, -200), model=unet, shift=8.0)
    cache = wf.add("ABCache", (880, -100), model=shift, **ab)
    sampler = wf.add("KSampler", (880, 60), model=cache, positive=pos, negative=neg, latent_image=latent,
                     seed=SEED, steps=steps, cfg=6.0, sampler_name="uni_pc", scheduler="simple")
    frames = wf.add("VAEDecode", (1240, 0), samples=sampler, vae=vae)
    video_out(wf, (1240, 120), frames, 16.0, "abcache/wan21_t2v")
    wf.settings_note(
        (420, 440),
        f"AB-Cache on Wan 2.1 text-to-video: speed {ab['speed']:g} (model calls spread over the steps).",
        cache_plan(steps, **ab),
        "The cache sits after ModelSamplingSD3 (shift 8), right before the sampler. With cfg 6 the positive "
        "and negative passes are extrapolated separately. uni_pc is a multistep sampler and works unchanged. "
        "The same settings suit the 14B model; at 50 steps speed 3-4.")
    models_note(wf, (0, 560), size=(380, 260))
    return wf


def wan22_a14b_t2v() -> Workflow:
    wf = Workflow("wan22_a14b_t2v")
    steps, switch = 20, 10
    high_ab = low_ab = dict(order=2, interval=4, warmup=3, speed=2.0)
    base = f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
    high = wf.add("UNETLoader", (0, 0), size=420, title="Load Diffusion Model (high noise)", unet_name=Model(
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models",
        f"{base}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"))
    low = wf.add("UNETLoader", (0, 120), size=420, title="Load Diffusion Model (low noise)", unet_name=Model(
        "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models",
        f"{base}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"))
    clip = wf.add("CLIPLoader", (0, 250), size=420, clip_name=UMT5, type="wan")
    vae = wf.add("VAELoader", (0, 400), size=420, vae_name=Model(
        "wan_2.1_vae.safetensors", "vae", f"{base}/vae/wan_2.1_vae.safetensors"))
    latent = wf.add("EmptyHunyuanLatentVideo", (0, 500), width=640, height=640, length=81)
    pos = wf.add("CLIPTextEncode", (460, 250), size=(420, 160), clip=clip, text=(
        "A hot-air balloon drifts slowly over a valley of vineyards at golden hour, its shadow gliding across "
        "the rows of vines, a river glinting in the distance, cinematic aerial shot"))
    neg = wf.add("CLIPTextEncode", (460, 450), size=(420, 160), clip=clip, text=WAN_NEGATIVE)
    shift_high = wf.add("ModelSamplingSD3", (460, 0), model=high, shift=8.0)
    shift_low = wf.add("ModelSamplingSD3", (460, 120), model=low, shift=8.0)
    cache_high = wf.add("ABCache", (920, -300), title="AB-Cache (high-noise expert)", model=shift_high, **high_ab)
    cache_low = wf.add("ABCache", (1270, -300), title="AB-Cache (low-noise expert)", model=shift_low, **low_ab)
    first = wf.add("KSamplerAdvanced", (920, -100), title="KSampler (high noise: steps 0-10)", model=cache_high,
                   positive=pos, negative=neg, latent_image=latent, add_noise="enable", noise_seed=SEED,
                   steps=steps, cfg=3.5, sampler_name="euler", scheduler="simple", start_at_step=0,
                   end_at_step=switch, return_with_leftover_noise="enable")
    second = wf.add("KSamplerAdvanced", (1270, -100), title="KSampler (low noise: steps 10-20)", model=cache_low,
                    positive=pos, negative=neg, latent_image=first, add_noise="disable", noise_seed=0,
                    steps=steps, cfg=3.5, sampler_name="euler", scheduler="simple", start_at_step=switch,
                    end_at_step=10000, return_with_leftover_noise="disable")
    frames = wf.add("VAEDecode", (1620, -100), samples=second, vae=vae)
    video_out(wf, (1620, 20), frames, 16.0, "abcache/wan22_a14b_t2v")
    wf.settings_note(
        (920, 480),
        f"Wan 2.2 A14B is two experts: the high-noise model samples steps 0-{switch}, the low-noise model steps "
        f"{switch}-{steps}. Each model has its OWN AB-Cache node: each KSampler (Advanced) is a separate sampling "
        f"call, so each cache plans only the {steps - switch} steps it runs and never mixes the two models' outputs.",
        f"High-noise expert: speed {high_ab['speed']:g}. " + cache_plan(steps - switch, **high_ab),
        f"Low-noise expert: speed {low_ab['speed']:g}. " + cache_plan(steps - switch, **low_ab),
        "Each expert samples only 10 steps, so each asks for speed 2 (at 3 only 3 of its 10 steps would run, too "
        "few to beat simply sampling fewer steps). With more steps per expert (e.g. 40 in all) raise the speed "
        "to 3. With the 4-step LightX2V LoRAs there is nothing left to skip: bypass both AB-Cache nodes.",
        size=(680, 460))
    models_note(wf, (0, 680), size=(440, 300))
    return wf


def cogvideox_5b_t2v() -> Workflow:
    wf = Workflow("cogvideox_5b_t2v")
    steps, ab = 50, dict(order=3, interval=3, warmup=4, final_steps=2)
    unet = wf.add("UNETLoader", (0, 0), size=380, unet_name=Model("cogvideox_5b_t2v_bf16.safetensors",
                                                                   "diffusion_models"))
    clip = wf.add("CLIPLoader", (0, 130), size=380, clip_name=T5XXL, type="cogvideox")
    vae = wf.add("VAELoader", (0, 280), size=380, vae_name=Model(
        "cogvideox_vae.safetensors", "vae", f"{HF}/Comfy-Org/void-model/resolve/main/vae/cogvideox_vae.safetensors"))
    latent = wf.add("EmptyHunyuanLatentVideo", (0, 380), width=720, height=480, length=49)
    pos = wf.add("CLIPTextEncode", (420, 0), size=(420, 180), clip=clip, text=(
        "A golden retriever runs along a sandy beach at sunset, splashing through shallow waves, its fur "
        "glowing in the warm light, the camera following at a low angle, cinematic and realistic"))
    neg = wf.add("CLIPTextEncode", (420, 220), size=(420, 120), clip=clip,
                 text="low quality, blurry, distorted, deformed, watermark, text")
    cache = wf.add("ABCacheAdvanced", (880, -300), model=unet, mode="fixed", coordinate="lambda",
                   cache_device="same", **ab)
    sampler = wf.add("KSampler", (880, 100), model=cache, positive=pos, negative=neg, latent_image=latent,
                     seed=SEED, steps=steps, cfg=6.0, sampler_name="euler", scheduler="simple")
    frames = wf.add("VAEDecode", (1240, 0), samples=sampler, vae=vae)
    video_out(wf, (1240, 120), frames, 8.0, "abcache/cogvideox_5b")
    wf.settings_note(
        (420, 400),
        f"AB-Cache (Advanced) on CogVideoX-5B: fixed mode, order {ab['order']}, interval {ab['interval']}, "
        f"warmup {ab['warmup']}, final_steps {ab['final_steps']}, coordinate lambda.",
        cache_plan(steps, **ab),
        "CogVideoX is a VP model (v-prediction, zero-SNR DDPM schedule), not a flow model, so the "
        "extrapolation runs in lambda = -log(sigma). 'auto' picks lambda too; it is set explicitly here to "
        "show it. In the pack's analytic VP benchmark, order 3 in lambda was the most accurate fixed setting "
        "at one model call in three; final_steps 2 keeps the last two steps exact. Needs a ComfyUI with core "
        "CogVideoX support (0.21 or newer).", size=(440, 440))
    models_note(wf, (0, 560), (
        "Core ComfyUI loads CogVideoX only from a single file with ComfyUI's own key layout (blocks.N.q, "
        "attn_out, ff_proj, ...), not from the diffusers folder THUDM/CogVideoX-5b. No official ComfyUI "
        "repackage of the 5B text-to-video transformer was found: put your converted file in "
        "models/diffusion_models and select it in Load Diffusion Model. t5xxl_fp16 is the same T5 as FLUX."),
        size=(380, 380))
    return wf


WORKFLOWS = [flux1_dev_t2i, hunyuan_video_t2v, ltxv_t2v, ltxv_i2v, wan21_t2v, wan22_a14b_t2v, cogvideox_5b_t2v]


# ---------------------------------------------------------------------------------------------- main
def dumps(data, indent: str = "") -> str:
    """JSON with 2-space indentation, but lists of plain values (links, pos, widgets_values) on one line."""
    inner = indent + "  "
    if isinstance(data, dict) and data:
        items = (f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in data.items())
        text = "{\n" + ",\n".join(items) + "\n" + indent + "}"
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        text = "[\n" + ",\n".join(inner + dumps(v, inner) for v in data) + "\n" + indent + "]"
    else:
        text = json.dumps(data, ensure_ascii=False)
    return text if indent else text + "\n"


def render() -> dict[Path, str]:
    """Every output file (absolute path) and its content."""
    files = {}
    for make in WORKFLOWS:
        wf = make()
        files[HERE / f"{wf.name}.json"] = dumps(wf.ui())
        files[HERE / "api" / f"{wf.name}.json"] = dumps(wf.api())
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = ap.parse_args(argv)
    stale = []
    for path, text in render().items():
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if old != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for path in stale:
        print(("stale: " if args.check else "wrote: ") + str(path.relative_to(HERE.parent)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
