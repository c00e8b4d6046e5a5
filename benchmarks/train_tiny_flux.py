"""Train the small class-conditional FLUX digits model shipped in ``benchmarks/assets/``.

    python -m benchmarks.train_tiny_flux [--steps 4000] [--batch 128] [--seed 0] [--out benchmarks/assets]
    python -m benchmarks.train_tiny_flux --time 20      # only time 20 optimisation steps, write nothing
    python -m benchmarks.train_tiny_flux --eval-only    # re-run the sample-quality check on saved weights

Model: ComfyUI's own ``comfy.ldm.flux.model.Flux`` built through ``comfy.supported_models.Flux`` (see
``devtools/trained_flux.py`` for the configuration, the image <-> latent map and the loader).
Data: scikit-learn's ``load_digits`` (1797 8x8 images of the UCI ML hand-written digits data set, shipped
inside the scikit-learn wheel: nothing is downloaded), upsampled to 32x32 and pixel-unshuffled to (16, 8, 8).

Objective: rectified flow in the diffusion model's own input space (what ``BaseModel._apply_model`` feeds
``diffusion_model``): ``x_t = (1 - t) x0 + t eps``, target velocity ``eps - x0``, timestep input ``t`` (FLUX's
``model_sampling.timestep(sigma) = sigma``), t ~ logit-normal(0, 1) (90 %) or uniform (10 %). Class labels are
replaced by the null class with probability 0.1 so CFG has an unconditional branch; the guidance embedding
input is drawn uniformly from [0, 10] (the model learns to ignore it). AdamW, warm-up + cosine decay,
gradient clipping, EMA of the weights (the EMA weights are what is saved).

Autograd: ComfyUI's FLUX blocks update activations in place (``img += ...`` in DoubleStreamBlock,
``x += ...`` in SingleStreamBlock), which breaks backward. :func:`training_forward` re-states the same
computation out of place, reading the parameters of an unmodified ``Flux`` instance (so the state_dict keys
are ComfyUI's own) and using torch's scaled-dot-product attention; after training the saved weights are loaded
into a fresh, unmodified ComfyUI model and its forward is checked against :func:`training_forward`.

Deterministic: one intra-op thread, seeded generators for init, data order, noise, t and labels.
"""
from __future__ import annotations

import argparse
import hashlib
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

NULL_DROPOUT = 0.1
GUIDANCE_RANGE = (0.0, 10.0)
UNIFORM_T_FRACTION = 0.1
DATA_PROVENANCE = ("scikit-learn load_digits, 1797 8x8 images, UCI ML hand-written digits "
                   "(Alpaydin & Kaynak; sklearn/datasets/data/digits.csv.gz inside the scikit-learn wheel)")


# --------------------------------------------------------------------------------------------------
# Autograd-safe forward of comfy.ldm.flux.model.Flux (same parameters, out-of-place residual adds)
# --------------------------------------------------------------------------------------------------


def _attention(q, k, v, pe):
    from comfy.ldm.flux.math import apply_rope

    q, k = apply_rope(q, k, pe)     # ComfyUI's rope: its addcmul_ acts on a fresh tensor -> autograd-safe
    x = F.scaled_dot_product_attention(q, k, v)
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _mod(x, scale, shift):
    return torch.addcmul(shift, x, 1 + scale)


def _double_block(blk, img, txt, vec, pe):
    img_mod1, img_mod2 = blk.img_mod(vec)
    txt_mod1, txt_mod2 = blk.txt_mod(vec)

    def qkv(attn, norm, x, m):
        t = attn.qkv(_mod(norm(x), m.scale, m.shift))
        q, k, v = t.view(t.shape[0], t.shape[1], 3, blk.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.norm(q, k, v)
        return q, k, v

    img_q, img_k, img_v = qkv(blk.img_attn, blk.img_norm1, img, img_mod1)
    txt_q, txt_k, txt_v = qkv(blk.txt_attn, blk.txt_norm1, txt, txt_mod1)
    attn = _attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2), pe)
    txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
    img = img + blk.img_attn.proj(img_attn) * img_mod1.gate
    img = img + blk.img_mlp(_mod(blk.img_norm2(img), img_mod2.scale, img_mod2.shift)) * img_mod2.gate
    txt = txt + blk.txt_attn.proj(txt_attn) * txt_mod1.gate
    txt = txt + blk.txt_mlp(_mod(blk.txt_norm2(txt), txt_mod2.scale, txt_mod2.shift)) * txt_mod2.gate
    return img, txt


