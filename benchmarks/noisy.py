"""AB-Cache under samplers that add fresh noise at every step (ancestral, SDE), on every trained model.

    python -m benchmarks.noisy                   # held-out noise, writes docs/BENCHMARKS.md ("steps-noisy")
    python -m benchmarks.noisy --models flux     # one model
    python -m benchmarks.noisy --from-log a.log b.log   # write the section from runs split over processes

Why the data estimate: WHY below (written into the section).

Settings: euler_ancestral and dpmpp_2m_sde at 20 steps, the model's cfg and scheduler (as in
``benchmarks.steps``); budgets 1/2 and 1/3 of the calls (``speed`` 2 and 3). Methods at each budget:

* **AB-Cache (node defaults)**: the simple node with only ``speed`` set (data estimate under these samplers);
* ablation, the same steps: the noise estimate (what every sampler got before; the core-only setting
  ``noise_injected_space = noise``) and the raw output (``extrapolator = output``);
* **fewer steps** of the same sampler with as many steps as the budget's calls allow (another sampler draws
  other noise, so it cannot reproduce this sampler's image);
* **EasyCache** (ComfyUI core), fair, threshold bisected to the budget as in ``benchmarks.steps``.

Noise: held-out (seed base 7000); the data space was chosen on the search noise. Metric: PSNR of the decoded
frames against the full run of the same sampler with the same seed (its injected noise included).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from benchmarks.report import write_section  # noqa: E402
from benchmarks.steps import (BUDGETS, CFG, HELD_OUT_SEED_BASE, SCHEDULER, Runner, Setting, SRow, fmt,  # noqa: E402
                              psnr, rows_from_text)

WHY = ("Such a sampler changes the latent by a random amount between two model calls. The model's noise estimate "
       "takes that noise in (it jumps from call to call), its data estimate (x0) does not, so under these samplers "
       "AB-Cache extrapolates the data estimate and recombines it with the current latent, which carries the "
       "injected noise (docs/DESIGN.md, \"Samplers that add noise\"). The noise-estimate rows are what every "
       "sampler got before.")
SAMPLERS = ("euler_ancestral", "dpmpp_2m_sde")
STEPS = 20
SPEEDS = (2.0, 3.0)
DEFAULTS = "AB-Cache defaults (data estimate)"
ABLATIONS = {"noise estimate (before; ablation)": dict(noise_injected_space="noise"),
             "output (ablation)": dict(extrapolator="output")}


def run_model(model: str, seeds: int) -> list[SRow]:
    r = Runner(model, seeds, HELD_OUT_SEED_BASE)
    rows = []
    for sampler in SAMPLERS:
        s = Setting(sampler, STEPS, CFG[model], SCHEDULER[model])
        t0 = time.perf_counter()
        ref, _ = r.sample(r.b.patcher, s)
        name = f"{s.name} ({s.scheduler})"

        def add(budget, method, imgs, calls):
            rows.append(SRow(model, name, budget, method, calls, psnr(ref, imgs)))
            print(fmt(rows[-1:]).splitlines()[-1], flush=True)

        for speed in SPEEDS:
            budget = BUDGETS[speed]
            imgs, cap = r.sample(r.simple(speed=speed), s)
            add(budget, DEFAULTS, imgs, cap)
            for label, inputs in ABLATIONS.items():
                imgs, c = r.sample(r.advanced(speed, **inputs), s)
                add(budget, label, imgs, c)
            for label, imgs, c in r.alternatives(s, cap, (sampler,)):
                add(budget, label, imgs, c)
        print(f"{model}: {name} done in {time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def summarize(rows: list[SRow]) -> str:
    """Per model, setting and budget: the defaults against the noise estimate and the best alternative."""
    lines = []
    for key in dict.fromkeys((x.model, x.setting, x.budget) for x in rows):
        rs = [x for x in rows if (x.model, x.setting, x.budget) == key]
        ab = next((x for x in rs if x.method == DEFAULTS), None)
        before = next((x for x in rs if x.method.startswith("noise estimate")), None)
        output = next((x for x in rs if x.method.startswith("output")), None)
        others = [x for x in rs if x.method.startswith(("fewer steps", "EasyCache"))]
        if ab is None or before is None or output is None or not others:
            continue
        best = max(others, key=lambda x: x.psnr)
        lines.append(f"- {key[0]}, {key[1]}, {key[2]} ({ab.calls:.0f} calls): defaults **{ab.psnr:.1f} dB**, "
                     f"{ab.psnr - before.psnr:+.1f} dB against the noise estimate ({before.psnr:.1f} dB), "
                     f"{ab.psnr - output.psnr:+.1f} dB against the raw output; best other {best.psnr:.1f} dB "
                     f"({best.method.split(' (')[0]}), {ab.psnr - best.psnr:+.1f} dB.")
    return "\n".join(lines)


def write(rows: list[SRow], seeds) -> None:
    from devtools import runtime

    head = (f"ComfyUI {runtime.comfyui_version()}, CPU. 10 classes x {seeds or 1} samples per setting, held-out noise "
            f"(seed base {HELD_OUT_SEED_BASE}). PSNR of the decoded frames against the full run of the same sampler "
            f"and seed. Budgets set by the node's `speed` (2, 3); every row of a budget costs at most the AB-Cache "
            f"row's calls.")
    write_section("steps-noisy", "AB-Cache under samplers that add noise (`python -m benchmarks.noisy`)",
                  head + "\n\n" + WHY + "\n\n" + summarize(rows) + "\n\n" + fmt(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["flux", "sd15", "wan"])
    ap.add_argument("--seeds", type=int, default=1, help="noise samples per class")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--from-log", nargs="+", metavar="LOG",
                    help="write the section from the table rows these runs printed (runs split over processes)")
    args = ap.parse_args(argv)
    if args.from_log:
        write([row for path in args.from_log for row in rows_from_text(Path(path).read_text())], args.seeds)
        return 0
    from devtools import runtime

    runtime.activate(cpu=True)
    import torch

    torch.set_num_threads(1)
    rows = []
    for model in args.models:
        rows += run_model(model, args.seeds)
    print(fmt(rows))
    print(summarize(rows))
    if not args.no_write:
        write(rows, args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
