"""The main job: sample a FLUX-architecture model through ComfyUI's real sampler with and without AB-Cache.

    bash devtools/run.sh demo            # or: .venv/bin/python -m devtools.demo [--steps 28]

Prints real model calls, wall-clock time (median of repeats, both measured side by side in this process)
and how far the cached result is from the full-compute result. The model is ComfyUI's own ``Flux`` class
with random weights (no checkpoint is needed), large enough that the forward pass dominates.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cfg", type=float, default=1.0)
    args = ap.parse_args(argv)

    from devtools import runtime

    runtime.activate(cpu=True)
    import torch

    from devtools import harness, tiny_models
    from devtools.pack import load_nodes

    torch.set_num_threads(max(1, torch.get_num_threads()))
    n = load_nodes()
    case = tiny_models.build("flux_dev", seed=0, overrides=dict(hidden_size=256, num_heads=4, depth=2,
                                                                 depth_single_blocks=2, axes_dim=[16, 24, 24]),
                             latent_shape=(1, 16, 32, 32))
    pos, neg = case.positive(1), case.negative(2)
    variants = {
        "full compute": case.patcher,
        "AB-Cache (defaults)": n.ABCacheNode.execute(case.patcher, 2, 4, 3)[0],
    }
    results = {}
    for name, model in variants.items():
        m, spy = harness.with_spy(model)
        times, out = [], None
        for _ in range(args.repeats):
            spy.sigmas.clear()
            t0 = time.perf_counter()
            out = harness.sample(m, case.latent, pos, neg, steps=args.steps, cfg=args.cfg)
            times.append(time.perf_counter() - t0)
        results[name] = (spy.calls, statistics.median(times), out)
    ref_calls, ref_t, ref = results["full compute"]
    print(f"\nFLUX-architecture model (ComfyUI Flux class, random weights), {args.steps} steps euler, "
          f"cfg {args.cfg}, latent {tuple(case.latent.shape)}, ComfyUI {runtime.comfyui_version()}")
    print(f"{'variant':24s} {'model calls':>11s} {'time (s)':>9s} {'speedup':>8s} {'rel. diff':>10s}")
    for name, (calls, t, out) in results.items():
        rel = float((out - ref).norm() / ref.norm())
        print(f"{name:24s} {calls:11d} {t:9.2f} {ref_t / t:8.2f} {rel:10.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