def _single_block(blk, x, vec, pe):
    mod, _ = blk.modulation(vec)
    qkv, mlp = torch.split(blk.linear1(_mod(blk.pre_norm(x), mod.scale, mod.shift)),
                           [3 * blk.hidden_size, blk.mlp_hidden_dim_first], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, blk.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = blk.norm(q, k, v)
    out = blk.linear2(torch.cat((_attention(q, k, v, pe), blk.mlp_act(mlp)), 2))
    return x + out * mod.gate


def training_forward(dm, x, timesteps, context, y, guidance=None):
    """``dm(x, timesteps, context, y=y, guidance=guidance)`` of an unmodified ComfyUI ``Flux`` (no patches,
    no control, no reference latents, global_modulation off), without in-place updates."""
    from einops import rearrange

    from comfy.ldm.flux.layers import timestep_embedding

    p = dm.params
    assert not p.global_modulation and not p.mlp_silu_act
    bs, _, h, w = x.shape
    ps = dm.patch_size
    img, img_ids = dm.process_img(x)
    txt_ids = torch.zeros((bs, context.shape[1], len(p.axes_dim)), dtype=torch.float32)
    pe = dm.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))

    img = dm.img_in(img)
    vec = dm.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
    if p.guidance_embed and guidance is not None:
        vec = vec + dm.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
    if dm.vector_in is not None:
        vec = vec + dm.vector_in(y[:, :p.vec_in_dim])
    txt = dm.txt_in(context)
    for blk in dm.double_blocks:
        img, txt = _double_block(blk, img, txt, vec, pe)
    xs = torch.cat((txt, img), 1)
    for blk in dm.single_blocks:
        xs = _single_block(blk, xs, vec, pe)
    out = dm.final_layer(xs[:, txt.shape[1]:], vec)
    return rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=(h + ps // 2) // ps, w=(w + ps // 2) // ps,
                     ph=ps, pw=ps)[:, :, :h, :w]


# --------------------------------------------------------------------------------------------------
# Model, data, init
# --------------------------------------------------------------------------------------------------


class ClassTables(torch.nn.Module):
    """Learned per-class conditioning: context tokens and a pooled vector; row NULL_CLASS = unconditional."""

    def __init__(self, tf, generator):
        super().__init__()
        n = tf.NULL_CLASS + 1
        self.context = torch.nn.Parameter(torch.randn((n, tf.COND_TOKENS, tf.CONTEXT_DIM), generator=generator))
        self.pooled = torch.nn.Parameter(torch.randn((n, tf.POOLED_DIM), generator=generator))


def init_flux(dm, generator):
    """DiT-style init: N(0, 0.02) matrices, zero biases, unit norm scales, adaLN-zero (all modulations and
    the final projection start at zero, so every block starts as the identity)."""
    with torch.no_grad():
        for name, p in dm.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            elif name.endswith(".scale"):   # RMSNorm scales (QKNorm)
                p.fill_(1.0)
            else:
                p.zero_()
        zero = [dm.final_layer.linear, dm.final_layer.adaLN_modulation[1]]
        for blk in dm.double_blocks:
            zero += [blk.img_mod.lin, blk.txt_mod.lin]
        for blk in dm.single_blocks:
            zero += [blk.modulation.lin]
        for m in zero:
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()


def load_data(tf):
    """(x0 in model space (1797, 16, 8, 8), labels (1797,), pixels (1797, 1, 32, 32), sklearn version)."""
    import sklearn
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = tf.digits_to_pixels(torch.from_numpy(d.images))
    return tf.pixels_to_model(pixels), torch.from_numpy(d.target).long(), pixels, sklearn.__version__


def sample_t(n, g):
    t = torch.sigmoid(torch.randn(n, generator=g))
    u = torch.rand(n, generator=g)
    uni = torch.rand(n, generator=g) < UNIFORM_T_FRACTION
    return torch.where(uni, u, t)


