"""AB-Cache against what a user would pick instead, at everyday step counts, on every trained model.

    python -m benchmarks.steps                  # the table (held-out noise), writes docs/BENCHMARKS.md
    python -m benchmarks.steps --study          # the extrapolator study on the search noise
    python -m benchmarks.steps --placement      # the placement study on the search noise
    python -m benchmarks.steps --sampler-placement   # placement by the sampler's sensitivity, search noise
    python -m benchmarks.steps --models flux    # one model; --quick: fewer settings
    python -m benchmarks.steps --from-log a.log b.log   # write the section from runs split over processes

Models: the trained FLUX (digits), SD 1.5 (VP, epsilon) and Wan 2.1 (video, flow) of devtools/trained_models.py.
Settings: 20, 28 and 50 steps; euler at cfg > 1 and cfg 1, dpmpp_2m and heun (20 and 28 steps) as the sampler
being cached.
Budgets: 1/2 of the model calls (20 and 28 steps), 1/3 (all), 1/4 (50 steps), made by the ``speed`` input
(2, 3, 4); every row of a budget costs the same model calls (the cached run's count; a method that needs
more is marked).

Methods at each budget:
* **AB-Cache (node defaults)**: the simple node with only ``speed`` set: even placement (first and last step,
  the rest spread by the schedule's step lengths, no warm-up) and the ``noise`` extrapolator (the noise
  estimate, order 2);
* ablation: the same steps with the ``output`` extrapolator (the raw output, the paper's rule); on the VP
  model (SD 1.5) also with the weights on lambda = -log sigma instead of the defaults' flow time; and the rule
  before this study (fixed: warm-up 3, order 2, every 4th step, output) at its own call count, against the
  new defaults at the same count; for heun the per-step decisions, and at 1/2 the per-call plan with every
  noise level computed once (its ceiling, at more calls than the budget);
* **fewer steps**: the same sampler, euler, and ComfyUI's multistep samplers dpmpp_2m, uni_pc, ipndm, deis,
  res_multistep (the best is reported), with as many steps as the budget's model calls allow;
* **EasyCache** (ComfyUI core), fair (given a copy of its input, which it writes into), threshold bisected to
  the budget on a probe subset.

Noise: the study picks the rule on the *search* noise (seed base 1000); the table uses *held-out* noise (seed
base 7000) that no choice ever saw. Metric: PSNR of the decoded frames against the full run of the same sampler
(mean over images / frames; scikit-image).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from abcache_core.policy import SPREAD_POWER  # noqa: E402
from benchmarks.report import table_cells, write_section  # noqa: E402
from benchmarks.run import Bench, Setting, bisect_param  # noqa: E402

SEARCH_SEED_BASE, HELD_OUT_SEED_BASE = 1000, 7000
CFG = {"flux": 3.0, "sd15": 5.0, "wan": 5.0}
SCHEDULER = {"flux": "simple", "sd15": "normal", "wan": "simple"}
MULTISTEP = ("dpmpp_2m", "uni_pc", "ipndm", "deis", "res_multistep")
BUDGETS = {2.0: "1/2", 3.0: "1/3", 4.0: "1/4"}


def settings_for(model: str, quick: bool = False) -> list[tuple[Setting, tuple[float, ...]]]:
    """(setting, speeds) pairs: 1/2 and 1/3 at 20 and 28 steps, 1/3 and 1/4 at 50 steps."""
    cfg, sch = CFG[model], SCHEDULER[model]
    out = [(Setting("euler", 20, cfg, sch), (2.0, 3.0)), (Setting("euler", 28, cfg, sch), (2.0, 3.0)),
           (Setting("euler", 50, cfg, sch), (3.0, 4.0))]
    if quick:
        return out[:2]
    out += [(Setting("euler", 28, 1.0, sch), (2.0, 3.0)), (Setting("dpmpp_2m", 20, cfg, sch), (2.0, 3.0)),
            (Setting("dpmpp_2m", 28, cfg, sch), (2.0, 3.0)), (Setting("heun", 20, cfg, sch), (2.0, 3.0)),
            (Setting("heun", 28, cfg, sch), (2.0, 3.0))]
    return out


# The study's candidates: Advanced-node inputs on top of even placement at the budget's speed.
STUDY = {
    "output, Lagrange k=2": dict(extrapolator="output", order=2),
    "noise, Lagrange k=2": dict(extrapolator="noise", order=2),
    "noise, Lagrange k=3": dict(extrapolator="noise", order=3),
    "noise_lsq: noise k=2, reach > 2 -> LSQ line through 3": dict(extrapolator="noise_lsq", order=2, long_gap=2.0,
                                                                  fit_points=3),
}
# The study's settings (the table adds heun and dpmpp_2m at 20 steps).
STUDY_SETTINGS = (0, 1, 2, 3, 5)
# The placement study's candidates: the power of the step length (in flow time) that spread_steps spreads by;
# 0 = evenly by step index. The default is policy.SPREAD_POWER.
PLACEMENTS = {"evenly by step index": 0.0, "spread, power 1/3 (default)": 1.0 / 3.0, "spread, power 1/2": 0.5}
PLACEMENT_SETTINGS = (0, 1, 2)      # euler at cfg > 1, 20 / 28 / 50 steps
# The sampler-placement study: multistep samplers (one model call per step, so the node measures their sensitivity)
# at 20 and 28 steps; candidates: the node's placement against the step lengths' on the same settings.
SAMPLER_PLACEMENT_SAMPLERS = ("dpmpp_2m", "deis", "uni_pc", "ipndm")
SAMPLER_PLACEMENTS = ("sampler sensitivity (default)", "step lengths")


def sampler_placement_settings(model: str) -> list[tuple[Setting, tuple[float, ...]]]:
    return [(Setting(sampler, steps, CFG[model], SCHEDULER[model]), (2.0, 3.0))
            for sampler in SAMPLER_PLACEMENT_SAMPLERS for steps in (20, 28)]


@dataclasses.dataclass
class SRow:
    model: str
    setting: str
    budget: str
    method: str
    calls: float
    psnr: float
    note: str = ""


class Runner:
    def __init__(self, model: str, seeds: int, seed_base: int):
        self.b = Bench(classes=range(10), seeds=range(seeds), repeats=1, model=model)
        self.b.seed_base = seed_base
        self.model = model
        import comfy.model_sampling

        self.flow = isinstance(self.b.patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST)
        self.probe = Bench.__new__(Bench)
        self.probe.__dict__.update(self.b.__dict__)
        self.probe.classes, self.probe.seeds = self.b.classes[::3], self.b.seeds[:1]

    def sample(self, model, s: Setting, steps=None):
        import torch

        with torch.no_grad():
            imgs, calls, _ = self.b.sample_all(model, s, steps)
        return imgs, calls

    def advanced(self, speed: float, **inputs):
        """AB-Cache in even mode at ``speed`` with ``inputs``: through the Advanced node, or -- for core-only
        settings (long_gap, fit_points, noise_injected_space, multi_call) -- through the same attach function with
        CacheSettings."""
        inputs = {"mode": "even", "speed": speed, **inputs}
        if set(inputs) & {"long_gap", "fit_points", "noise_injected_space", "multi_call", "deferred_correction"}:
            import importlib

            from abcache_core import CacheSettings

            integration = importlib.import_module(self.b.nodes.__name__ + ".integration")
            return integration.apply_ab_cache(self.b.patcher, CacheSettings(**inputs))
        return self.b.harness.apply_node(self.b.nodes.ABCacheAdvancedNode, self.b.patcher, **inputs)

    def placed(self, s: Setting, speed: float, power: float):
        """AB-Cache with the defaults' extrapolator and axis on the steps spread_steps picks with ``power`` on this
        setting's schedule (through the Advanced node's table mode: the same steps, no warm-up or final step)."""
        from abcache_core import CacheSettings
        from abcache_core.policy import calls_for_speed, flow_times, spread_steps, step_lengths

        sigmas = self.sigmas(s)
        n = len(sigmas) - 1
        steps = spread_steps(step_lengths(flow_times(sigmas, self.flow)), calls_for_speed(n, speed), power)
        table = "".join("F" if i in steps else "s" for i in range(n))
        axis = CacheSettings(mode="even").resolved(self.flow).coordinate    # the defaults' axis, not table mode's
        return self.b.harness.apply_node(self.b.nodes.ABCacheAdvancedNode, self.b.patcher, mode="table", table=table,
                                         warmup=0, final_steps=0, extrapolator="noise", order=2, coordinate=axis)

    def sigmas(self, s: Setting) -> list:
        """The schedule this setting's sampler runs (uni_pc and dpm_2 drop the penultimate sigma)."""
        import comfy.samplers

        return comfy.samplers.KSampler(self.b.patcher, s.steps, "cpu", s.sampler, s.scheduler).sigmas.tolist()

    def placed_by_sampler(self, s: Setting, speed: float) -> bool:
        """Whether the node's placement on this setting (by the sampler's measured sensitivity) computes other steps
        than the step lengths in flow time would (euler's: never)."""
        from abcache_core.policy import calls_for_speed, flow_times, spread_steps, step_lengths

        sigmas = self.sigmas(s)
        calls = calls_for_speed(len(sigmas) - 1, speed)
        return (spread_steps(self.b.harness.placement_weights(sigmas, self.flow, s.sampler, self.b.patcher), calls)
                != spread_steps(step_lengths(flow_times(sigmas, self.flow)), calls))

    def multi_call(self, s: Setting) -> bool:
        """Whether this setting's sampler calls the model more than once in a step (heun): the node decides it per
        call (policy.spread_calls)."""
        from abcache_core.policy import multi_call

        return multi_call(self.b.harness.sampler_calls(self.sigmas(s), self.flow, s.sampler, self.b.patcher))

    def corrects(self, s: Setting) -> bool:
        """Whether the node's defaults correct skipped steps at the next computed one under this setting's sampler
        (policy.corrects_skips: euler, whose measured sensitivity is its step lengths)."""
        import importlib

        import comfy.samplers

        from abcache_core import CacheSettings
        from abcache_core.policy import corrects_skips

        sigmas = self.sigmas(s)
        scope = importlib.import_module(self.b.nodes.__name__ + ".integration.scope")
        sensitivity = scope.sampler_sensitivity(comfy.samplers.sampler_object(s.sampler), sigmas, self.flow,
                                                self.b.patcher)
        return corrects_skips(CacheSettings(mode="even").resolved(self.flow), sensitivity, sigmas, self.flow)

    def every_level_speed(self, s: Setting) -> float:
        """The speed at which even mode's per-call plan (policy.spread_calls) computes every level call and the
        first and last step's calls, and nothing more: the most that plan gets from computing each noise level once
        (heun: every corrector)."""
        stages = self.b.harness.sampler_calls(self.sigmas(s), self.flow, s.sampler, self.b.patcher)
        return sum(len(c) for c in stages) / (len(stages[0]) + len(stages[-1]) + len(stages) - 2)

    def simple(self, **inputs):
        return self.b.harness.apply_node(self.b.nodes.ABCacheNode, self.b.patcher, **inputs)

    def alternatives(self, s: Setting, cap: float, samplers) -> list:
        """(method, images, calls) of what a user would pick instead at ``cap`` model calls: fewer steps with each
        of ``samplers`` (those this ComfyUI has), then fair EasyCache (where its threshold reaches the budget)."""
        out = []
        for sampler in samplers:
            got = self.fewer_steps(s, cap, sampler)
            if got:
                out.append((f"fewer steps: {sampler} {got[2]}", got[0], got[1]))
        got = self.easycache(s, cap)
        if got:
            out.append((f"EasyCache (fair, threshold {got[2]:.3f})", got[0], got[1]))
        return out

    def fewer_steps(self, s: Setting, budget: float, sampler: str):
        """(images, calls, steps) of ``sampler`` with the most steps whose model calls fit ``budget``: one call
        per step, two for heun / dpm_2 (their last step makes one: 2 n - 1 calls)."""
        import comfy.samplers

        if sampler not in comfy.samplers.KSampler.SAMPLERS:
            return None
        two = sampler in ("heun", "dpm_2")
        steps = max(1, int((budget + 1) // 2) if two else int(budget + 1e-9))
        imgs, calls = self.sample(self.b.patcher, Setting(sampler, steps, s.cfg, s.scheduler))
        return imgs, calls, steps

    def easycache(self, s: Setting, budget: float):
        def calls_of(model):
            import torch

            with torch.no_grad():
                return self.probe.sample_all(model, s)[1]

        if calls_of(self.b.easycache(3.0)) > budget + 1e-9:
            return None
        found = bisect_param(lambda t: self.b.easycache(t), 0.0, 3.0, budget, calls_of, iters=7)
        if not found:
            return None
        imgs, calls = self.sample(self.b.easycache(found[0]), s)
        return imgs, calls, found[0]


def psnr(ref, imgs) -> float:
    from benchmarks.user_settings import frame_metrics

    return statistics.fmean(frame_metrics(ref, imgs)[0])


def run_model(model: str, study: bool, quick: bool, seeds: int, placement: bool = False, samplers=None,
              sampler_placement: bool = False) -> list[SRow]:
    study = study or placement or sampler_placement
    r = Runner(model, seeds, SEARCH_SEED_BASE if study else HELD_OUT_SEED_BASE)
    rows = []
    chosen = sampler_placement_settings(model) if sampler_placement else settings_for(model, quick)
    if study and not quick and not sampler_placement:
        chosen = [chosen[i] for i in (PLACEMENT_SETTINGS if placement else STUDY_SETTINGS)]
    if samplers:
        chosen = [(s, speeds) for s, speeds in chosen if s.sampler in samplers]
    for s, speeds in chosen:
        t0 = time.perf_counter()
        ref, full = r.sample(r.b.patcher, s)
        name = f"{s.name} ({s.scheduler})"

        def add(budget, method, imgs, calls, note=""):
            rows.append(SRow(model, name, budget, method, calls, psnr(ref, imgs), note))
            print(fmt(rows[-1:]).splitlines()[-1], flush=True)     # as it goes: a long run keeps what it measured

        for speed in speeds:
            budget = BUDGETS[speed]
            if sampler_placement:      # the node's steps; the step lengths' where they differ (else the same)
                imgs, c = r.sample(r.simple(speed=speed), s)
                add(budget, f"placement: {SAMPLER_PLACEMENTS[0]}", imgs, c)
                if r.placed_by_sampler(s, speed):
                    imgs, c = r.sample(r.placed(s, speed, SPREAD_POWER), s)
                add(budget, f"placement: {SAMPLER_PLACEMENTS[1]}", imgs, c)
                continue
            if placement:
                for label, power in PLACEMENTS.items():
                    imgs, c = r.sample(r.placed(s, speed, power), s)
                    add(budget, f"placement: {label}", imgs, c)
                continue
            if study:
                for label, inputs in STUDY.items():
                    imgs, c = r.sample(r.advanced(speed, **inputs), s)
                    add(budget, f"even, {label}", imgs, c)
                continue
            imgs, calls = r.sample(r.simple(speed=speed), s)
            add(budget, "AB-Cache defaults (even, noise)", imgs, calls)
            cap = calls
            imgs, c = r.sample(r.advanced(speed, extrapolator="output"), s)
            add(budget, "even, output (ablation)", imgs, c)
            if r.placed_by_sampler(s, speed):   # the sampler's sensitivity moved steps: the step lengths' placement
                imgs, c = r.sample(r.placed(s, speed, SPREAD_POWER), s)
                add(budget, "even, step-length placement (ablation)", imgs, c)
            if r.corrects(s):     # euler: the skipped steps corrected at the next computed one, against not
                imgs, c = r.sample(r.advanced(speed, deferred_correction="off"), s)
                add(budget, "even, no deferred correction (ablation)", imgs, c)
            if r.multi_call(s):   # heun: per call (the defaults) against all of a step's calls together
                imgs, c = r.sample(r.advanced(speed, multi_call="per_step"), s)
                add(budget, "even, per-step decisions (ablation)", imgs, c)
                if budget == "1/2":     # what computing every noise level once gets, at more calls than the budget
                    imgs, c = r.sample(r.advanced(r.every_level_speed(s), multi_call="per_call"), s)
                    add(budget, EVERY_LEVEL, imgs, c, "more calls than the budget")
            if not r.flow:      # VP: the defaults' axis (flow time) against lambda, the paper's modes' axis
                imgs, c = r.sample(r.advanced(speed, coordinate="lambda"), s)
                add(budget, "even, lambda axis (ablation)", imgs, c)
            for label, imgs, c in r.alternatives(s, cap, (s.sampler,) + tuple(m for m in MULTISTEP if m != s.sampler)):
                add(budget, label, imgs, c)
        if not study:
            # today's rule before this study (fixed, warm-up 3, order 2, every 4th step) against the new
            # defaults at the same number of calls
            before = r.b.harness.apply_node(r.b.nodes.ABCacheAdvancedNode, r.b.patcher, mode="fixed", order=2,
                                            interval=4, warmup=3, extrapolator="output")
            imgs, calls = r.sample(before, s)
            add("old", "before: fixed, warm-up 3, k=2, interval 4, output", imgs, calls)
            imgs, c = r.sample(r.simple(speed=s.steps / calls if "heun" not in s.sampler else
                                        full / calls), s)
            add("old", "new defaults at the same calls", imgs, c)
        print(f"{model}: {name} done in {time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def fmt(rows: list[SRow]) -> str:
    out = ["| model | setting | budget | method | calls | PSNR (dB) |", "|---|---|---|---|---|---|"]
    for x in rows:
        out.append(f"| {x.model} | {x.setting} | {x.budget} | {x.method}{' (' + x.note + ')' if x.note else ''} | "
                   f"{x.calls:.1f} | {x.psnr:.2f} |")
    return "\n".join(out)


def targets(model: str, setting: str, budget: str, psnr: float, margin: float) -> list[tuple[str, bool]]:
    """The issue's acceptance targets that apply to a row: (what, met?)."""
    out = []
    fifty = setting.split()[1] == "50"
    if budget == "1/2" and not fifty and "cfg 1," not in setting:
        out.append(("+10 dB over the best fewer steps", margin >= 10.0))
    if budget == "1/3":
        out.append(((f"+{9 if fifty else 5} dB over the best fewer steps"), margin >= (9.0 if fifty else 5.0)))
        if fifty and model == "flux":
            out.append(("52 dB", psnr >= 52.0))
    if budget == "1/4" and fifty and model == "flux":
        out.append(("47 dB", psnr >= 47.0))
    return out


# The row of a multi-call sampler at half the calls that computes every level call (Runner.every_level_speed).
EVERY_LEVEL = "per call, every level computed"

# Ablation rows the table's summary weighs against the defaults on the same steps: (method, what the line says).
ABLATION_LINES = (
    ("even, lambda axis (ablation)", "Axis: flow time against lambda on the same steps (SD 1.5)", "flow time"),
    ("even, step-length placement (ablation)", "Placement: by the sampler's measured sensitivity against by the step "
     "lengths, where the two pick other steps", "the sensitivity"),
    ("even, no deferred correction (ablation)", "Deferred correction: the steps skipped before a computed step "
     "corrected through its output (euler) against not corrected", "the correction"),
    ("even, per-step decisions (ablation)", "Heun: deciding each model call (the corrector computed at spread steps, "
     "the call on the trajectory after it extrapolated from it, the first and last step's calls computed) against "
     "deciding a step's two calls together", "per call"),
)


def summarize_ablations(rows: list[SRow]) -> list[str]:
    """The defaults against each ablation of ABLATION_LINES, where the table has it."""
    lines = []
    for method, what, winner in ABLATION_LINES:
        gains = []
        for x in rows:
            if x.method == method:
                ab = next(y for y in rows if (y.model, y.setting, y.budget) == (x.model, x.setting, x.budget)
                          and y.method.startswith("AB-Cache defaults"))
                gains.append(ab.psnr - x.psnr)
        if gains:
            lines.append(f"- {what}: {min(gains):+.1f} to {max(gains):+.1f} dB, mean {statistics.fmean(gains):+.1f} dB; "
                         f"{winner} better at {sum(g > 0 for g in gains)} of {len(gains)} points.")
    return lines


def summarize(rows: list[SRow]) -> str:
    """Per model, setting and budget: defaults vs the best fewer-steps run and fair EasyCache, with the target."""
    lines = summarize_ablations(rows)
    keys = list(dict.fromkeys((x.model, x.setting, x.budget) for x in rows))
    for model, setting, budget in keys:
        rs = [x for x in rows if (x.model, x.setting, x.budget) == (model, setting, budget)]
        ab = next((x for x in rs if x.method.startswith("AB-Cache defaults")), None)
        if budget == "old":
            old = next(x for x in rs if x.method.startswith("before"))
            new = next(x for x in rs if x.method.startswith("new defaults"))
            lines.append(f"- {model}, {setting}: new defaults {new.psnr:.1f} dB vs the earlier defaults "
                         f"{old.psnr:.1f} dB at {old.calls:.0f} calls ({new.psnr - old.psnr:+.1f} dB).")
            continue
        few = [x for x in rs if x.method.startswith("fewer steps")]
        if ab is None or not few:
            continue
        best = max(few, key=lambda x: x.psnr)
        easy = next((x for x in rs if x.method.startswith("EasyCache")), None)
        margin = ab.psnr - best.psnr
        goal = ""
        for text, ok in targets(model, setting, budget, ab.psnr, margin):
            goal += f" Target {text}: {'met' if ok else 'MISSED'}."
        extra = f"; fair EasyCache {easy.psnr:.1f} dB" if easy else ""
        every = next((x for x in rs if x.method.startswith(EVERY_LEVEL)), None)
        if every:
            extra += f"; every level computed {every.psnr:.1f} dB at {every.calls:.0f} calls"
        lines.append(f"- {model}, {setting}, {budget} ({ab.calls:.0f} calls): defaults **{ab.psnr:.1f} dB**, best fewer "
                     f"steps {best.psnr:.1f} dB ({best.method.split(': ')[1]}), {margin:+.2f} dB{extra}.{goal}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", action="store_true", help="the extrapolator study on the search noise")
    ap.add_argument("--placement", action="store_true", help="the placement study on the search noise")
    ap.add_argument("--sampler-placement", action="store_true",
                    help="placement by the sampler's sensitivity against the step lengths, search noise")
    ap.add_argument("--models", nargs="+", default=["flux", "sd15", "wan"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samplers", nargs="+", default=None,
                    help="only the settings of these cached samplers (e.g. a re-run merged with --from-log)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="noise samples per class (default: 2 for the study, 1 for the table)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--from-log", nargs="+", metavar="LOG",
                    help="write the section from the table rows these runs printed (runs split over processes)")
    args = ap.parse_args(argv)
    if args.from_log:
        rows = [row for path in args.from_log for row in rows_from_text(Path(path).read_text())]
        write(rows, args.study, seeds=None, placement=args.placement, sampler_placement=args.sampler_placement)
        return 0
    from devtools import runtime

    runtime.activate(cpu=True)
    import torch

    torch.set_num_threads(1)
    if args.seeds is None:
        args.seeds = 2 if args.study else 1
    rows = []
    for model in args.models:
        rows += run_model(model, args.study, args.quick, args.seeds, args.placement, args.samplers,
                          args.sampler_placement)
    print(fmt(rows))
    print(summarize_sampler_placement(rows) if args.sampler_placement else summarize_placement(rows) if args.placement
          else summarize_study(rows) if args.study else summarize(rows))
    if not args.no_write:
        write(rows, args.study, args.seeds, args.placement, args.sampler_placement)
    return 0


def rows_from_text(text: str) -> list[SRow]:
    """The rows of a table printed by fmt (header and separator lines skipped)."""
    return [SRow(c[0], c[1], c[2], c[3], float(c[4]), float(c[5])) for c in table_cells(text, 6, "model")]


def summarize_study(rows: list[SRow], prefix: str = "even, ", names=tuple(STUDY),
                    base_name: str = next(n for n in STUDY if n.startswith("noise, Lagrange k=2"))) -> str:
    """Each candidate (method ``prefix + name``) against the default (``base_name``) at the same calls: mean and
    range of the PSNR difference over every model, setting and budget, and how often it is better by > 0.2 dB."""
    base = {(x.model, x.setting, x.budget): x.psnr for x in rows if x.method == f"{prefix}{base_name}"}
    lines = [f"Against **{base_name}**{'' if 'default' in base_name else ' (the default)'} at the same calls, over {len(base)} model x setting x "
             f"budget points:"]
    for name in names:
        if name == base_name:
            continue
        d = [x.psnr - base[(x.model, x.setting, x.budget)] for x in rows
             if x.method == f"{prefix}{name}" and (x.model, x.setting, x.budget) in base]
        if d:
            wins = sum(v > 0.2 for v in d)
            per_model = []
            for model in dict.fromkeys(x.model for x in rows):
                dm = [x.psnr - base[(x.model, x.setting, x.budget)] for x in rows if x.method == f"{prefix}{name}"
                      and x.model == model and (x.model, x.setting, x.budget) in base]
                if dm:
                    per_model.append(f"{model} {min(dm):+.1f} to {max(dm):+.1f}")
            lines.append(f"- {name}: {statistics.fmean(d):+.1f} dB on average (from {min(d):+.1f} to {max(d):+.1f}; "
                         f"{', '.join(per_model)}); better by > 0.2 dB at {wins} of {len(d)} points.")
    return "\n".join(lines)


def summarize_placement(rows: list[SRow]) -> str:
    return summarize_study(rows, "placement: ", tuple(PLACEMENTS),
                           next(n for n, p in PLACEMENTS.items() if abs(p - SPREAD_POWER) < 1e-12))


def summarize_sampler_placement(rows: list[SRow]) -> str:
    """The step lengths' placement against the node's, per cached sampler."""
    lines = []
    for sampler in dict.fromkeys(x.setting.split()[0] for x in rows):
        mine = [x for x in rows if x.setting.split()[0] == sampler]
        text = summarize_study(mine, "placement: ", SAMPLER_PLACEMENTS, SAMPLER_PLACEMENTS[0]).splitlines()
        lines.append(f"- {sampler}: {text[-1][2:]}" if len(text) > 1 else f"- {sampler}: no points")
    return "\n".join(lines)


PLACEMENT_WHY = (
    "Which steps to compute for a given number of calls (first and last always, no warm-up), with the defaults' "
    "extrapolator (noise estimate, order 2, on flow time). Candidates spread the computed steps evenly in the "
    "measure (step length in flow time)^power: power 0 is evenly by step index (the placement before this study); 1/3 "
    "is what equidistributing an order-2 rule's error gives (docs/DESIGN.md, \"Placement\"). Flow schedules with "
    "shift (FLUX, Wan) have short first steps and long last ones, so a positive power moves computed steps "
    "toward the end.")

SAMPLER_PLACEMENT_WHY = (
    "Even mode spreads the computed steps by each step's sensitivity: how far an error in that step's model output "
    "moves the sampler's result (docs/DESIGN.md, \"Placement\"). For euler that is the step's length in flow "
    "time; multistep samplers carry a step's output into later steps with coefficients of their own, and the node "
    "measures their sensitivity by running the sampler on a linear probe model (abcache_core/sensitivity.py). "
    "Here the node's placement is compared with the step lengths' on the same settings, for multistep samplers "
    "that call the model once per step; where the two pick the same steps the rows are the same run.")

WHY = (
    "Why these defaults. Placement: computing the first and the last step and spreading the rest by the "
    "schedule's step lengths (density ~ (step length in flow time)^(1/3)), with no warm-up. The \"old\" rows "
    "measure it against the earlier defaults (warm-up 3, every 4th step, raw output) at equal calls: +8.7 to +26.8 "
    "dB at 20-28 steps on every model and sampler here, and at 50 steps +10.5 dB on FLUX, +12.1 dB on Wan and +0.9 "
    "dB on SD 1.5 (where the earlier warm-up's extra calls on the first steps still pay off). The \"steps-placement\" "
    "section compares the spread with evenly by step index (what it replaced) on the search noise. "
    "Extrapolator: the noise estimate recombined with the current latent (the \"steps-study\" section: level with "
    "the raw output on average over 30 search points, ahead on FLUX at cfg 3, behind at cfg 1 and on Wan). The "
    "ablation rows below (same steps, raw output) give the noise estimate -1.5 to +3.5 dB on FLUX at cfg > 1 "
    "(behind with heun and with dpmpp_2m at 20 steps at half the calls) and -0.7 / -0.8 dB at cfg 1, -1.0 to +3.4 "
    "dB on Wan, and the same result on SD 1.5 (epsilon prediction: the output is the noise estimate). Axis: the weights are computed on flow time (sigma for flow models, "
    "sigma/(1+sigma) for SD 1.5); the \"lambda axis\" ablation rows give SD 1.5 the paper's VP axis on the same "
    "steps (the \"Axis\" line below). Placement by the sampler: the steps are spread by each step's measured "
    "sensitivity (how far an error in its output moves the result; for euler the step length, for dpmpp_2m up to "
    "3.4x it where a long log-sigma step follows: docs/DESIGN.md, \"Placement\"); the \"step-length placement\" "
    "ablation rows run the step lengths' placement where it picks other steps (the \"Placement\" line below; the "
    "\"steps-sampler-placement\" section compares more samplers on the search noise). Heun calls the model twice in "
    "a step: it keeps the step lengths and is decided per call -- every call of the first and the last step "
    "computed, elsewhere the first call at each computed noise level (the corrector of the step before) and the call "
    "on the trajectory after it extrapolated from it at the same noise level, the levels spread by the length of the "
    "step whose corrector they are (docs/DESIGN.md, \"Placement\"); the \"per-step decisions\" ablation rows decide "
    "a step's two calls "
    "together, as before (the \"Heun\" line below; at 28 steps and a third of the calls they make 17 calls, the "
    "defaults 18). At half the calls the \"every level computed\" rows show what the per-call plan gets from "
    "computing every noise level once, at more calls than the budget (21 at 20 steps, 29 at 28): on FLUX it stays "
    "under the +10 dB target, so there the reuse of the corrector, not the choice of levels, is the limit. "
    "Deferred correction: under euler (its measured sensitivity is its step lengths) a computed step also corrects "
    "the steps skipped before it, through its own output: their data estimates interpolated through the new call, "
    "the difference carried by the sensitivity (docs/DESIGN.md, \"Deferred correction\"); the \"no deferred "
    "correction\" ablation rows run the same steps without it (the \"Deferred correction\" line below). "
    "Multistep samplers and heun keep their computed outputs as they are. "
    "The adaptive mode (Advanced node) is kept as an option: its tolerance "
    "does govern the calls (bisected to 16/50 calls it ends at 0.0017, inside its range), and at that budget it "
    "is below the spread placement on FLUX (54.1 dB with order 3 on the raw output, search noise, fidelity "
    "section, against 58.9 dB for the spread at one call more, 17, on the search noise, \"steps-placement\" "
    "section), and it needs a tolerance search per step count to hit a budget; "
    "the speed input does not.")


def write(rows: list[SRow], study: bool, seeds, placement: bool = False, sampler_placement: bool = False) -> None:
    """The extrapolator study's, a placement study's or the table's section of docs/BENCHMARKS.md."""
    from devtools import runtime

    searched = study or placement or sampler_placement
    seeds = seeds if seeds is not None else (2 if study else 1)
    section = ("steps-sampler-placement" if sampler_placement else "steps-placement" if placement else
               "steps-study" if study else "steps")
    title = ("Placement by the sampler's sensitivity, search noise (`python -m benchmarks.steps --sampler-placement`)"
             if sampler_placement else
             "Placement study on the search noise (`python -m benchmarks.steps --placement`)" if placement else
             "Extrapolator study on the search noise (`python -m benchmarks.steps --study`)" if study else
             "AB-Cache vs fewer steps at 20-50 steps, every trained model (`python -m benchmarks.steps`)")
    noise = ("search noise (seed base 1000)" if searched else
             "held-out noise (seed base 7000, never used to choose)")
    head = (f"ComfyUI {runtime.comfyui_version()}, CPU. 10 classes x {seeds} samples per setting, {noise}. PSNR of "
            f"the decoded frames against the full run of the same sampler. Budgets are set by the node's `speed` "
            f"(2, 3, 4): 1/2, 1/3, 1/4 of the calls; every row of a budget costs at most the AB-Cache row's calls "
            f"unless marked 'more calls than the budget'.")
    summary = (SAMPLER_PLACEMENT_WHY + "\n\n" + summarize_sampler_placement(rows) if sampler_placement else
               PLACEMENT_WHY + "\n\n" + summarize_placement(rows) if placement else summarize_study(rows) if study
               else WHY + "\n\n" + summarize(rows))
    write_section(section, title, head + "\n\n" + summary + "\n\n" + fmt(rows))


if __name__ == "__main__":
    raise SystemExit(main())
