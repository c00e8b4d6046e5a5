"""AB-Cache Report: a picture and a one-line summary of the last sampling run of an AB-Cache'd model.

The cached model carries a telemetry sink (numbers only, never tensors) that its OUTER_SAMPLE wrapper fills
when a run ends. Wire the sampler's LATENT output into ``after`` so the report runs after sampling.
"""
from __future__ import annotations

import io as _bytes_io
import math

import numpy as np
import torch
from comfy_api.latest import io

from .integration import KEY, CacheSpec

CATEGORY = "model_patches/ab_cache"


def last_run(model) -> dict:
    spec = model.model_options.get(KEY) if model is not None else None
    if not isinstance(spec, CacheSpec):
        raise ValueError("AB-Cache Report: connect the MODEL output of an AB-Cache node (this model has no AB-Cache).")
    data = spec.sink.last if spec.sink is not None else None
    if not data:
        raise ValueError("AB-Cache Report: this model has not been sampled yet. Connect the sampler's LATENT output "
                         "to 'after' so the report runs after the sampler.")
    return data


def summary_text(data: dict) -> str:
    s, st = data["summary"], data["settings"]
    err = "n/a" if not math.isfinite(s.get("max_error", float("nan"))) else f"{s['max_error']:.2e}"
    return (f"AB-Cache: {s['computed']}/{s['calls']} model calls computed ({s['speedup']:.2f}x fewer), "
            f"mode {st['mode']}, order {st['order']}, coordinate {st['coordinate']}, level {data['level']}, "
            f"largest error estimate {err}")


def render(data: dict, width: int = 960, height: int = 720) -> np.ndarray:
    """RGB uint8 image (H, W, 3) with three panels: sigma per call, order/error estimate, change curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    recs = data["records"]
    idx = np.arange(len(recs))
    sig = np.array([r["sigma"] for r in recs], dtype=float)
    comp = np.array([r["computed"] for r in recs], dtype=bool)
    order = np.array([r["order"] for r in recs], dtype=float)
    err = np.array([r["error"] for r in recs], dtype=float)
    change = np.array([r.get("change", float("nan")) for r in recs], dtype=float)

    dpi = 100
    fig, axes = plt.subplots(3, 1, figsize=(width / dpi, height / dpi), dpi=dpi, sharex=True)
    try:
        ax = axes[0]
        ax.plot(idx, sig, color="0.6", lw=1, zorder=1)
        ax.scatter(idx[comp], sig[comp], s=22, color="tab:blue", label="computed", zorder=2)
        ax.scatter(idx[~comp], sig[~comp], s=22, color="tab:orange", marker="x", label="extrapolated", zorder=2)
        ax.set_ylabel("sigma")
        ax.set_title(summary_text(data), fontsize=8)
        ax.legend(loc="upper right", fontsize=8)

        ax = axes[1]
        ax.bar(idx[~comp], order[~comp], color="tab:orange", alpha=0.6, label="order used")
        ax.set_ylabel("order")
        ax2 = ax.twinx()
        finite = ~comp & np.isfinite(err) & (err > 0)
        if finite.any():
            ax2.semilogy(idx[finite], err[finite], "o-", color="tab:red", ms=3, lw=1, label="error estimate")
        ax2.set_ylabel("error estimate")
        ax.legend(loc="upper left", fontsize=8)

        ax = axes[2]
        ok = comp & np.isfinite(change) & (change > 0)
        if ok.any():
            ax.semilogy(idx[ok], change[ok], "s-", color="tab:green", ms=3, lw=1)
        ax.set_ylabel("rel. change\nbetween computed")
        ax.set_xlabel("model call")
        fig.tight_layout()
        buf = _bytes_io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    from PIL import Image

    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


class ABCacheReportNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ABCacheReport",
            display_name="AB-Cache Report",
            category=CATEGORY,
            description="Plots the last sampling run of an AB-Cache'd model: sigma per model call, computed versus "
                        "extrapolated calls, the order and error estimate of each extrapolation, and the change "
                        "between consecutive computed outputs (the U-shaped curve).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of an AB-Cache node (the one the sampler used)."),
                io.Latent.Input("after", optional=True,
                                tooltip="Connect the sampler's LATENT output here so the report runs after sampling."),
            ],
            outputs=[
                io.Image.Output(tooltip="The report plot."),
                io.String.Output(tooltip="One-line summary: computed/total calls, speed-up, settings."),
            ],
            is_output_node=False,
            not_idempotent=True,
        )

    @classmethod
    def execute(cls, model, after=None) -> io.NodeOutput:
        data = last_run(model)
        img = torch.from_numpy(render(data).astype(np.float32) / 255.0)[None]
        return io.NodeOutput(img, summary_text(data))
