"""Fidelity of AB-Cache at the settings users sample with, on the trained SD 1.5 (VP, epsilon) and Wan 2.1
(video, flow) models -- run through ``python -m benchmarks.run --model sd15|wan`` (this module holds that part
of the harness; ``benchmarks/run.py`` keeps the FLUX study).

Settings: SD 1.5 -- euler (normal schedule), dpmpp_2m (karras) and ddim (ddim_uniform) at 20, 30 and 50 steps,
cfg 1 and cfg 5; Wan -- euler (simple schedule, shift 8 from the model config) at 20, 30 and 50 steps, cfg 5.
For each setting every method samples the same classes and seeds; the reference is the full-compute run.

Methods, all at the model-call budget of the AB-Cache node's defaults before the ``speed`` input (order 2,
interval 4, warm-up 3, last step computed, raw-output extrapolation), so every row costs the same number of
model calls (or is marked as over budget); the current defaults (speed 3, noise estimate) are measured against
fewer steps at every trained model by ``python -m benchmarks.steps``:
* AB-Cache earlier defaults, and the same schedule with order 3 and with order 1 (plain reuse of the last
  output on the same computed steps: what extrapolation adds);
* fewer steps -- euler, and ComfyUI's multistep samplers (dpmpp_2m, uni_pc, ipndm, deis, res_multistep;
  the best one is reported) with as many steps as the budget allows, same scheduler;
* EasyCache (ComfyUI core), fair: given a copy of its input (it adds into its input in place), threshold
  bisected to the budget on a probe subset.
Metrics: PSNR (mean and median over images; video: over frames) and SSIM of the decoded frames against the
full run (scikit-image); video also the temporal error: PSNR of the frame-to-frame differences against the
full run's differences, and their relative RMSE.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time

from benchmarks.report import write_section
from benchmarks.run import Bench, Setting, bisect_param

SETTINGS = {
    "sd15": [Setting(sampler, steps, cfg, sched)
             for sampler, sched in (("euler", "normal"), ("dpmpp_2m", "karras"), ("ddim", "ddim_uniform"))
             for steps in (20, 30, 50) for cfg in (1.0, 5.0)],
    "wan": [Setting("euler", steps, 5.0, "simple") for steps in (20, 30, 50)],
}
MULTISTEP = ("dpmpp_2m", "uni_pc", "ipndm", "deis", "res_multistep")
# The AB-Cache node's defaults before the speed input (fixed schedule, raw-output extrapolation); the node's
# current defaults are measured by benchmarks/steps.py.
EARLIER = (4, 3)                  # interval, warm-up (order 2; Bench.ab: mode fixed, extrapolator output)
EARLIER_LABEL = "AB-Cache earlier defaults (k=2, interval 4, warm-up 3)"
TITLES = {
    "sd15": "Fidelity at users' settings: trained SD 1.5 U-Net (VP, epsilon) (`python -m benchmarks.run --model sd15`)",
    "wan": "Fidelity at users' settings: trained Wan 2.1 video model (`python -m benchmarks.run --model wan`)",
}


@dataclasses.dataclass
class URow:
    setting: str
    method: str
    calls: float
    psnr_mean: float
    psnr_median: float
    ssim: float
    tpsnr: float = float("nan")         # video: PSNR of frame differences (mean over clips)
    trel: float = float("nan")          # video: relative RMSE of frame differences (mean over clips)
    note: str = ""


def frame_metrics(ref, imgs):
    """Per-frame PSNR and SSIM lists (images or all frames of all clips), data range 1."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref, imgs = ref.detach().reshape(-1, *ref.shape[-2:]), imgs.detach().reshape(-1, *imgs.shape[-2:])
    p, s = [], []
    for a, b in zip(ref.numpy().astype(np.float64), imgs.numpy().astype(np.float64)):
        p.append(100.0 if np.array_equal(a, b) else peak_signal_noise_ratio(a, b, data_range=1.0))
        s.append(structural_similarity(a, b, data_range=1.0))
    return p, s


def temporal_metrics(ref, imgs):
    """Video (N, F, H, W): mean over clips of the PSNR (data range 1) of the frame-to-frame differences against
    the full run's, and of their relative RMSE ||d - d_ref|| / ||d_ref||."""
    d_ref = (ref[:, 1:] - ref[:, :-1]).double()
    d = (imgs[:, 1:] - imgs[:, :-1]).double()
    mse = (d - d_ref).pow(2).flatten(1).mean(1)
    tpsnr = [100.0 if float(m) == 0 else 10 * math.log10(1.0 / float(m)) for m in mse]
    rel = ((d - d_ref).flatten(1).norm(dim=1) / d_ref.flatten(1).norm(dim=1).clamp_min(1e-12)).tolist()
    return sum(tpsnr) / len(tpsnr), sum(rel) / len(rel)


