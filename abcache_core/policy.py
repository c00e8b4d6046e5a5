"""When to compute: the settings of a cache and the schedule-level rules of each mode.

A *step* is an index into the sampler's schedule ``sigmas[0..n]`` (n steps, ``sigmas[n]`` usually 0).
Decisions are made on the sigma of a model call, never on a call counter, so samplers that evaluate
the model more than once per step (Heun, DPM-2, DPM++ 2S) or between schedule points get the decision of
the step whose interval [sigmas[i], sigmas[i+1]) contains that sigma.

Modes
* ``even``     -- compute the first and the last step and spread steps between, evenly in the measure
                  (the step's sensitivity)^SPREAD_POWER -- the sampler's own where it was measured
                  (abcache_core/sensitivity.py), else the step length in flow time: as many computed steps as
                  ``speed`` allows (``calls_for_speed``), no warm-up (:func:`spread_steps`).
* ``fixed``    -- compute the first ``warmup`` steps, then every ``interval``-th step; extrapolate between.
* ``paper``    -- the official AB-Cache schedule and rule: compute when ``i < warmup or i % interval == 0``
                  (the released code: ``i < 5 or i % 6 == 0``), binomial weights on the computed history.
* ``adaptive`` -- skip while the accumulated embedded error estimate stays under ``tolerance``
                  (decided at call time by :class:`abcache_core.state.CacheRun`).
* ``table``    -- an explicit per-step table (EB-Cache's "cache table"), one code per step:
                  ``F``/``1`` compute, ``s``/``0``/``2`` skip (EB-Cache: reuse both attention and MLP),
                  ``a`` EB-Cache's "reuse attention only" -- at the output level (and in the FLUX block
                  node, see nodes/blocks.py) a step is either run or not, so ``a`` is computed.
                  The keyword ``eb50`` stands for EB-Cache's published 50-step table
                  (:data:`EB_CACHE_TABLE_50`); a table written for another step count is mapped onto
                  the schedule with :func:`derive_table`.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import math
from typing import Optional, Sequence

from .params import PARAMS, default


def _field(name: str):
    """A settings field whose default lives in the parameter table (abcache_core/params.py)."""
    return dataclasses.field(default=default(name))


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """Configuration only (no tensors, no locks): safe to deep-copy with the ModelPatcher.

    Every default comes from :data:`abcache_core.params.PARAMS`; the meaning of each field is its tooltip there.
    """

    mode: str = _field("mode")
    order: int = _field("order")                 # history length k used for extrapolation (1 = plain reuse)
    interval: int = _field("interval")           # fixed/paper: compute every interval-th step
    warmup: int = _field("warmup")               # first steps always computed
    final_steps: int = _field("final_steps")     # last steps always computed (0: none)
    start_percent: float = _field("start_percent")  # caching allowed only in [start, end) of the schedule
    end_percent: float = _field("end_percent")
    coordinate: str = _field("coordinate")       # auto | sigma | lambda | step | time (auto: see resolved())
    tolerance: float = _field("tolerance")       # adaptive: accumulated error budget between two computes
    max_skips: int = _field("max_skips")         # adaptive: most consecutive skipped steps
    table: str = _field("table")                 # table mode: one char per step
    max_amplification: float = _field("max_amplification")  # guard: sum |w| above this -> lower order
    cache_device: str = _field("cache_device")   # same | cpu (keep history on the CPU)
    exposure_delta: float = _field("exposure_delta")  # EB-Cache exposure-bias compensation (1 = off)
    exposure_apply: str = _field("exposure_apply")    # extrapolated | all
    speed: float = _field("speed")               # even: total calls / computed calls asked for
    extrapolator: str = _field("extrapolator")   # noise | output | noise_lsq (see extrapolation_rule)
    long_gap: float = _field("long_gap")         # noise_lsq: reach (in steps) beyond which the line is fitted
    fit_points: int = _field("fit_points")       # computed steps the least-squares line goes through
    noise_injected_space: str = _field("noise_injected_space")  # data | noise: under noise-injecting samplers
    multi_call: str = _field("multi_call")       # per_call | per_step: even mode under heun, dpm_2 (spread_calls)
    deferred_correction: str = _field("deferred_correction")  # auto | off (corrects_skips)

    def resolved(self, flow: bool) -> "CacheSettings":
        """These settings with the coordinate made concrete (docs/DESIGN.md, "Extrapolation"): ``auto`` is sigma
        for flow models; for VP models flow time (``time``) in mode even and lambda in the paper's modes (fixed,
        adaptive, table, paper: the axes graphs saved before even mode sampled on). ``time`` on a flow model is
        sigma itself."""
        if self.coordinate not in ("auto", "time"):
            return self
        if flow:
            return dataclasses.replace(self, coordinate="sigma")
        if self.coordinate == "auto" and self.mode != "even":
            return dataclasses.replace(self, coordinate="lambda")
        return dataclasses.replace(self, coordinate="time")

    def validate(self) -> "CacheSettings":
        """Raise ValueError with an actionable message for out-of-range or inconsistent settings."""
        check_values({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        return self


def _check_window(start_percent: float, end_percent: float) -> None:
    if start_percent > end_percent:
        raise ValueError(f"start_percent ({start_percent}) must not exceed end_percent ({end_percent})")


def _check_adaptive_order(mode: str, order: int) -> None:
    if decided_at_call_time(mode) and order < 2:
        raise ValueError("adaptive mode needs order >= 2: its error estimate compares order k with order k-1")


def _check_table(mode: str, table: str) -> None:
    if mode == "table":
        parse_table(table)


def _check_speed(mode: str, speed: float) -> None:
    if mode == "even" and speed < 1.0:
        raise ValueError(f"even mode needs speed >= 1 (1 = every step computed, 3 = one call in three), got {speed}")


# Rules between parameters: (the parameters a rule reads, the rule). One place per rule.
CROSS_CHECKS = (
    (("start_percent", "end_percent"), _check_window),
    (("mode", "order"), _check_adaptive_order),
    (("mode", "table"), _check_table),
    (("mode", "speed"), _check_speed),
)


def check_values(values: dict, params: Optional[dict] = None) -> None:
    """Check each given value against its parameter (range, kind, choices) and every cross-check whose inputs
    are all given. ``None`` means "not known yet" (a ComfyUI input fed by a link): its checks wait until it is.
    ``params`` replaces table entries where a node offers a narrower range (e.g. order up to 4)."""
    params = {**PARAMS, **(params or {})}
    known = {k: params[k].check(v) for k, v in values.items() if v is not None}
    for names, rule in CROSS_CHECKS:
        if all(n in known for n in names):
            rule(*(known[n] for n in names))


# EB-Cache's shipped cache_table.npy (aSleepyTree/EB-Cache, DiT-XL/2, 50 DDPM steps) in sampling order:
# 22 computed steps, then skip/compute alternating 9 times, then sssF, ssF, ssF -> 34 of 50 computed.
EB_CACHE_TABLE_50 = "F" * 22 + "sF" * 9 + "sssF" + "ssF" + "ssF"
TABLE_ALIASES = {"eb50": EB_CACHE_TABLE_50}

_CODE = {"F": "F", "f": "F", "1": "F", "s": "s", "S": "s", "0": "s", "2": "s", ".": "s", "a": "a", "A": "a"}


def parse_table_codes(text: str) -> tuple[str, ...]:
    """A cache table -> one normalised code per step: ``F`` compute, ``s`` skip, ``a`` reuse attention only.

    Accepted characters: F/f/1 (compute), s/S/0/./2 (skip; ``2`` is EB-Cache's "reuse both"), a/A (EB-Cache's
    "reuse attention, recompute MLP"). Whitespace and commas are ignored. The keyword ``eb50`` gives
    :data:`EB_CACHE_TABLE_50`. EB-Cache's own numeric array uses 0 = full, 1 = attention only, 2 = both,
    which clashes with 1 = compute / 0 = skip here: a table mixing ``2`` with ``0`` or ``1`` is refused.
    """
    raw = str(text)
    alias = TABLE_ALIASES.get(raw.strip().lower())
    if alias is not None:
        raw = alias
    chars = [c for c in raw if not c.isspace() and c != ","]
    if not chars:
        raise ValueError("table is empty: give one character per step, e.g. 'FFFFsFsFsF' (F/1 compute, s/0 skip), "
                         "or 'eb50' for EB-Cache's published 50-step table")
    bad = sorted({c for c in chars if c not in _CODE})
    if bad:
        raise ValueError(f"table has invalid characters {bad}: use F or 1 to compute a step, s or 0 (or 2) to skip "
                         f"it, a for EB-Cache's attention-only reuse (computed here)")
    if "2" in chars and ("0" in chars or "1" in chars):
        raise ValueError("table mixes 2 with 0/1: this looks like EB-Cache's numeric cache_table (0 = full, "
                         "1 = reuse attention, 2 = reuse both), where 0 means the opposite of here. Write it "
                         "with letters instead: F = full, a = attention only, s = reuse both")
    return tuple(_CODE[c] for c in chars)


def parse_table(text: str) -> tuple[bool, ...]:
    """'FFFsFs...' or '1110 10...' -> tuple of compute flags (``a`` counts as compute)."""
    return tuple(c != "s" for c in parse_table_codes(text))


def derive_table(table: str, steps: int) -> str:
    """A table written for ``len(table)`` steps, derived for ``steps`` steps (codes F/a/s, as a string).

    Same length: returned unchanged (normalised codes). Otherwise:
    * the first and the last step are computed;
    * the number of computed steps is round(steps * computed fraction of the source), at least 2;
    * the remaining computes follow the source's density by relative position: with C(u) the fraction of
      the source's interior computes in the first u of its interior, target interior step i (of m) is
      computed where round(K * C(i/m)) steps up, K = computes left after first and last. Dense stretches
      (EB-Cache's computed first 44%) stay dense, alternating stretches keep alternating;
    * a computed step takes the source code at its relative position when that is ``a``, else ``F``.
    """
    codes = parse_table_codes(table)
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return _derive(codes, steps)


@functools.lru_cache(maxsize=256)
def _derive(codes: tuple, steps: int) -> str:
    n = len(codes)
    if n == steps:
        return "".join(codes)
    if steps <= 2:
        return "F" * steps
    computed = [c != "s" for c in codes]
    k_total = min(steps, max(2, round(steps * sum(computed) / n)))
    k_int = k_total - 2
    m = steps - 2
    src = computed[1:-1] if n > 2 else []
    c_int = sum(src)
    if not src or c_int == 0:
        src, c_int = [True] * max(m, 1), max(m, 1)   # no interior density to follow: spread evenly

    def cum(u: float) -> float:       # fraction of interior computes in the first u (0..1) of the interior
        pos = u * len(src)
        whole = int(math.floor(pos + 1e-12))
        got = sum(src[:whole])
        if whole < len(src):
            got += src[whole] * (pos - whole)
        return got / c_int

    out = ["F"] + ["s"] * m + ["F"]
    prev = 0
    for i in range(1, m + 1):
        cur = int(math.floor(k_int * cum(i / m) + 0.5))
        if cur > prev:
            out[i] = "F"
        prev = cur
    for i, c in enumerate(out):     # keep EB-Cache's attention-only code where the source has it
        if c == "F" and codes[min(n - 1, int((i + 0.5) * n / steps))] == "a":
            out[i] = "a"
    return "".join(out)


def decided_at_call_time(mode: str) -> bool:
    """Whether ``mode`` decides compute-or-skip at call time from its error estimate (adaptive), rather than
    from the schedule (fixed, paper, table). Such a mode needs predictions to decide and keeps >= 2 entries."""
    return mode == "adaptive"


def step_position(schedule: Sequence[float], sigma: float) -> Optional[float]:
    """Fractional position of ``sigma`` in a decreasing schedule: i for sigmas[i], i + f between.

    Returns None when sigma lies outside the schedule (above sigmas[0] or below sigmas[-1]).
    """
    s = list(schedule)
    n = len(s)
    if n == 0 or not math.isfinite(sigma):
        return None
    tol = 1e-5 * max(abs(s[0]), 1.0)
    if sigma > s[0] + tol or sigma < s[-1] - tol:
        return None
    # increasing copy for bisect: r[j] = s[n-1-j]
    r = s[::-1]
    j = bisect.bisect_left(r, sigma - tol)
    if j < n and abs(r[j] - sigma) <= tol:
        return float(n - 1 - j)
    # strictly between r[j-1] < sigma < r[j] -> between s[i] > sigma > s[i+1] with i = n-1-j
    i = n - 1 - j
    hi, lo = s[i], s[i + 1]
    return i + (hi - sigma) / (hi - lo) if hi != lo else float(i)


def schedule_problem(schedule: Sequence[float]) -> Optional[str]:
    """Why the steps of ``schedule`` cannot be told apart by their sigma (None when they can).

    Decisions map a model call to its step by sigma (:func:`step_position`), which needs a strictly
    decreasing schedule. A hand-made schedule that is not monotonic (spliced sigmas) or that repeats or
    revisits a sigma would put calls on the wrong steps; such a run is not cached at all.
    """
    s = [float(v) for v in schedule]
    bad = next((i for i, v in enumerate(s) if not math.isfinite(v)), None)
    if bad is not None:
        return f"the sigma schedule has a non-finite value at position {bad}"
    for i in range(len(s) - 1):
        if not s[i + 1] < s[i]:
            what = "repeats" if s[i + 1] == s[i] else "rises"
            return (f"the sigma schedule is not strictly decreasing (it {what} at step {i + 1}: {s[i]:.6g} -> "
                    f"{s[i + 1]:.6g}), so its steps cannot be told apart by their noise level")
    return None


def calls_for_speed(steps: int, speed: float) -> int:
    """Computed steps for ``speed`` times fewer model calls over ``steps`` steps: steps / speed rounded to the
    nearest whole number (halves down, so never slower than asked), at least 2 (first and last) and at most
    ``steps``."""
    steps = int(steps)
    if steps <= 2 or speed <= 1.0:
        return max(steps, 0)
    return max(2, min(steps, math.ceil(steps / float(speed) - 0.5)))


# Fewer computed steps than this leave too little to extrapolate from: plain fewer steps are as good or better
# (docs/BENCHMARKS.md, "steps" section).
MIN_USEFUL_CALLS = 5


def speed_problem(settings: CacheSettings, steps: int, calls=None) -> Optional[str]:
    """Why the asked-for speed cannot beat simply sampling fewer steps (None when it can): even mode with fewer
    than MIN_USEFUL_CALLS computed steps. ``calls``: the sampler's calls in each step (sensitivity.measure_calls);
    where they are decided per call (:func:`per_call_stages`) the steps with a computed call count."""
    if settings.mode != "even" or steps <= 2:
        return None
    stages = per_call_stages(settings, calls, steps)
    if stages is not None:
        total = sum(len(c) for c in stages)
        plan = spread_calls(equal_weights(steps), stages, calls_for_speed(total, settings.speed))
        computed = len({s for s, _ in plan})
        if computed >= MIN_USEFUL_CALLS or computed >= steps:
            return None
        return (f"speed {settings.speed:g} at {steps} steps computes the model at {computed} of them: too few to "
                f"extrapolate from, so this will not beat simply sampling fewer steps without AB-Cache. Lower the "
                f"speed or use more steps.")
    calls = calls_for_speed(steps, settings.speed)
    if calls >= MIN_USEFUL_CALLS or calls >= steps:
        return None
    return (f"speed {settings.speed:g} at {steps} steps leaves {calls} model calls: too few to extrapolate from, so "
            f"this will not beat simply sampling {calls} steps without AB-Cache. Lower the speed (at most "
            f"{steps / MIN_USEFUL_CALLS:.1f} here) or use more steps.")


# Placement (docs/DESIGN.md, "Placement"): a skipped step adds to the result about its sensitivity s (how far an
# error in its output moves the result; for euler its length dt in flow time) times its extrapolation error, which
# grows like g^k with the gap g (in steps) for an order-k rule; the sum is smallest where the density of computed
# steps follows s^(1/(k+1)) -- 1/3 for the default order 2. Measured against plain even spacing on every trained
# model (docs/BENCHMARKS.md, "steps-placement" section).
SPREAD_POWER = 1.0 / 3.0


def uses_placement(settings: CacheSettings) -> bool:
    """Whether ``settings`` place their computed steps by the steps' weights (:func:`spread_steps`): even mode."""
    return settings.mode == "even"


def flow_time(sigma: float, flow: bool) -> float:
    """``sigma`` as the time t of a flow path x = (1 - t) x0 + t eps: t = sigma for flow models; for the others
    (x = x0 + sigma eps) x / (1 + sigma) is that path with t = sigma / (1 + sigma)."""
    sigma = float(sigma)
    return sigma if flow else sigma / (1.0 + sigma)


def flow_times(schedule: Sequence[float], flow: bool) -> tuple:
    """:func:`flow_time` of every sigma of a schedule."""
    return tuple(flow_time(s, flow) for s in schedule)


def step_lengths(times: Sequence[float]) -> tuple:
    """|t_i - t_{i+1}| of a schedule given in flow time (:func:`flow_times`): euler's sensitivity to each step's
    velocity, the placement weights when the sampler's own are not known (abcache_core/sensitivity.py)."""
    return tuple(abs(float(times[i]) - float(times[i + 1])) for i in range(len(times) - 1))


def equal_weights(steps: int) -> tuple:
    """Placement weights of ``steps`` equal steps: evenly by step index."""
    return (1.0,) * max(int(steps), 0)


@functools.lru_cache(maxsize=256)
def spread_steps(weights: tuple, calls: int, power: float = SPREAD_POWER) -> frozenset:
    """The ``calls`` computed steps of the len(weights) steps of a schedule whose step i has sensitivity
    ``weights[i]`` (:func:`step_lengths` in flow time, or the sampler's own: abcache_core/sensitivity.py).

    Step i has weight |weights[i]|^power (power 0: evenly by index) and sits at the weight of the steps before
    it, scaled so that the first step is at 0 and the last at 1; the computed steps are the steps nearest to
    ``calls`` evenly spaced targets 0, 1/(calls - 1), ..., 1 (a tie goes to the later step, a taken step to the
    nearest free one). So the first and the last step are computed, and with equal steps the gaps between
    computed steps differ by at most one."""
    steps = len(weights)
    if calls >= steps:
        return frozenset(range(max(steps, 0)))
    if calls <= 1:
        return frozenset({0}) if steps > 0 else frozenset()
    weight = [abs(float(w)) ** power for w in weights]
    before = list(itertools.accumulate(weight[:-1], initial=0.0))
    if not before[-1] > 0:
        before = [float(i) for i in range(steps)]
    position = [b / before[-1] for b in before]
    chosen: set = set()
    for j in range(calls):
        target = j / (calls - 1)
        chosen.add(min((i for i in range(steps) if i not in chosen),
                       key=lambda i: (round(abs(position[i] - target), 9), -i)))
    return frozenset(chosen)


def multi_call(stages) -> bool:
    """Whether ``stages`` (sensitivity.measure_calls: per step, one flag per model call) has a step with more than
    one call -- a sampler such as heun or dpm_2, which even mode plans per call (:func:`spread_calls`)."""
    return stages is not None and any(len(c) > 1 for c in stages)


def per_call_stages(settings: CacheSettings, calls, steps: int) -> Optional[tuple]:
    """``calls`` (sensitivity.measure_calls, one tuple of flags per step) as a tuple of tuples where ``settings``
    decide per call -- mode even, ``multi_call`` per_call, a sampler with more than one call in a step, measured
    over these ``steps`` -- else None (decided per step)."""
    if not (uses_placement(settings) and settings.multi_call == "per_call" and multi_call(calls)
            and len(calls) == steps):
        return None
    return tuple(tuple(bool(f) for f in c) for c in calls)


def level_call(flags: tuple) -> int:
    """The call of a step (``flags``: one per call, True at the step's own sigma; sensitivity.measure_calls) that
    even mode's per-call plan computes. Where calls follow the step's call on the trajectory (between schedule
    points: dpm_2's midpoint), the last of them: it completes the step (dpm_2's update uses only the midpoint's
    output). Else the call at the step's sigma just before the call on the trajectory (heun's corrector of the step
    before; heunpp2's second stage of the step before): its input is the nearest to the trajectory's, and the call
    on the trajectory is then extrapolated from it at the same noise level. A one-call step: its only call."""
    on_trajectory = len(flags) - 1 - flags[::-1].index(True)
    return len(flags) - 1 if on_trajectory < len(flags) - 1 else max(on_trajectory - 1, 0)


def level_weights(weights: tuple, stages: tuple) -> tuple:
    """The placement weight of each step's level call (:func:`level_call`; ``stages``: sensitivity.measure_calls):
    the weight of the sampler step that makes it. Where another call at the same sigma follows it, the level call
    is a stage of the step before (heun's corrector at the end of step i - 1, heunpp2's second stage) and takes that
    step's weight; elsewhere (dpm_2's midpoint, the first step) its own step's."""
    return tuple(weights[s - 1] if s > 0 and stages[s].count(True) > 1 else weights[s] for s in range(len(stages)))


@functools.lru_cache(maxsize=256)
def spread_calls(weights: tuple, stages: tuple, calls: int, power: float = SPREAD_POWER) -> frozenset:
    """Even mode's plan for a sampler that calls the model more than once in a step: the computed calls, as
    (step, index of the call in that step) pairs, ``calls`` of them (at most).

    ``stages``: per step, one flag per call in order, True for a call at the step's own sigma
    (sensitivity.measure_calls). Every call of the first and of the last step is computed (the first and the last
    step computed, as :func:`spread_steps` does). The other steps get their *level call* (:func:`level_call`:
    heun's corrector of the step before, dpm_2's midpoint) computed, spread by
    :func:`level_weights` as :func:`spread_steps` spreads steps. Their other calls are extrapolated: heun's call on
    the trajectory from the corrector just computed at the same sigma (the same noise level), dpm_2's call on the
    trajectory from the midpoints before it (docs/DESIGN.md, "Placement"). A budget beyond every level call
    computes the other calls of steps spread the same way."""
    n = len(stages)
    every = [(s, c) for s in range(n) for c in range(len(stages[s]))]
    if calls >= len(every) or n <= 2:
        return frozenset(every)
    ends = {0, n - 1}
    plan = {(s, c) for s in ends for c in range(len(stages[s]))}
    level = {s: level_call(stages[s]) for s in range(n)}
    placed = level_weights(tuple(weights), stages)
    left = calls - len(plan)
    inner = max(0, min(n - 2, left))
    plan |= {(s, level[s]) for s in spread_steps(placed, inner + 2, power)}
    left -= inner
    for m in range(min(n - 2, left), 0, -1):     # every level call computed: the other calls of spread steps
        extra = {(s, c) for s in spread_steps(placed, m + 2, power) - ends for c in range(len(stages[s]))
                 if c != level[s]}
        if len(extra) <= left:
            plan |= extra
            break
    return frozenset(plan)


def extrapolation_rule(settings: CacheSettings, reach: float, noise_injected: bool = False) -> tuple[str, str]:
    """(space, fit) for a skipped call ``reach`` steps beyond the last computed one; ``noise_injected``: the
    sampler adds fresh noise at every step (ancestral, SDE, LCM, DDPM; decided by the ComfyUI layer).

    space: ``output`` (the model's output), ``noise`` (its noise estimate, recombined with the current input;
    abcache_core/spaces.py; the output is used where the model has no noise map) or ``data`` (its data
    estimate, recombined the same way). fit: ``lagrange`` (exact through ``order`` points) or ``lsq`` (a
    least-squares line through ``fit_points`` points).

    * ``noise``:     the noise estimate, Lagrange (the default: docs/BENCHMARKS.md, "steps-study");
    * ``output``:    the output, Lagrange (the paper's rule on the real grid; earlier versions);
    * ``noise_lsq``: the noise estimate; Lagrange up to ``long_gap`` steps beyond the last computed step, the
                     least-squares line beyond (docs/DESIGN.md, "Placement and extrapolator by gap").
    Under a noise-injecting sampler, ``noise`` and ``noise_lsq`` extrapolate the data estimate instead
    (``noise_injected_space``; docs/DESIGN.md, "Samplers that add noise"): the injected noise is in the latent
    and in the model's next noise estimate, never in an extrapolated one, while the data estimate does not
    jump with it. The paper mode keeps its own rule (binomial weights on the output).
    """
    if settings.mode == "paper" or settings.extrapolator == "output":
        return "output", "lagrange"
    space = "data" if noise_injected and settings.noise_injected_space == "data" else "noise"
    if settings.extrapolator == "noise_lsq" and reach > settings.long_gap + 1e-6:
        return space, "lsq"
    return space, "lagrange"


# Points the interpolation of a skipped step's data estimate goes through at the next computed step (the new call and
# the two computed before it; fewer at the start of a run): CacheRun.corrected_outputs.
CORRECTION_POINTS = 3


def corrects_skips(settings: CacheSettings, sensitivity: Optional[Sequence[float]], schedule: Sequence[float],
                   flow: bool, noise_injected: bool = False, per_call: bool = False) -> bool:
    """Whether a computed step corrects the steps skipped since the last one (CacheRun.corrected_outputs;
    docs/DESIGN.md, "Deferred correction"): mode even with ``deferred_correction`` auto (whatever the
    extrapolator), a deterministic sampler decided per step (not ``per_call``) whose measured
    ``sensitivity`` (abcache_core/sensitivity.py) is its step lengths in flow time -- euler's: each step's output
    moves the latent of that step alone, which is what the correction carries the error of a skipped step by.
    Multistep samplers (dpmpp_2m: their output also enters the next step) lost with it, and samplers whose
    sensitivity is not measured are left as they were."""
    if not (uses_placement(settings) and settings.deferred_correction == "auto") or noise_injected or per_call:
        return False
    lengths = step_lengths(flow_times(schedule, flow))
    if sensitivity is None or len(sensitivity) != len(lengths) or not any(lengths):
        return False
    return all(math.isclose(float(s), x, rel_tol=1e-6, abs_tol=1e-12) for s, x in zip(sensitivity, lengths))


def planned_compute(settings: CacheSettings, step: int, steps: int, weights: Optional[tuple] = None) -> Optional[bool]:
    """Schedule-level decision for ``step`` of ``steps``; ``weights``: each step's sensitivity (``steps`` values,
    :func:`spread_steps`), which places even mode's computed steps (None: equal steps).

    True: must compute. False: may skip (if the history allows it). None: adaptive decides at call time.
    """
    if step < 0 or step >= steps:
        return True
    if uses_placement(settings):
        if not (settings.start_percent <= step / steps < settings.end_percent):
            return True
        return step in spread_steps(weights if weights is not None else equal_weights(steps),
                                    calls_for_speed(steps, settings.speed))
    if step < settings.warmup or step >= steps - settings.final_steps:
        return True
    frac = step / steps
    if not (settings.start_percent <= frac < settings.end_percent) and settings.mode != "table":
        return True
    mode = settings.mode
    if mode == "fixed":
        return (step - settings.warmup) % settings.interval == 0
    if mode == "paper":
        return step % settings.interval == 0
    if mode == "table":
        return _derive(parse_table_codes(settings.table), steps)[step] != "s"
    return None  # adaptive


def planned_call(settings: CacheSettings, step: int, call: int, weights: tuple, stages: tuple) -> bool:
    """Even mode's decision for the ``call``-th model call (from 0) of ``step`` of a multi-call sampler
    (:func:`multi_call`): True to compute. Steps outside [start_percent, end_percent), and calls the plan does not
    know (more calls in a step than measured), are computed."""
    steps = len(stages)
    if step < 0 or step >= steps or call >= len(stages[step]):
        return True
    if not (settings.start_percent <= step / steps < settings.end_percent):
        return True
    total = sum(len(c) for c in stages)
    return (step, call) in spread_calls(tuple(weights), tuple(stages), calls_for_speed(total, settings.speed))


def plan(settings: CacheSettings, steps: int, weights: Optional[tuple] = None) -> list[Optional[bool]]:
    """planned_compute for every step (None where adaptive decides at call time)."""
    return [planned_compute(settings, i, steps, weights) for i in range(steps)]
