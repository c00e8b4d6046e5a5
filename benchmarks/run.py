"""Fidelity and speed of AB-Cache against fewer steps, ComfyUI's EasyCache and LazyCache, on a trained FLUX.

    python -m benchmarks.run                 # full table (about 10-20 min on 2 CPU cores)
    python -m benchmarks.run --quick         # one sampler setting, fewer variants (CI-sized)

Model: ComfyUI's own ``Flux`` class trained on hand-written digits (devtools/trained_flux.py), loaded through
``comfy.supported_models.Flux`` so ComfyUI's real samplers run it. For every sampler setting all methods run
side by side in this process on the same classes and seeds; the reference is the full-compute run.

Methods, per model-call budget (1/3 and 1/4 of the full run's calls):
* fewer steps -- the same sampler with as many steps as the budget allows;
* EasyCache / LazyCache (ComfyUI core) -- threshold bisected to the budget. EasyCache adds its cached
  difference into its input in place; with an fp32 model that input is the sampler's own latent, so the
  "fair" rows give it a copy (an outer wrapper that clones x) and one "as shipped" row documents the bug;
* AB-Cache paper schedule (compute when i < 5 or i % 6 == 0; binomial weights), orders 2 and 3;
* AB-Cache fixed, sigma-exact Lagrange weights, several orders and intervals;
* AB-Cache adaptive, tolerance bisected to the budget.
Metrics: mean model calls per image, PSNR and SSIM (scikit-image) of the decoded 32x32 images against full
compute, wall-clock speed-up (median of repeats, interleaved), extra memory held by the cache.
Writes docs/BENCHMARKS.md (section "fidelity") and docs/benchmark_pareto.png.

GPU / real checkpoints: the harness drives any ModelPatcher; ``--comfyui`` is COMFYUI_PATH. Replace
``load_case`` by a loader of your checkpoint (comfy.sd.load_diffusion_model) and conditioning, and ``decode``
by the model's VAE, to produce the same table for FLUX.1-dev or a video model.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from benchmarks.report import write_section  # noqa: E402

DOCS = REPO / "docs"


@dataclasses.dataclass
class Setting:
    sampler: str
    steps: int
    cfg: float
    scheduler: str = "simple"

    @property
    def name(self) -> str:
        return f"{self.sampler} {self.steps} steps, cfg {self.cfg:g}"


@dataclasses.dataclass
class Row:
    setting: str
    budget: str
    method: str
    calls: float
    psnr: float
    ssim: float
    speedup: float = float("nan")
    extra_mb: float = 0.0
    note: str = ""


class Bench:
    """Everything needed to sample the trained model for a list of classes and seeds."""

    def __init__(self, classes, seeds, repeats):
        from devtools import harness, trained_flux
        from devtools.pack import load_nodes

        self.harness, self.tf = harness, trained_flux
        self.nodes = load_nodes()
        self.patcher, self.digits = trained_flux.load()
        self.classes, self.seeds, self.repeats = list(classes), list(seeds), repeats

    def sample_all(self, model, s: Setting, steps=None):
        """Decoded images (N, 32, 32) for all classes x seeds, mean forward calls per sampling call, seconds."""
        import torch

        m, spy = self.harness.with_spy(model)
        imgs, t0 = [], time.perf_counter()
        for c in self.classes:
            latent = self.digits.empty_latent(len(self.seeds))
            out = self.harness.sample(m, latent, self.digits.conditioning(c), self.digits.null_conditioning(),
                                      steps=steps or s.steps, cfg=s.cfg, sampler=s.sampler, scheduler=s.scheduler,
                                      seed=1000 + c)
            imgs.append(self.tf.decode_gray(out))
        dt = time.perf_counter() - t0
        return torch.cat(imgs), spy.calls / len(self.classes), dt

    # -------------------------------------------------------------------------------- method factories
    def ab(self, order, interval, warmup, mode="fixed", tolerance=0.01, max_skips=3, final_steps=1):
        return self.nodes.ABCacheAdvancedNode.execute(
            self.patcher, order, interval, warmup, mode=mode, coordinate="auto", tolerance=tolerance,
            max_skips=max_skips, start_percent=0.0, end_percent=1.0, final_steps=final_steps, table="",
            cache_device="same", verbose=False)[0]

    def easycache(self, threshold, lazy=False, fair=True):
        import comfy.patcher_extension as pe
        from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

        m = self.patcher.clone()
        if fair:
            # outermost wrapper: hand EasyCache a copy of its input so its in-place add cannot touch the
            # sampler's latent (LazyCache's PREDICT_NOISE path gets the same protection at its level)
            def clone_x(executor, x, *a, **kw):
                return executor(x.clone(), *a, **kw)

            wtype = pe.WrappersMP.PREDICT_NOISE if lazy else pe.WrappersMP.DIFFUSION_MODEL
            m.add_wrapper_with_key(wtype, "bench_clone_input", clone_x)
        node = LazyCacheNode if lazy else EasyCacheNode
        return node.execute(m, threshold, 0.15, 0.95, False)[0]


def psnr_ssim(ref, imgs):
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p, s = [], []
    for a, b in zip(ref.numpy().astype(np.float64), imgs.numpy().astype(np.float64)):
        mse = float(np.mean((a - b) ** 2))
        p.append(100.0 if mse == 0 else peak_signal_noise_ratio(a, b, data_range=1.0))
        s.append(structural_similarity(a, b, data_range=1.0))
    return float(np.mean(p)), float(np.mean(s))


def bisect_param(make, lo, hi, budget, measure, iters=10, increasing=True):
    """Largest parameter (threshold/tolerance) whose calls stay within the budget."""
    best = None
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        calls = measure(make(mid))
        if calls <= budget + 1e-9:
            best, lo = (mid, calls), mid
        else:
            hi = mid
    return best


def run_setting(b: Bench, s: Setting, quick: bool) -> list[Row]:
    ref, full_calls, _ = b.sample_all(b.patcher, s)
    budgets = {"1/3": full_calls / 3, "1/4": full_calls / 4}
    probe = Bench.__new__(Bench)
    probe.__dict__.update(b.__dict__)
    probe.classes, probe.seeds = b.classes[:3], b.seeds[:1]

    def calls_of(model):
        return probe.sample_all(model, s)[1]

    candidates = []   # (budget, method name, model or None, steps override)
    per_step = full_calls / s.steps
    for bname, budget in budgets.items():
        steps = max(1, int(budget // per_step))
        candidates.append((bname, f"fewer steps ({steps})", b.patcher, steps))
        for lazy in (False, True):
            name = "LazyCache" if lazy else "EasyCache"
            found = bisect_param(lambda t: b.easycache(t, lazy), 0.0, 3.0, budget, calls_of, iters=8 if quick else 10)
            if found:
                candidates.append((bname, f"{name} (fair, threshold {found[0]:.3f})", b.easycache(found[0], lazy), None))
        if bname == "1/3":
            found = bisect_param(lambda t: b.easycache(t, False, fair=False), 0.0, 3.0, budget, calls_of, iters=8)
            if found:
                candidates.append((bname, f"EasyCache (as shipped, threshold {found[0]:.3f})",
                                   b.easycache(found[0], False, fair=False), None))
        found = bisect_param(lambda t: b.ab(3, 4, 3, mode="adaptive", tolerance=t), 0.0, 1.0, budget, calls_of,
                             iters=8 if quick else 12)
        if found:
            candidates.append((bname, f"AB-Cache adaptive k=3 (tol {found[0]:.4f})",
                               b.ab(3, 4, 3, mode="adaptive", tolerance=found[0]), None))
    for order in (2, 3):
        candidates.append(("paper", f"AB-Cache paper schedule k={order}", b.ab(order, 6, 5, mode="paper", final_steps=0), None))
    grid = [(2, 3), (2, 4), (3, 3), (3, 4), (2, 5), (3, 5), (4, 4), (2, 6), (3, 6)]
    if quick:
        grid = [(2, 4), (3, 4), (2, 6)]
    for order, interval in grid:
        candidates.append(("fixed", f"AB-Cache fixed k={order}, interval {interval}", b.ab(order, interval, 3), None))

    rows = []
    times = {}
    for bname, name, model, steps in candidates:
        imgs, calls, _ = b.sample_all(model, s, steps)
        p, q = psnr_ssim(ref, imgs)
        label = bname
        if bname in ("paper", "fixed"):
            frac = calls / full_calls
            label = "1/3" if frac <= 1 / 3 + 0.02 else "1/4" if frac <= 0.27 else f"{frac:.2f}"
        rows.append(Row(s.name, label, name, calls, p, q, extra_mb=extra_memory_mb(model, b)))
    # wall-clock: interleaved medians against full compute
    for _ in range(b.repeats):
        _, _, t = b.sample_all(b.patcher, s)
        times.setdefault("full", []).append(t)
        for bname, name, model, steps in candidates:
            _, _, t = b.sample_all(model, s, steps)
            times.setdefault(name, []).append(t)
    full_t = statistics.median(times["full"])
    for r in rows:
        r.speedup = full_t / statistics.median(times[r.method])
    rows.insert(0, Row(s.name, "full", "full compute (reference)", full_calls, math.inf, 1.0, 1.0))
    return rows


def extra_memory_mb(model, b: Bench) -> float:
    """Bytes the cache keeps between calls: order x (chunks) x latent size, from the last run's settings."""
    spec = model.model_options.get("transformer_options", {}).get("ab_cache")
    if spec is None or spec.sink is None or not spec.sink.last:
        return 0.0
    order = spec.sink.last["settings"]["order"]
    chunk = 4 * len(b.seeds) * math.prod(b.tf.LATENT_SHAPE)
    return order * 2 * chunk / 2**20