def rf_loss(dm, tables, x0, labels, g, tf, use_null_dropout=True):
    n = x0.shape[0]
    t = sample_t(n, g)
    eps = torch.randn(x0.shape, generator=g)
    if use_null_dropout:
        drop = torch.rand(n, generator=g) < NULL_DROPOUT
        labels = torch.where(drop, torch.full_like(labels, tf.NULL_CLASS), labels)
    guidance = torch.rand(n, generator=g) * (GUIDANCE_RANGE[1] - GUIDANCE_RANGE[0]) + GUIDANCE_RANGE[0]
    tb = t.view(-1, 1, 1, 1)
    xt = (1 - tb) * x0 + tb * eps
    v = training_forward(dm, xt, t, tables.context[labels], tables.pooled[labels], guidance)
    return F.mse_loss(v, eps - x0)


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    prog = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))


# --------------------------------------------------------------------------------------------------
# Checks after training
# --------------------------------------------------------------------------------------------------


def forward_equivalence(patcher, seed=1, batch=4):
    """Max |unmodified ComfyUI Flux forward - training_forward| on random inputs (same weights)."""
    from devtools import trained_flux as tf

    dm = patcher.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *tf.LATENT_SHAPE), generator=g)
    t = torch.rand(batch, generator=g)
    ctx = torch.randn((batch, tf.COND_TOKENS, tf.CONTEXT_DIM), generator=g)
    y = torch.randn((batch, tf.POOLED_DIM), generator=g)
    gd = torch.rand(batch, generator=g) * 10
    with torch.no_grad():
        ref = dm(x, t, ctx, y=y, guidance=gd, transformer_options={})
        got = training_forward(dm, x, t, ctx, y, gd)
    return float((ref - got).abs().max()), float(ref.abs().max())


def quality_check(patcher, digits, pixels, labels, per_class=8, steps=28, cfgs=(1.0, 3.0), seed=0,
                  grid_path=None):
    """Sample ``per_class`` digits of every class with ComfyUI's sampler (euler, simple schedule) and check
    that a classifier fit on the training images (4x4-average-pooled to 8x8, logistic regression) and the
    nearest class mean agree with the requested class. Returns a dict of agreement rates per cfg."""
    import comfy.sample
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    def pool(px):                               # (N, 1, 32, 32) -> (N, 64)
        return F.avg_pool2d(px, 4).reshape(px.shape[0], -1).numpy()

    feats = pool(pixels)
    ylab = labels.numpy()
    clf = LogisticRegression(max_iter=2000).fit(feats, ylab)
    means = torch.stack([pixels[labels == c].mean(0) for c in range(10)]).reshape(10, -1)
    result = {"sampler": "euler", "scheduler": "simple", "steps": steps, "per_class": per_class,
              "classifier_train_accuracy": float(clf.score(feats, ylab))}
    rows = []
    for cfg in cfgs:
        preds_clf, preds_mean, want, imgs = [], [], [], []
        for c in range(10):
            latent = digits.empty_latent(per_class)
            noise = comfy.sample.prepare_noise(latent, seed + c)
            out = comfy.sample.sample(patcher, noise, steps, cfg, "euler", "simple", digits.conditioning(c),
                                      digits.null_conditioning(), latent, denoise=1.0, disable_pbar=True,
                                      seed=seed + c)
            px = digits.decode_gray(out).unsqueeze(1)           # (n, 1, 32, 32)
            imgs.append(px)
            preds_clf.append(clf.predict(pool(px)))
            d = torch.cdist(px.reshape(px.shape[0], -1), means)
            preds_mean.append(d.argmin(1).numpy())
            want.append(np.full(per_class, c))
        want = np.concatenate(want)
        result[f"cfg{cfg:g}"] = {
            "classifier_agreement": float((np.concatenate(preds_clf) == want).mean()),
            "class_mean_agreement": float((np.concatenate(preds_mean) == want).mean()),
            "finite": bool(all(torch.isfinite(i).all() for i in imgs)),
        }
        rows.append(torch.cat(imgs))
    if grid_path is not None:
        save_grid(rows, per_class, grid_path)
    return result


