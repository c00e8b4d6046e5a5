"""Train the small class-conditional SD 1.5 (VP, epsilon) and Wan 2.1 (video, flow) models in
``benchmarks/assets/`` (the FLUX digits model has its own script, ``benchmarks/train_tiny_flux.py``).

    python -m benchmarks.train_tiny_models sd15 [--steps N] [--batch B] [--seed 0] [--device cpu|cuda]
    python -m benchmarks.train_tiny_models wan
    python -m benchmarks.train_tiny_models sd15 --time 20    # only time 20 optimisation steps, write nothing
    python -m benchmarks.train_tiny_models wan --eval-only   # re-run the sample-quality check on saved weights

Models (configuration, latent map and loader: ``devtools/trained_models.py``): ComfyUI's own classes built
through ``comfy.supported_models.SD15`` / ``WAN21_T2V`` -> ``get_model``. Training calls the real, unmodified
``diffusion_model`` forward (both are autograd-safe) with exactly the inputs ComfyUI's
``BaseModel._apply_model`` gives it at inference, computed by the model's own ``model_sampling``:

    x_noisy = model_sampling.noise_scaling(sigma, eps, x0)   # SD: x0 + sigma eps; Wan: sigma eps + (1-sigma) x0
    x_in    = model_sampling.calculate_input(sigma, x_noisy) # SD: x_noisy / sqrt(sigma^2 + 1); Wan: x_noisy
    t       = model_sampling.timestep(sigma)                 # SD: the discrete index 0..999; Wan: 1000 sigma
    out     = diffusion_model(x_in, t, context)              # target SD: eps (epsilon prediction); Wan: eps - x0

SD 1.5: ``ModelSamplingDiscrete`` with SD's scaled-linear betas (0.00085..0.012, 1000 steps); timesteps drawn
uniformly from 0..999 (DDPM training). Wan: ``ModelSamplingDiscreteFlow`` (shift 8 at inference); sigma drawn
logit-normal(0, 1) with 10 % uniform, then half of the batch shifted by 3 towards noise (inference with
shift 8 spends most steps at high sigma).

Data (nothing is downloaded): scikit-learn's ``load_digits`` (1797 8x8 images shipped inside the wheel).
SD 1.5 sees each digit upsampled to 16x16 (latent 4x8x8 by pixel_unshuffle(2)). Wan sees 8-frame 32x32 clips
generated on the fly: the digit (16x16) moves in a straight line between two random positions on a black
canvas, with a random linear brightness ramp (latent 16x8x8x8, pixel_unshuffle(4) per frame).

Class-conditional with a null class (label dropout 0.1) for CFG; AdamW, warm-up + cosine decay, gradient
clipping, EMA of the weights (saved). Deterministic seeding of init, data, noise and sigma. The recipe (steps,
batch) is sized so that one CPU thread of the 2-core development machine finishes within 45 minutes
(``--time`` measures the per-step CPU time; the JSON records it next to where training actually ran).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.train_tiny_flux import lr_at, train_step, use_ema, write_provenance  # noqa: E402  (one copy of the shared recipe helpers)

NULL_DROPOUT = 0.1
UNIFORM_FRACTION = 0.1
CPU_BUDGET_S = 45 * 60
DATA_PROVENANCE = ("scikit-learn load_digits, 1797 8x8 images, UCI ML hand-written digits "
                   "(Alpaydin & Kaynak; sklearn/datasets/data/digits.csv.gz inside the scikit-learn wheel)")

RECIPES = {     # steps and batch sized for <= 45 min of one CPU thread (see --time); lr, warm-up, EMA
    "sd15": dict(steps=3800, batch=64, lr=1e-3, warmup=200, ema=0.999),
    # chosen by the sample-quality check among three recipes of <= 45 CPU-min, all trained once on a GPU:
    # batch 32 x 4200 (72 % frame agreement at cfg 5), 16 x 6000 lr 2e-3 (76 %), 24 x 5600 (86 %)
    "wan": dict(steps=5600, batch=24, lr=1e-3, warmup=200, ema=0.999),
}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def load_digits_data():
    """(images8 (1797, 8, 8) float 0..16, labels (1797,), scikit-learn version)."""
    import sklearn
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images).float(), torch.from_numpy(d.target).long(), sklearn.__version__


def moving_clips(images8, g, frames=8, canvas=32, size=16):
    """(N, frames, canvas, canvas) in [0, 1]: each digit (upsampled to ``size``) moves in a straight line
    between two random integer positions, with a random linear brightness ramp (0.6..1 -> 0.6..1)."""
    from devtools.trained_models import digits_to_pixels

    n = images8.shape[0]
    digit = digits_to_pixels(images8, size)[:, 0]                    # (N, size, size)
    span = canvas - size
    start = torch.randint(0, span + 1, (n, 2), generator=g).float()
    end = torch.randint(0, span + 1, (n, 2), generator=g).float()
    b0 = 0.6 + 0.4 * torch.rand(n, generator=g)
    b1 = 0.6 + 0.4 * torch.rand(n, generator=g)
    out = torch.zeros((n, frames, canvas, canvas))
    for f in range(frames):
        a = f / (frames - 1)
        pos = (start + (end - start) * a).round().long()
        bright = b0 + (b1 - b0) * a
        for i in range(n):
            y, x = int(pos[i, 0]), int(pos[i, 1])
            out[i, f, y:y + size, x:x + size] = digit[i] * bright[i]
    return out


class ClassTables(torch.nn.Module):
    """Learned per-class context tokens; row NULL_CLASS = unconditional."""

    def __init__(self, spec, generator):
        super().__init__()
        from devtools.trained_models import NULL_CLASS

        self.context = torch.nn.Parameter(
            torch.randn((NULL_CLASS + 1, spec.cond_tokens, spec.context_dim), generator=generator))


# --------------------------------------------------------------------------------------------------
# Init
# --------------------------------------------------------------------------------------------------


def init_weights(name, dm, generator):
    """ComfyUI builds layers without initialising them (``disable_weight_init`` ops). Matrices / kernels:
    N(0, 1/fan_in); norm scales 1; other vectors 0; Wan's per-block modulation N(0, 1/dim); the residual
    branches' output layers and the final projection start at zero (every block starts as the identity)."""
    with torch.no_grad():
        for mod_name, mod in dm.named_modules():
            is_norm = "norm" in type(mod).__name__.lower()
            for pname, p in mod.named_parameters(recurse=False):
                if pname == "modulation":
                    p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
                elif p.ndim >= 2:
                    fan_in = math.prod(p.shape[1:])
                    p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
                elif is_norm and pname in ("weight", "scale"):
                    p.fill_(1.0)
                else:
                    p.zero_()
        for mod_name, mod in dm.named_modules():
            zero = False
            if name == "sd15":
                zero = (mod_name == "out.2" or mod_name.endswith("out_layers.3") or mod_name.endswith("proj_out"))
            else:
                zero = (mod_name == "head.head" or mod_name.endswith("self_attn.o")
                        or mod_name.endswith("cross_attn.o") or mod_name.endswith("ffn.2"))
            if zero:
                for p in mod.parameters(recurse=False):
                    p.zero_()


