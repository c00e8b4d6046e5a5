"""The main job: a trained FLUX-architecture model sampled through a real headless ComfyUI, with and without
AB-Cache, side by side.

    bash devtools/run.sh demo            # fresh machine: sets up .venv and the ComfyUI runtime first
    .venv/bin/python -m devtools.demo    # afterwards

The model is ComfyUI's own ``Flux`` class trained on hand-written digits (benchmarks/train_tiny_flux.py),
loaded through ComfyUI's model config. The demo queues two API-format graphs on a headless ComfyUI server
(``main.py --cpu``): ten KSamplers (digits 0-9, 4 seeds each; euler, 50 steps, cfg 3) on the plain model,
then the same graph with the AB-Cache node (its defaults) between the model and the samplers, plus the
AB-Cache Report node. It prints model calls, wall-clock speed-up (ComfyUI's own execution timestamps) and
PSNR/SSIM against the uncached images, and writes into ``demo_output/`` (or ``--out``):
``side_by_side.png`` (top: full compute, bottom: AB-Cache) and ``report.png`` (the Report node's plot).
The setting is the AB-Cache node's defaults (speed 3: 17 of 50 steps computed, spread by the schedule's step lengths), the same
setting and noise as the benchmark harness (tests/test_demo.py checks that they agree).

Then the video model: ComfyUI's own Wan 2.1 class trained on moving digits (benchmarks/train_tiny_models.py,
8 frames of 32x32), two clips per digit class, euler 30 steps, cfg 5 (shift 8 from the model config), full
compute and the AB-Cache node's defaults in the same server. It prints calls, wall clock, per-frame PSNR/SSIM
and the temporal error (frame-to-frame differences against the full run), and writes
``video_side_by_side.gif`` (animated, loops; top row full compute, bottom row AB-Cache).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELPER = REPO / "tests" / "helper_pack" / "ab_test_nodes"
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from abcache_core import default  # noqa: E402  (pure torch, never imports ComfyUI)

CLASSES = range(10)
SEEDS = 4          # images per class (latent batch), noise seed 1000 + class: as benchmarks/run.py


VIDEO_MODEL = "wan"
VIDEO_SEEDS = 2    # clips per class (latent batch), noise seed 1000 + class: as benchmarks/run.py --model wan


def graph(name: str, batch: int, cached: bool, steps: int, cfg: float, order: int, interval: int, warmup: int,
          speed: float, tag: str, prefix: str, report: bool = False) -> dict:
    """One trained model (``name``: flux or wan), one KSampler per digit class (euler, simple schedule), the
    AB-Cache node between model and samplers when ``cached``; the Report node after the last sampler if asked."""
    g = {"model": {"class_type": "ABTest_TrainedModel", "inputs": {"name": name, "batch_size": batch}},
         "null": {"class_type": "ABTest_ClassConditioning", "inputs": {"name": name, "digit": 10}}}
    model = ["model", 0]
    if cached:
        g["abcache"] = {"class_type": "ABCache", "inputs": {"model": model, "order": order, "interval": interval,
                                                            "warmup": warmup, "speed": speed}}
        model = ["abcache", 0]
    for c in CLASSES:
        g[f"cond{c}"] = {"class_type": "ABTest_ClassConditioning", "inputs": {"name": name, "digit": c}}
        g[f"ks{c}"] = {"class_type": "KSampler", "inputs": {
            "model": model, "positive": [f"cond{c}", 0], "negative": ["null", 0], "latent_image": ["model", 1],
            "seed": 1000 + c, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}}
        g[f"save{c}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"ks{c}", 0],
                                                                 "filename_prefix": f"{tag}/{prefix}{c}"}}
    if cached and report:
        g["report"] = {"class_type": "ABCacheReport", "inputs": {"model": model, "after": [f"ks{CLASSES[-1]}", 0]}}
        g["save_report"] = {"class_type": "SaveImage", "inputs": {"images": ["report", 0],
                                                                  "filename_prefix": f"{tag}/report"}}
    return g


def save_video_side_by_side(full, cached, path, calls_full, calls_cached, scale=4):
    """Animated GIF (loops; browsers and GitHub play it): one clip per class, top row full compute, bottom row
    AB-Cache, one GIF frame per video frame. full/cached: (N, F, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image, ImageDraw

    frames = []
    for f in range(full.shape[1]):
        top = np.concatenate([c[f] for c in full.numpy()], axis=1)
        bottom = np.concatenate([c[f] for c in cached.numpy()], axis=1)
        grid = np.concatenate([top, np.ones((2, top.shape[1])), bottom])
        pic = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8))
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST).convert("RGB")
        canvas = Image.new("RGB", (pic.width + 170, pic.height), "white")
        canvas.paste(pic, (170, 0))
        draw = ImageDraw.Draw(canvas)
        draw.text((8, pic.height // 4 - 10), f"full compute\n{calls_full} model calls", fill="black")
        draw.text((8, 3 * pic.height // 4 - 10), f"AB-Cache\n{calls_cached} model calls", fill="black")
        draw.text((8, pic.height - 14), f"frame {f + 1}/{full.shape[1]}", fill="gray")
        frames.append(canvas.convert("P", palette=Image.ADAPTIVE, colors=64))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=180, loop=0, optimize=False)


def _exec_seconds(entry: dict) -> float:
    ts = {m[0]: m[1].get("timestamp") for m in entry["status"]["messages"] if isinstance(m[1], dict)}
    return (ts["execution_success"] - ts["execution_start"]) / 1000.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=3.0)
    for name in ("order", "interval", "warmup"):      # the AB-Cache node's defaults
        ap.add_argument(f"--{name}", type=int, default=default(name))
    ap.add_argument("--speed", type=float, default=default("speed"), help="the node's speed (0: interval/warm-up)")
    ap.add_argument("--video-steps", type=int, default=30, help="steps of the video model (0: skip the video)")
    ap.add_argument("--video-cfg", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=REPO / "demo_output")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    bar = tqdm(total=5 + 2 * bool(args.video_steps), desc="AB-Cache demo", unit="stage", file=sys.stdout)
    from devtools import runtime

    bar.set_postfix_str("ComfyUI runtime")
    runtime.activate(cpu=True)
    import numpy as np
    import torch
    from PIL import Image, ImageDraw
    from safetensors.torch import load_file

    from benchmarks.run import psnr_ssim
    from benchmarks.user_settings import frame_metrics, temporal_metrics
    from devtools import trained_flux, trained_models
    from devtools.server import ComfyServer

    bar.update()
    bar.set_postfix_str("starting headless ComfyUI")
    args.out.mkdir(parents=True, exist_ok=True)
    # one intra-op thread: on a small CPU model, thread hand-offs cost more than they save
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with ComfyServer({"ab-cache": REPO, "ab_test_nodes": HELPER}, extra_args=["--cache-none"], env=env) as srv:
        bar.update()
        def run(tag, **g):
            """One graph through the server: (latents of all classes, execution seconds, history entry)."""
            bar.set_postfix_str(f"sampling ({tag})")
            entry = srv.run(graph(order=args.order, interval=args.interval, warmup=args.warmup, speed=args.speed,
                                  tag=tag, **g),
                            timeout=1200)
            files = [entry["outputs"][f"save{c}"]["latents"][0] for c in CLASSES]
            lat = [load_file(str(srv.base / "output" / f["subfolder"] / f["filename"]))["latent_tensor"] for f in files]
            bar.update()
            return torch.cat(lat), _exec_seconds(entry), entry

        results = {tag: run(tag, name="flux", batch=SEEDS, cached=cached, steps=args.steps, cfg=args.cfg,
                            prefix="digit", report=True)
                   for tag, cached in (("full", False), ("abcache", True))}
        log = srv.log_text()
        bar.set_postfix_str("metrics and pictures")
        calls = [tuple(map(int, m)) for m in re.findall(r"AB-Cache: computed (\d+)/(\d+) model calls", log)]
        rep = results["abcache"][2]["outputs"]["save_report"]["images"][0]
        report_src = srv.base / "output" / rep["subfolder"] / rep["filename"]
        Image.open(report_src).save(args.out / "report.png")
        video = {tag: run(tag, name=VIDEO_MODEL, batch=VIDEO_SEEDS, cached=cached, steps=args.video_steps,
                          cfg=args.video_cfg, prefix="video")[:2]
                 for tag, cached in ((("video_full", False), ("video_abcache", True)) if args.video_steps else ())}
        vlog = srv.log_text()[len(log):]
        vcalls = [tuple(map(int, m)) for m in re.findall(r"AB-Cache: computed (\d+)/(\d+) model calls", vlog)]

    full_img = trained_flux.decode_gray(results["full"][0])
    ab_img = trained_flux.decode_gray(results["abcache"][0])
    psnr, ssim = psnr_ssim(full_img, ab_img)
    # side by side: one image per class (first seed); top row full compute, bottom row AB-Cache
    pick = [c * SEEDS for c in CLASSES]
    top = torch.cat([full_img[i] for i in pick], dim=1)
    bottom = torch.cat([ab_img[i] for i in pick], dim=1)
    grid = (torch.cat([top, torch.ones(2, top.shape[1]), bottom]).clamp(0, 1).numpy() * 255).astype(np.uint8)
    pic = Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).convert("RGB")
    canvas = Image.new("RGB", (pic.width + 200, pic.height), "white")
    canvas.paste(pic, (200, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((10, pic.height // 4 - 10), f"full compute\n{args.steps} model calls", fill="black")
    per_run = [c for c, _ in calls]
    draw.text((10, 3 * pic.height // 4 - 10), f"AB-Cache\n{max(per_run, default=0)} model calls", fill="black")
    canvas.save(args.out / "side_by_side.png")
    bar.update()
    bar.close()

    computed = sum(c for c, _ in calls)
    total = sum(t for _, t in calls)
    t_full, t_ab = results["full"][1], results["abcache"][1]
    print(f"\nAB-Cache demo: trained FLUX-architecture model (ComfyUI Flux class), digits 0-9 x {SEEDS} seeds, "
          f"euler {args.steps} steps, cfg {args.cfg}, ComfyUI {runtime.comfyui_version()} headless on CPU")
    print(f"  model calls   full {total}  ->  AB-Cache {computed}   ({total / max(computed, 1):.2f}x fewer)")
    print(f"  wall clock    full {t_full:.1f} s  ->  AB-Cache {t_ab:.1f} s   ({t_full / t_ab:.2f}x faster)")
    print(f"  fidelity      PSNR {psnr:.1f} dB, SSIM {ssim:.4f} against the full-compute images")
    print(f"  pictures      {args.out / 'side_by_side.png'}  {args.out / 'report.png'}")
    res = dict(calls_full=total, calls_cached=computed, seconds_full=t_full, seconds_cached=t_ab, psnr=psnr,
               ssim=ssim, images_full=full_img, images_cached=ab_img)
    if video:
        kit = trained_models.load_kit(VIDEO_MODEL)
        vf, va = kit.decode_gray(video["video_full"][0]), kit.decode_gray(video["video_abcache"][0])
        p, q = frame_metrics(vf, va)
        vpsnr, vssim = sum(p) / len(p), sum(q) / len(q)
        tpsnr, trel = temporal_metrics(vf, va)
        vcomp, vtot = sum(c for c, _ in vcalls), sum(t for _, t in vcalls)
        first = [c * VIDEO_SEEDS for c in CLASSES]
        save_video_side_by_side(vf[first], va[first], args.out / "video_side_by_side.gif",
                                max((t for _, t in vcalls), default=0), max((c for c, _ in vcalls), default=0))
        vt_full, vt_ab = video["video_full"][1], video["video_abcache"][1]
        print(f"\nAB-Cache demo, video: trained Wan 2.1 model (ComfyUI WAN21_T2V class), moving digits 0-9 x "
              f"{VIDEO_SEEDS} clips of {kit.spec.frames} frames, euler {args.video_steps} steps, "
              f"cfg {args.video_cfg:g}, "
              f"shift 8")
        print(f"  model calls   full {vtot}  ->  AB-Cache {vcomp}   ({vtot / max(vcomp, 1):.2f}x fewer)")
        print(f"  wall clock    full {vt_full:.1f} s  ->  AB-Cache {vt_ab:.1f} s   ({vt_full / vt_ab:.2f}x faster)")
        print(f"  fidelity      PSNR {vpsnr:.1f} dB, SSIM {vssim:.4f} per frame; temporal PSNR {tpsnr:.1f} dB "
              f"(frame-to-frame differences, relative error {100 * trel:.1f} %)")
        print(f"  animation     {args.out / 'video_side_by_side.gif'}")
        res.update(video_calls_full=vtot, video_calls_cached=vcomp, video_seconds_full=vt_full,
                   video_seconds_cached=vt_ab, video_psnr=vpsnr, video_ssim=vssim, video_tpsnr=tpsnr,
                   video_trel=trel, video_full=vf, video_cached=va)
    return res


if __name__ == "__main__":
    main()
    raise SystemExit(0)