def save_grid(rows, per_class, path):
    """One block per cfg: 10 rows (classes) x per_class columns, 32x32 tiles, 2-px gaps; PNG via PIL."""
    from PIL import Image

    blocks = []
    for px in rows:                             # (10*per_class, 1, 32, 32)
        tiles = F.pad(px, (1, 1, 1, 1), value=0.5).reshape(10, per_class, 34, 34)
        blocks.append(tiles.permute(0, 2, 1, 3).reshape(10 * 34, per_class * 34))
    sep = torch.full((10 * 34, 8), 1.0)
    grid = torch.cat([t for b in blocks for t in (b, sep)][:-1], dim=1)
    img = (grid.clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(img, mode="L").resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def train_step(opt, loss, params, ema, step, decay, modules) -> None:
    """One optimiser step: backward, (first step) every parameter of ``modules`` got a gradient, clip 1.0,
    step, EMA update."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if step == 0:
        dead = [nm for mod in modules for nm, p in mod.named_parameters() if p.grad is None]
        assert not dead, f"parameters without gradient: {dead}"
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema_update(ema, params, step, decay)


def ema_update(ema, params, step, decay):
    """Exponential moving average of the weights, with the usual warm-up of the decay."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema, params):
            e.lerp_(p.detach(), 1 - d)


def use_ema(ema, params, module):
    """Copy the EMA weights into the parameters (what is saved and evaluated) and put ``module`` in eval mode."""
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    module.eval()


def write_provenance(meta: dict, mpath, wpath, comfyui_version: str) -> None:
    """The JSON record next to the weights: ``meta`` plus the versions used and the weights file's checksum."""
    meta["versions"] = {"torch": torch.__version__, "comfyui": comfyui_version, "python": platform.python_version()}
    meta["weights_file"] = {"name": wpath.name, "bytes": wpath.stat().st_size, "sha256": sha256(wpath),
                            "dtype": "float32"}
    mpath.write_text(json.dumps(meta, indent=1) + "\n")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--out", type=Path, default=None, help="asset directory (default benchmarks/assets)")
    ap.add_argument("--time", type=int, default=0, help="only time this many steps; write nothing")
    ap.add_argument("--eval-only", action="store_true", help="quality check of the saved weights only")
    ap.add_argument("--grid", type=Path, default=Path("/tmp/digits_grid.png"))
    args = ap.parse_args(argv)

    torch.set_num_threads(1)        # small shared machine: one core stays free; also deterministic
    torch.use_deterministic_algorithms(True)
    from devtools import runtime

    cpath = runtime.activate(cpu=True)
    from devtools import trained_flux as tf

    out_dir = args.out or tf.ASSET_DIR
    wpath, mpath = out_dir / tf.WEIGHTS.name, out_dir / tf.METADATA.name
    x0_all, labels_all, pixels_all, sk_version = load_data(tf)

    if args.eval_only:
        patcher, digits = tf.load(path=wpath)
        q = quality_check(patcher, digits, pixels_all, labels_all, grid_path=args.grid)
        print(json.dumps(q, indent=1))
        print("forward equivalence (max abs diff, max abs out):", forward_equivalence(patcher))
        return 0

    torch.manual_seed(args.seed)
    g_init = torch.Generator().manual_seed(args.seed)
    g_data = torch.Generator().manual_seed(args.seed + 1)
    g_noise = torch.Generator().manual_seed(args.seed + 2)

    model = tf.build_model(torch.float32)
    dm = model.diffusion_model
    dm.train()
    init_flux(dm, g_init)
    tables = ClassTables(tf, g_init)
    params = list(dm.parameters()) + list(tables.parameters())
    n_flux = sum(p.numel() for p in dm.parameters())
    n_tab = sum(p.numel() for p in tables.parameters())
    print(f"Flux params {n_flux:,} + class tables {n_tab:,}; data {tuple(x0_all.shape)}", flush=True)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)

    n = x0_all.shape[0]
    perm, pos = torch.randperm(n, generator=g_data), 0
    steps = args.time or args.steps
    t0, c0 = time.perf_counter(), time.process_time()
    hist, log = [], []
    for step in range(steps):
        if pos + args.batch > n:
            perm, pos = torch.randperm(n, generator=g_data), 0
        idx = perm[pos:pos + args.batch]
        pos += args.batch
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, steps, args.lr, args.warmup)
        loss = rf_loss(dm, tables, x0_all[idx], labels_all[idx], g_noise, tf)
        train_step(opt, loss, params, ema, step, args.ema, (dm, tables))
        hist.append(loss.item())
        if (step + 1) % args.log_every == 0 or step == steps - 1:
            el = time.perf_counter() - t0
            avg = sum(hist[-args.log_every:]) / len(hist[-args.log_every:])
            log.append({"step": step + 1, "loss": round(avg, 5), "seconds": round(el, 1),
                        "cpu_seconds": round(time.process_time() - c0, 1)})
            print(f"step {step + 1:5d}/{steps}  loss {avg:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{el:7.1f}s  ({el / (step + 1):.3f} s/step, cpu {time.process_time() - c0:7.1f}s)", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if args.time:
        print(f"{steps} steps in {wall:.1f}s = {wall / steps:.3f} s/step", flush=True)
        return 0

    # EMA weights -> tensors to save (Flux state_dict keys + conditioning tables)
    use_ema(ema, params, dm)
    # Fixed-seed evaluation loss of the saved (EMA) weights over the whole data set, 4 noise draws.
    with torch.no_grad():
        g_eval = torch.Generator().manual_seed(12345)
        ev = [float(rf_loss(dm, tables, x0_all[i:i + 256], labels_all[i:i + 256], g_eval, tf, False))
              * min(256, n - i) for _ in range(4) for i in range(0, n, 256)]
        eval_loss = sum(ev) / (4 * n)
    sd = {k: v.detach().contiguous().clone() for k, v in dm.state_dict().items()}
    sd[tf.COND_PREFIX + "context"] = tables.context.detach().clone()
    sd[tf.COND_PREFIX + "pooled"] = tables.pooled.detach().clone()
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(sd, str(wpath), metadata={"format": "pt", "model": "comfy.ldm.flux.model.Flux (tiny, digits)",
                                         "config": json.dumps(tf.UNET_CONFIG)})
    wpath.chmod(0o644)

    final_avg = sum(hist[-100:]) / len(hist[-100:])
    meta = {
        "model": "comfy.ldm.flux.model.Flux via comfy.supported_models.Flux (FLUX-dev config: guidance_embed, "
                 "ModelSamplingFlux shift 1.15, latent_formats.Flux)",
        "unet_config": tf.UNET_CONFIG,
        "parameters": {"flux": n_flux, "class_tables": n_tab},
        "conditioning": {"classes": 10, "null_class": tf.NULL_CLASS, "context_tokens": tf.COND_TOKENS,
                         "context_dim": tf.CONTEXT_DIM, "pooled_dim": tf.POOLED_DIM,
                         "keys": [tf.COND_PREFIX + "context", tf.COND_PREFIX + "pooled"],
                         "guidance": "embedding input drawn U[0,10] in training; carries no information"},
        "latent": "8x8 digit/16 -> bilinear 32x32 -> 2p-1 -> pixel_unshuffle(4) = model space (16,8,8); "
                  "LATENT = latent_formats.Flux.process_out(model space); decode inverts it",
        "data": {"provenance": DATA_PROVENANCE, "images": int(n), "scikit_learn": sk_version},
        "training": {
            "objective": "rectified flow, v = eps - x0, x_t = (1-t) x0 + t eps, MSE",
            "t_sampling": f"logit-normal(0,1), {UNIFORM_T_FRACTION:.0%} uniform",
            "null_class_dropout": NULL_DROPOUT, "guidance_range": list(GUIDANCE_RANGE),
            "seed": args.seed, "steps": steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
            "lr_schedule": "linear warm-up, cosine to 0.1 x lr", "optimizer": "AdamW(0.9, 0.99), wd 0, clip 1.0",
            "ema": args.ema, "saved_weights": "EMA",
            "final_loss": round(final_avg, 5), "final_loss_note": "mean train loss over the last 100 steps",
            "eval_loss_ema": round(eval_loss, 5),
            "eval_loss_note": "EMA weights, all images x 4 seeded noise draws, no label dropout",
            "wall_time_s": round(wall, 1), "cpu_time_s": round(cpu, 1), "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (wall > cpu time)",
            "loss_log": log,
        },
    }
    write_provenance(meta, mpath, wpath, runtime.comfyui_version(cpath))
    print(f"saved {wpath} ({wpath.stat().st_size / 1e6:.2f} MB); final loss {final_avg:.4f}, "
          f"EMA eval loss {eval_loss:.4f}, {wall / 60:.1f} min", flush=True)

    # Reload through the ComfyUI loader into the unmodified class; check equivalence and sample quality.
    patcher, digits = tf.load(path=wpath)
    diff, scale = forward_equivalence(patcher)
    print(f"unmodified ComfyUI forward vs training_forward: max abs diff {diff:.2e} (max |out| {scale:.2f})",
          flush=True)
    q = quality_check(patcher, digits, pixels_all, labels_all, grid_path=args.grid)
    print(json.dumps(q, indent=1), flush=True)
    meta["checks"] = {"forward_max_abs_diff": diff, "quality": q}
    mpath.write_text(json.dumps(meta, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
