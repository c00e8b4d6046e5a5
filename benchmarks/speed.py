"""Realized versus ideal speed-up of AB-Cache on a FLUX-architecture model whose forward pass dominates.

    python -m benchmarks.speed [--steps 28] [--repeats 5] [--tokens 1024]

ComfyUI's own ``Flux`` class with random weights (speed does not depend on training), >= 1024 image tokens,
sampled with ComfyUI's real sampler. Variants run interleaved in one process, in a rotating order, each timed run preceded by an untimed
one-step run of the same variant (so switching between ModelPatcher clones is not timed); medians of repeats:
* unpatched model;
* AB-Cache with interval 1 (every step computed, all wrappers active): the overhead on computed steps;
* AB-Cache defaults and a few other settings: realized speed-up versus the ideal ratio total/computed calls.
With COMFYUI_PATH set (and a GPU), the same script measures that ComfyUI and device.
Writes the section between ``<!-- speed:begin -->`` and ``<!-- speed:end -->`` of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from benchmarks.report import write_section  # noqa: E402


def wrapper_cost(n, case, forward_s: float, steps: int, reps: int = 20) -> str:
    """The wrappers' own time per model call, measured directly: the same code path as in sampling
    (`_cached_call` with a real CacheRun on real-size tensors) around a forward that costs nothing.
    Independent of machine noise, unlike the difference of two sampling times."""
    import statistics
    import sys
    import uuid

    import torch

    from abcache_core import CacheSettings

    w = sys.modules[n.__name__ + ".integration.output_cache"]
    x = torch.randn(case.latent.shape)
    y = torch.randn(case.latent.shape)
    sched = [1.0 - i / steps for i in range(steps + 1)]
    u = uuid.uuid4()

    def one_run(settings):
        active = w.ActiveRun(w.CacheSpec(settings), sched, "diffusion_model", flow=True)
        t_comp = t_skip = 0.0
        for s in sched[:-1]:
            to = {"sigmas": torch.tensor([s]), "uuids": [u]}
            n_before = len(active.run.records)
            t0 = time.perf_counter()
            w._cached_call(active, to, x, lambda: y, space="raw")
            dt = time.perf_counter() - t0
            if active.run.records[n_before].computed:
                t_comp += dt
            else:
                t_skip += dt
        s = active.run.summary()
        active.run.release()
        return t_comp / max(s["computed"], 1), t_skip / max(s["skipped"], 1)

    comp = [one_run(CacheSettings(interval=1))[0] for _ in range(reps)]
    both = [one_run(CacheSettings()) for _ in range(reps)]
    c, k = statistics.median(comp), statistics.median(b[1] for b in both)
    return (f"Wrapper cost measured directly (the wrapper code around a zero-cost forward, real-size tensors, "
            f"median of {reps} runs): **{1e3 * c:.2f} ms per computed call = {100 * c / forward_s:.2f}% of one "
            f"forward** ({1e3 * forward_s:.0f} ms here); {1e3 * k:.2f} ms per extrapolated call "
            f"({100 * k / forward_s:.2f}% of a forward). So the realized speed-up is bounded by ideal x "
            f"{1 / (1 + c / forward_s):.3f} from the wrappers; the rest of any gap is ComfyUI's per-step "
            f"sampler work, which caching does not remove.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=1024, help="image tokens (latent side = 2*sqrt(tokens))")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    from devtools import runtime

    runtime.activate(cpu=True)
    import torch

    import comfy.model_management as mm
    from devtools import harness, tiny_models
    from devtools.pack import load_nodes

    n = load_nodes()
    side = 2 * int(math.isqrt(args.tokens))
    case = tiny_models.build("flux_dev", seed=0, overrides=dict(hidden_size=256, num_heads=4, depth=2,
                                                                 depth_single_blocks=2, axes_dim=[16, 24, 24]),
                             latent_shape=(1, 16, side, side))
    dev = mm.get_torch_device()
    pos, neg = case.positive(1), case.negative(2)
    node = functools.partial(harness.apply_node, model=case.patcher)
    variants = {
        "unpatched": case.patcher,
        "AB-Cache, interval 1 (overhead)": node(n.ABCacheNode, interval=1),
        "AB-Cache defaults": node(n.ABCacheNode),
        "AB-Cache order 3, interval 3": node(n.ABCacheNode, order=3, interval=3),
        "AB-Cache paper (i<5 or i%6==0)": node(n.ABCacheAdvancedNode, order=2, interval=6, warmup=5, mode="paper",
                                               final_steps=0),
    }
    spied = {k: harness.with_spy(m) for k, m in variants.items()}
    times = {k: [] for k in variants}
    calls = {}
    harness.sample(spied["unpatched"][0], case.latent, pos, neg, steps=2, cfg=1.0)  # warm up allocators
    for r in range(args.repeats):
        names = list(spied)
        for k in names[r % len(names):] + names[:r % len(names)]:   # rotate: every variant in every position
            m, spy = spied[k]
            # untimed 1-step run first: switching ModelPatcher clones (load/patch) lands here, not in the timing
            harness.sample(m, case.latent, pos, neg, steps=1, cfg=1.0)
            spy.sigmas.clear()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            harness.sample(m, case.latent, pos, neg, steps=args.steps, cfg=1.0)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
            calls[k] = spy.calls
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["unpatched"]
    total = calls["unpatched"]
    rows = []
    for k in variants:
        ideal = total / calls[k]
        realized = base / med[k]
        rows.append((k, calls[k], med[k], realized, ideal, realized / ideal))
    per_call_overhead = med["AB-Cache, interval 1 (overhead)"] / base - 1.0

    head = (f"ComfyUI {runtime.comfyui_version()} `Flux` class, random weights, hidden 256, 2+2 blocks, "
            f"{(side // 2) ** 2} image tokens, {args.steps} steps euler, cfg 1, device {dev}, "
            f"torch threads {torch.get_num_threads()}; median of {args.repeats} interleaved repeats.")
    lines = [head, "", "| variant | model calls | time (s) | realized speed-up | ideal | realized / ideal |",
             "|---|---|---|---|---|---|"]
    for k, c, t, re_, id_, ratio in rows:
        lines.append(f"| {k} | {c}/{total} | {t:.2f} | {re_:.2f}x | {id_:.2f}x | {ratio:.3f} |")
    lines += ["", f"Overhead of the wrappers on computed steps (interval 1 vs unpatched): "
                  f"{100 * per_call_overhead:+.2f}%. Targets: realized/ideal >= 0.97, overhead <= 2%."]
    lines += ["", "On a shared CPU machine wall-clock ratios vary by about 10% from run to run (while developing, "
                  "four runs gave realized/ideal between 0.89 and 1.32 for the same variants); the direct "
                  "measurement below is the reliable figure for the wrappers' cost. On a GPU, run the same script.",
              "", wrapper_cost(n, case, med["unpatched"] / total, args.steps)]
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        write_section("speed", "Speed: realized versus ideal speed-up (`python -m benchmarks.speed`)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