# --------------------------------------------------------------------------------------------------
# Objective
# --------------------------------------------------------------------------------------------------


def sample_sigma(name, model, n, g):
    """Per-sample sigma in the model's own sigma range."""
    ms = model.model_sampling
    if name == "sd15":
        idx = torch.randint(0, ms.sigmas.shape[0], (n,), generator=g)
        return ms.sigmas.detach().float().cpu()[idx]
    u = torch.sigmoid(torch.randn(n, generator=g))
    uni = torch.rand(n, generator=g) < UNIFORM_FRACTION
    u = torch.where(uni, torch.rand(n, generator=g), u)
    shifted = torch.rand(n, generator=g) < 0.5
    u = torch.where(shifted, 3 * u / (1 + 2 * u), u)
    return u.clamp(1e-3, 1.0)


def loss_fn(name, model, tables, x0, labels, g, device, use_null_dropout=True):
    from devtools.trained_models import NULL_CLASS

    n = x0.shape[0]
    sigma = sample_sigma(name, model, n, g)
    eps = torch.randn(x0.shape, generator=g)
    if use_null_dropout:
        drop = torch.rand(n, generator=g) < NULL_DROPOUT
        labels = torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)
    x0, eps, sigma, labels = x0.to(device), eps.to(device), sigma.to(device), labels.to(device)
    ms = model.model_sampling
    sig = sigma.view(-1, *([1] * (x0.ndim - 1)))
    x_in = ms.calculate_input(sig, ms.noise_scaling(sig, eps, x0))
    t = ms.timestep(sigma)
    ctx = tables.context[labels]
    dm = model.diffusion_model
    out = dm(x_in, t, context=ctx, transformer_options={}) if name == "sd15" else \
        dm(x_in, t, ctx, transformer_options={})
    target = eps if name == "sd15" else eps - x0
    return F.mse_loss(out.float(), target)




