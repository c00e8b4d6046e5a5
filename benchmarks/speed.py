"""Realized versus ideal speed-up of AB-Cache on a FLUX-architecture model whose forward pass dominates.

    python -m benchmarks.speed [--steps 28] [--repeats 5] [--tokens 1024]

ComfyUI's own ``Flux`` class with random weights (speed does not depend on training), >= 1024 image tokens,
sampled with ComfyUI's real sampler. Variants run interleaved in one process; medians of repeats:
* unpatched model;
* AB-Cache with interval 1 (every step computed, all wrappers active): the overhead on computed steps;
* AB-Cache defaults and a few other settings: realized speed-up versus the ideal ratio total/computed calls.
With COMFYUI_PATH set (and a GPU), the same script measures that ComfyUI and device.
Writes the section between ``<!-- speed:begin -->`` and ``<!-- speed:end -->`` of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from benchmarks.report import write_section  # noqa: E402


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
    adv = dict(coordinate="auto", tolerance=0.01, max_skips=3, start_percent=0.0, end_percent=1.0,
               final_steps=1, table="", cache_device="same", verbose=False)
    variants = {
        "unpatched": case.patcher,
        "AB-Cache, interval 1 (overhead)": n.ABCacheNode.execute(case.patcher, 2, 1, 3)[0],
        "AB-Cache defaults (order 2, interval 4)": n.ABCacheNode.execute(case.patcher, 2, 4, 3)[0],
        "AB-Cache order 3, interval 3": n.ABCacheNode.execute(case.patcher, 3, 3, 3)[0],
        "AB-Cache paper (i<5 or i%6==0)": n.ABCacheAdvancedNode.execute(case.patcher, 2, 6, 5, mode="paper",
                                                                         **{**adv, "final_steps": 0})[0],
    }
    spied = {k: harness.with_spy(m) for k, m in variants.items()}
    times = {k: [] for k in variants}
    calls = {}
    harness.sample(spied["unpatched"][0], case.latent, pos, neg, steps=2, cfg=1.0)  # warm up allocators
    for r in range(args.repeats):
        for k, (m, spy) in spied.items():
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
    text = "\n".join(lines)
    print("\n" + text)
    if not args.no_write:
        write_section("speed", "Speed: realized versus ideal speed-up (`python -m benchmarks.speed`)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