def make_row(b: Bench, setting: Setting, method: str, ref, imgs, calls, note="") -> URow:
    p, s = frame_metrics(ref, imgs)
    row = URow(setting.name + f" ({setting.scheduler})", method, calls, statistics.fmean(p), statistics.median(p),
               statistics.fmean(s), note=note)
    if b.spec.video:
        row.tpsnr, row.trel = temporal_metrics(ref, imgs)
    return row


def smallest_within(make, lo, hi, budget, measure, iters=8):
    """run.bisect_param (as many calls as the budget allows), or None when even ``hi`` is over budget."""
    if measure(make(hi)) > budget + 1e-9:
        return None
    return bisect_param(make, lo, hi, budget, measure, iters)


def available_samplers():
    import comfy.samplers

    return set(comfy.samplers.KSampler.SAMPLERS)


def run_setting(b: Bench, s: Setting, probe: Bench) -> list[URow]:
    ref, full_calls, _ = b.sample_all(b.patcher, s)
    rows = [make_row(b, s, "full compute (reference)", ref, ref, full_calls)]
    imgs, budget, _ = b.sample_all(b.ab(2, *EARLIER), s)
    rows.append(make_row(b, s, EARLIER_LABEL, ref, imgs, budget))
    for k, label in ((3, "AB-Cache k=3, same schedule"), (1, "reuse k=1, same schedule (no extrapolation)")):
        imgs, calls, _ = b.sample_all(b.ab(k, *EARLIER), s)
        rows.append(make_row(b, s, label, ref, imgs, calls))

    per_step = full_calls / s.steps
    have = available_samplers()
    for sampler in ("euler",) + tuple(m for m in MULTISTEP if m in have):
        steps = max(1, int(budget // per_step))
        alt = Setting(sampler, steps, s.cfg, s.scheduler)
        while steps > 1 and probe.sample_all(b.patcher, alt)[1] > budget + 1e-9:   # e.g. a sampler's extra call
            steps -= 1
            alt = Setting(sampler, steps, s.cfg, s.scheduler)
        imgs, calls, _ = b.sample_all(b.patcher, alt)
        rows.append(make_row(b, s, f"fewer steps: {sampler} {steps} steps", ref, imgs, calls))

    def calls_of(model):
        return probe.sample_all(model, s)[1]

    found = smallest_within(lambda t: b.easycache(t, False), 0.0, 3.0, budget, calls_of, iters=8)
    if found:
        imgs, calls, _ = b.sample_all(b.easycache(found[0], False), s)
        # the threshold is bisected on the probe subset; on the full set EasyCache may make a few more calls
        rows.append(make_row(b, s, f"EasyCache (fair, threshold {found[0]:.3f})", ref, imgs, calls,
                             note="" if calls <= budget + 1e-9 else "over budget on the full set"))
    else:
        imgs, calls, _ = b.sample_all(b.easycache(3.0, False), s)
        rows.append(make_row(b, s, "EasyCache (fair, threshold 3.0: fewest calls it makes)", ref, imgs, calls,
                             note="cannot reach the budget"))
    return rows


def fmt(rows: list[URow], video: bool) -> str:
    head = "| setting | method | calls | PSNR mean (dB) | PSNR median (dB) | SSIM |"
    sep = "|---|---|---|---|---|---|"
    if video:
        head += " temporal PSNR (dB) | temporal rel. error |"
        sep += "---|---|"
    out = [head, sep]
    for r in rows:
        ref = r.method.startswith("full")
        pm = "∞" if ref else f"{r.psnr_mean:.1f}"
        pd = "∞" if ref else f"{r.psnr_median:.1f}"
        line = f"| {r.setting} | {r.method}{' (' + r.note + ')' if r.note else ''} | {r.calls:.1f} | {pm} | {pd} | {r.ssim:.4f} |"
        if video:
            line += (" ∞ | 0 |" if ref else f" {r.tpsnr:.1f} | {100 * r.trel:.1f} % |")
        out.append(line)
    return "\n".join(out)


def summarize(rows: list[URow], video: bool) -> tuple[str, list[dict]]:
    """One line per setting: the defaults against the best fewer-steps sampler and fair EasyCache."""
    lines, records = [], []
    for setting in dict.fromkeys(r.setting for r in rows):
        rs = [r for r in rows if r.setting == setting]
        ab = next(r for r in rs if r.method.startswith("AB-Cache earlier defaults"))
        full = next(r for r in rs if r.method.startswith("full"))
        reuse = next(r for r in rs if r.method.startswith("reuse"))
        few = [r for r in rs if r.method.startswith("fewer steps")]
        euler = next(r for r in few if "euler" in r.method)
        multi = max((r for r in few if "euler" not in r.method), key=lambda r: r.psnr_mean, default=None)
        easy = next((r for r in rs if r.method.startswith("EasyCache")), None)
        best_few = max(few, key=lambda r: r.psnr_mean)
        parts = [f"earlier defaults **{ab.psnr_mean:.1f} dB** mean / {ab.psnr_median:.1f} median "
                 f"({ab.calls:.0f}/{full.calls:.0f} calls)"]
        if video:
            parts[0] += f", temporal {ab.tpsnr:.1f} dB"
        parts.append(f"{ab.psnr_mean - reuse.psnr_mean:+.1f} dB vs reuse")
        parts.append(f"{ab.psnr_mean - euler.psnr_mean:+.1f} dB vs fewer steps euler ({euler.psnr_mean:.1f})")
        if multi:
            parts.append(f"{ab.psnr_mean - multi.psnr_mean:+.1f} dB vs best multistep "
                         f"({multi.method.split(': ')[1]}, {multi.psnr_mean:.1f})")
        if easy:
            parts.append(f"{ab.psnr_mean - easy.psnr_mean:+.1f} dB vs fair EasyCache ({easy.psnr_mean:.1f}, "
                         f"{easy.calls:.1f} calls{', ' + easy.note if easy.note else ''})")
        verdict = "beats" if ab.psnr_mean > best_few.psnr_mean else "MISSED: below"
        lines.append(f"- {setting}: " + "; ".join(parts) + f". AB-Cache {verdict} the best fewer-steps run.")
        records.append({"setting": setting, "calls": ab.calls, "full_calls": full.calls, "psnr": ab.psnr_mean,
                        "best_fewer": best_few.psnr_mean, "easycache": easy.psnr_mean if easy else None})
    return "\n".join(lines), records


def main(model: str, seeds: int = 2, write: bool = True, settings=None) -> list[URow]:
    from devtools import runtime

    b = Bench(classes=range(10), seeds=range(seeds), repeats=1, model=model)
    probe = Bench.__new__(Bench)
    probe.__dict__.update(b.__dict__)
    probe.classes, probe.seeds = b.classes[::3], b.seeds[:1]
    import torch

    rows = []
    for s in settings or SETTINGS[model]:
        t0 = time.perf_counter()
        with torch.no_grad():       # as ComfyUI's executor (inference only); the results are the same
            rows += run_setting(b, s, probe)
        print(f"{model}: {s.name} ({s.scheduler}) done in {time.perf_counter() - t0:.0f}s", flush=True)
    video = b.spec.video
    table = fmt(rows, video)
    summary, records = summarize(rows, video)
    print(table)
    print(summary)
    if write:
        meta = json.loads(b.spec.metadata_path.read_text())
        params = meta["parameters"]["diffusion_model"]
        what = (f"{len(b.classes)} classes x {len(b.seeds)} {'clips' if video else 'images'} per setting "
                f"({b.spec.frames} frames of 32x32)" if video else
                f"{len(b.classes)} classes x {len(b.seeds)} images per setting (16x16)")
        head = (f"Trained tiny {b.spec.description} ({params:,} parameters, `{b.spec.stem}.safetensors`), "
                f"ComfyUI {runtime.comfyui_version()}, CPU. {what}. All methods at the model-call budget of the "
                f"AB-Cache node's earlier defaults (fixed, order 2, interval 4, warm-up 3, raw output; the current "
                f"defaults are in the \"steps\" section); the cost measure is model calls (this tiny model's wall clock is "
                f"dominated by sampler overhead; see the FLUX and speed sections). PSNR/SSIM of the decoded frames "
                f"against full compute, mean and median over {'frames' if video else 'images'}"
                + ("; temporal PSNR = PSNR of the frame-to-frame differences against the full run's, temporal "
                   "rel. error = ||d - d_full|| / ||d_full|| of those differences (mean over clips)" if video else "")
                + ". \"Best multistep\" = the best of " + ", ".join(MULTISTEP) + " at the same calls. EasyCache's "
                "threshold is bisected on a probe subset (4 classes x 1 seed); where it then makes more calls on the "
                "full set than AB-Cache, the row says so (that favours EasyCache).")
        write_section(f"fidelity-{model}", TITLES[model], head + "\n\n" + summary + "\n\n" + table)
    return rows