def fmt_table(rows: list[Row]) -> str:
    out = ["| setting | budget | method | calls | PSNR (dB) | SSIM | speed-up | cache MB |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = "∞" if math.isinf(r.psnr) else f"{r.psnr:.1f}"
        out.append(f"| {r.setting} | {r.budget} | {r.method} | {r.calls:.1f} | {p} | {r.ssim:.4f} | "
                   f"{r.speedup:.2f}x | {r.extra_mb:.2f} |")
    return "\n".join(out)


def pareto_plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r.setting for r in rows})
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, st in zip(axes[0], settings):
        rs = [r for r in rows if r.setting == st and math.isfinite(r.psnr)]
        full = next(r.calls for r in rows if r.setting == st and r.budget == "full")
        for fam, color in (("AB-Cache", "tab:blue"), ("fewer steps", "tab:gray"), ("EasyCache", "tab:orange"),
                           ("LazyCache", "tab:green")):
            pts = [(full / r.calls, r.psnr) for r in rs if r.method.startswith(fam)]
            if pts:
                ax.scatter(*zip(*pts), color=color, label=fam, s=18)
        ax.set_title(st, fontsize=9)
        ax.set_xlabel("model-call speed-up (full / computed)")
        ax.set_ylabel("PSNR vs full compute (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one setting, fewer variants")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    from devtools import runtime

    runtime.activate(cpu=True)
    import torch

    torch.set_num_threads(1)
    settings = [Setting("euler", 50, 3.0)] if args.quick else [
        Setting("euler", 50, 3.0), Setting("euler", 50, 1.0), Setting("euler", 28, 3.0), Setting("euler", 28, 1.0),
        Setting("dpmpp_2m", 28, 3.0), Setting("heun", 25, 3.0)]
    b = Bench(classes=range(10), seeds=range(4 if not args.quick else 2), repeats=args.repeats)
    rows = []
    for s in settings:
        t0 = time.perf_counter()
        rows += run_setting(b, s, args.quick)
        print(f"{s.name}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    table = fmt_table(rows)
    print(table)
    if not args.no_write:
        pareto_plot(rows, DOCS / "benchmark_pareto.png")
        meta = b.tf.metadata() if hasattr(b.tf, "metadata") else {}
        head = (f"Trained tiny FLUX (ComfyUI `Flux` class, hand-written digits, {meta.get('parameters', '?')} "
                f"parameters), {len(b.classes)} classes x {len(b.seeds)} seeds per setting, ComfyUI "
                f"{runtime.comfyui_version()}, CPU. PSNR/SSIM of the decoded 32x32 images against full compute "
                f"(mean over images; 100 dB = identical). Speed-up = wall-clock median of {args.repeats} "
                f"interleaved repeats; on this tiny model sampler overhead is a large share of the time, see the "
                f"speed section for a forward-dominated model. ![Pareto](benchmark_pareto.png)")
        write_section("fidelity", "Fidelity: AB-Cache vs fewer steps, EasyCache, LazyCache (`python -m benchmarks.run`)",
                      head + "\n\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