# --------------------------------------------------------------------------------------------------
# Checks after training (CPU, through ComfyUI's sampler)
# --------------------------------------------------------------------------------------------------


def digit_classifier(name: str = "sd15"):
    """Logistic regression on the training data of model ``name`` seen through :func:`crop_features`: the 16x16
    digits (sd15), or every frame of moving-digit clips made (seeded) from all 1797 digits (wan)."""
    from sklearn.linear_model import LogisticRegression

    from devtools.trained_models import digits_to_pixels

    images8, labels, _ = load_digits_data()
    if name == "wan":
        frames = moving_clips(images8, torch.Generator().manual_seed(123))
        feats, y = crop_features(frames.reshape(-1, *frames.shape[-2:])), labels.repeat_interleave(frames.shape[1])
    else:
        feats, y = crop_features(digits_to_pixels(images8, 16)[:, 0]), labels
    return LogisticRegression(max_iter=3000).fit(feats, y.numpy())


def crop_features(frames, size=16):
    """(M, H, W) in [0, 1] -> (M, 64): a size x size window around each frame's centre of mass, pooled to 8x8 and
    scaled to a maximum of 1 (brightness-invariant)."""
    m, h, w = frames.shape
    if h == size:
        win = frames
    else:
        ys, xs = torch.arange(h).float(), torch.arange(w).float()
        mass = frames.sum((1, 2)).clamp_min(1e-6)
        cy = (frames.sum(2) * ys).sum(1) / mass
        cx = (frames.sum(1) * xs).sum(1) / mass
        y0 = (cy - size / 2 + 0.5).round().long().clamp(0, h - size)
        x0 = (cx - size / 2 + 0.5).round().long().clamp(0, w - size)
        win = torch.stack([frames[i, y0[i]:y0[i] + size, x0[i]:x0[i] + size] for i in range(m)])
    feats = F.adaptive_avg_pool2d(win.unsqueeze(1).float(), 8).reshape(m, -1)
    return (feats / feats.amax(1, keepdim=True).clamp_min(1e-6)).numpy()


def quality_check(name, patcher, kit, per_class=4, steps=30, cfgs=(1.0, 5.0), seed=0):
    """Sample ``per_class`` items of every class with ComfyUI's sampler and check that a classifier fit on the
    training digits agrees with the requested class (video: every frame, on a crop around the digit)."""
    import comfy.sample
    import numpy as np

    clf = digit_classifier(name)
    sampler, scheduler = ("dpmpp_2m", "karras") if name == "sd15" else ("euler", "simple")
    result = {"sampler": sampler, "scheduler": scheduler, "steps": steps, "per_class": per_class}
    for cfg in cfgs:
        pred, want, finite = [], [], True
        for c in range(10):
            latent = kit.empty_latent(per_class)
            noise = comfy.sample.prepare_noise(latent, seed + c)
            out = comfy.sample.sample(patcher, noise, steps, cfg, sampler, scheduler, kit.conditioning(c),
                                      kit.null_conditioning(), latent, disable_pbar=True, seed=seed + c)
            g = kit.decode_gray(out)
            finite &= bool(torch.isfinite(g).all())
            fr = g.reshape(-1, *g.shape[-2:])
            pred.append(clf.predict(crop_features(fr)))
            want.append(np.full(fr.shape[0], c))
        pred, want = np.concatenate(pred), np.concatenate(want)
        result[f"cfg{cfg:g}"] = {"classifier_agreement": float((pred == want).mean()), "finite": finite}
    return result


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------




def make_batch(name, spec, images8, labels, idx, g_data):
    from devtools.trained_models import digits_to_pixels, pixels_to_model

    if name == "sd15":
        px = digits_to_pixels(images8[idx], spec.image_size)
    else:
        px = moving_clips(images8[idx], g_data, frames=spec.frames, canvas=spec.image_size)
    return pixels_to_model(spec, px), labels[idx]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(RECIPES))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None, help="asset directory (default benchmarks/assets)")
    ap.add_argument("--time", type=int, default=0, help="only time this many steps; write nothing")
    ap.add_argument("--eval-only", action="store_true", help="quality check of the saved weights only")
    ap.add_argument("--record", action="store_true", help="with --eval-only: write the check into the JSON")
    ap.add_argument("--no-check", action="store_true", help="skip the sampling check after training")
    ap.add_argument("--max-wall", type=float, default=0,
                    help="stop early after this many seconds (safety net for a time-limited machine)")
    ap.add_argument("--cpu-estimate", type=float, default=None,
                    help="measured CPU seconds per step on the development machine (recorded in the JSON)")
    args = ap.parse_args(argv)
    name = args.model
    recipe = dict(RECIPES[name])
    recipe["steps"] = args.steps or recipe["steps"]
    recipe["batch"] = args.batch or recipe["batch"]
    recipe["lr"] = args.lr or recipe["lr"]

    torch.set_num_threads(args.threads)
    from devtools import runtime

    cpath = runtime.activate(cpu=(args.device == "cpu"))
    from devtools import trained_models as tm

    spec = tm.spec(name)
    out_dir = args.out or tm.ASSET_DIR
    wpath, mpath = out_dir / spec.weights.name, out_dir / spec.metadata_path.name
    images8, labels_all, sk_version = load_digits_data()

    if args.eval_only:
        patcher, kit = tm.load(name, path=wpath)
        q = quality_check(name, patcher, kit)
        print(json.dumps(q, indent=1))
        if args.record and mpath.is_file():
            meta = json.loads(mpath.read_text())
            meta["checks"] = {"quality": q, "checked_on": f"cpu, torch {torch.__version__}"}
            mpath.write_text(json.dumps(meta, indent=1) + "\n")
        return 0

    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    g_init = torch.Generator().manual_seed(args.seed)
    g_data = torch.Generator().manual_seed(args.seed + 1)
    g_noise = torch.Generator().manual_seed(args.seed + 2)

    model = tm.build_model(spec, torch.float32)
    dm = model.diffusion_model
    init_weights(name, dm, g_init)
    tables = ClassTables(spec, g_init)
    model.to(dev)
    tables.to(dev)
    dm.train()
    params = list(dm.parameters()) + list(tables.parameters())
    n_model = sum(p.numel() for p in dm.parameters())
    n_tab = sum(p.numel() for p in tables.parameters())
    print(f"{name}: {type(model).__name__}/{type(dm).__name__} params {n_model:,} + class tables {n_tab:,}; "
          f"recipe {recipe}; device {dev}", flush=True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], betas=(0.9, 0.99), weight_decay=0.0)

    n = images8.shape[0]
    perm, pos = torch.randperm(n, generator=g_data), 0
    steps, batch = args.time or recipe["steps"], recipe["batch"]
    t0, c0 = time.perf_counter(), time.process_time()
    hist, log = [], []
    for step in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g_data), 0
        idx = perm[pos:pos + batch]
        pos += batch
        x0, lab = make_batch(name, spec, images8, labels_all, idx, g_data)
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, recipe["lr"], recipe["warmup"])
        loss = loss_fn(name, model, tables, x0, lab, g_noise, dev)
        train_step(opt, loss, params, ema, step, recipe["ema"], (dm, tables))
        hist.append(loss.item())
        stop = bool(args.max_wall) and time.perf_counter() - t0 > args.max_wall
        if (step + 1) % args.log_every == 0 or step == steps - 1 or stop:
            el = time.perf_counter() - t0
            k = min(args.log_every, len(hist))
            avg = sum(hist[-k:]) / k
            log.append({"step": step + 1, "loss": round(avg, 5), "seconds": round(el, 1),
                        "cpu_seconds": round(time.process_time() - c0, 1)})
            print(f"step {step + 1:5d}/{steps}  loss {avg:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{el:7.1f}s  ({el / (step + 1):.3f} s/step, cpu {time.process_time() - c0:7.1f}s)", flush=True)
        if stop:
            print(f"stopped early after {step + 1} steps (--max-wall {args.max_wall:g})", flush=True)
            break
    steps_done = len(hist)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.time:
        print(f"TIME {name}: {steps} steps, batch {batch}: {wall / steps:.3f} s/step wall, "
              f"{cpu / steps:.3f} s/step CPU ({args.threads} thread(s)) -> recipe {recipe['steps']} steps = "
              f"{cpu / steps * recipe['steps'] / 60:.1f} CPU-min", flush=True)
        return 0

    use_ema(ema, params, dm)
    with torch.no_grad():
        g_eval = torch.Generator().manual_seed(12345)
        g_evd = torch.Generator().manual_seed(54321)
        tot = 0.0
        for _ in range(2):
            for i in range(0, n, 256):
                idx = torch.arange(i, min(n, i + 256))
                x0, lab = make_batch(name, spec, images8, labels_all, idx, g_evd)
                tot += float(loss_fn(name, model, tables, x0, lab, g_eval, dev, False)) * len(idx)
        eval_loss = tot / (2 * n)
    sd = {k: v.detach().float().cpu().contiguous().clone() for k, v in dm.state_dict().items()}
    sd[tm.COND_PREFIX + "context"] = tables.context.detach().float().cpu().clone()
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(sd, str(wpath), metadata={"format": "pt", "model": f"comfy.supported_models.{spec.config} (tiny)",
                                        "config": json.dumps(spec.unet_config)})
    final_avg = sum(hist[-100:]) / len(hist[-100:])
    est = args.cpu_estimate
    meta = {
        "model": f"{type(dm).__module__}.{type(dm).__name__} via comfy.supported_models.{spec.config} -> "
                 f"comfy.model_base.{type(model).__name__}, {type(model.model_sampling).__name__}, "
                 f"latent_formats.{type(tm.latent_format(spec)).__name__}",
        "description": spec.description,
        "unet_config": spec.unet_config,
        "parameters": {"diffusion_model": n_model, "class_tables": n_tab},
        "conditioning": {"classes": 10, "null_class": tm.NULL_CLASS, "context_tokens": spec.cond_tokens,
                         "context_dim": spec.context_dim, "keys": [tm.COND_PREFIX + "context"]},
        "latent": (f"digit -> {spec.image_size}x{spec.image_size} grayscale (bilinear) -> 2p-1 -> "
                   f"pixel_unshuffle({spec.unshuffle})" + (" per frame" if spec.video else "") +
                   f" = model space {tuple(spec.latent_shape)}; LATENT = latent_format.process_out(model space)"),
        "data": {"provenance": DATA_PROVENANCE, "images": int(n), "scikit_learn": sk_version,
                 **({"clips": f"{spec.frames} frames, 16x16 digit moving linearly between two random positions "
                              f"on a {spec.image_size}x{spec.image_size} canvas, random linear brightness ramp "
                              f"in [0.6, 1], generated on the fly (seeded)"} if spec.video else {})},
        "training": {
            "objective": ("epsilon prediction (VP, SD scaled-linear betas), t = uniform discrete index"
                          if name == "sd15" else "rectified flow, target eps - x0, t = 1000 sigma"),
            "inputs": "model_sampling.noise_scaling / calculate_input / timestep, as BaseModel._apply_model",
            "null_class_dropout": NULL_DROPOUT,
            "seed": args.seed, "steps": steps_done, "planned_steps": steps, "batch": batch, "lr": recipe["lr"], "warmup": recipe["warmup"],
            "lr_schedule": "linear warm-up, cosine to 0.1 x lr", "optimizer": "AdamW(0.9, 0.99), wd 0, clip 1.0",
            "ema": recipe["ema"], "saved_weights": "EMA",
            "final_loss": round(final_avg, 5), "final_loss_note": "mean train loss over the last 100 steps",
            "eval_loss_ema": round(eval_loss, 5),
            "eval_loss_note": "EMA weights, all items x 2 seeded noise draws, no label dropout",
            "trained_on": (f"{args.device}" + (f" ({torch.cuda.get_device_name(0)})" if dev.type == "cuda" else "")
                           + f", {platform.machine()}, {os.cpu_count()} CPUs"),
            "wall_time_s": round(wall, 1), "process_cpu_time_s": round(cpu, 1),
            "cpu_estimate": ({"cpu_seconds_per_step_1_thread": est, "steps": steps_done,
                              "cpu_minutes": round(est * steps_done / 60, 1), "budget_minutes": CPU_BUDGET_S / 60,
                              "measured_with": f"python -m benchmarks.train_tiny_models {name} --time 20 "
                                               f"(2-core development machine, one thread)"}
                             if est else None),
            "loss_log": log,
        },
    }
    write_provenance(meta, mpath, wpath, runtime.comfyui_version(cpath))
    print(f"saved {wpath} ({wpath.stat().st_size / 1e6:.2f} MB); final loss {final_avg:.4f}, "
          f"EMA eval loss {eval_loss:.4f}, {wall / 60:.1f} min", flush=True)
    if not args.no_check:
        patcher, kit = tm.load(name, path=wpath)
        q = quality_check(name, patcher, kit)
        print(json.dumps(q, indent=1), flush=True)
        meta["checks"] = {"quality": q}
        mpath.write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
