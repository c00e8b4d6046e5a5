"""Per-sampling-run state: histories of computed outputs, call-time decisions, telemetry.

One :class:`CacheRun` lives for exactly one sampling call. The caller (the ComfyUI wrapper, or a
benchmark) does, for every model call at noise level ``sigma`` with history keys ``keys`` (one per
conditioning chunk):

    decision = run.decide(sigma, keys)
    if decision.skip:
        outputs = decision.predictions          # dict key -> tensor, new tensors
    else:
        outputs = real_forward(...)
        run.record(sigma, {key: output_chunk, ...})
    ...
    run.release()                               # always, in a finally

A computed call whose forward raises is handed back with ``run.unfinished(decision)``: the summary counts
finished calls only. A schedule that is not strictly decreasing (:func:`policy.schedule_problem`) is not
cached: ``run.unsupported`` says why and every call is computed.

History holds computed outputs only, never predictions (feeding predictions back is unstable:
errors compound from step to step). All methods are thread-safe.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from collections import deque
from typing import Any, Hashable, Iterable, Mapping, NamedTuple, Optional, Sequence

import torch

from .policy import (CORRECTION_POINTS, CacheSettings, corrects_skips, decided_at_call_time, extrapolation_rule,
                     flow_time, flow_times, per_call_stages, planned_call, planned_compute, schedule_problem,
                     step_lengths, step_position)
from .spaces import NoiseMap
from .weights import amplification, lagrange_weights, least_squares_weights, paper_weights


@dataclasses.dataclass
class CallRecord:
    """One model call: what was decided and why."""

    step: float            # fractional step position in the schedule
    sigma: float
    computed: bool
    order: int = 0         # history entries used for the prediction (0 when computed)
    error: float = float("nan")  # embedded error estimate of the prediction (when one was made)
    reason: str = ""
    change: float = float("nan")  # computed calls: ||y - y_prev|| / ||y_prev|| per step, first chunk (U curve)
    finished: bool = True  # False: the model call raised (see CacheRun.unfinished); not counted in the summary


class Entry(NamedTuple):
    """One computed output in a history: its coordinate, step position, the output, its estimate in the
    run's extrapolation space (the noise estimate, or the data estimate under a noise-injecting sampler), and its
    data estimate where the run corrects skipped steps (:meth:`CacheRun.corrected_outputs`)."""
    coord: float
    pos: float
    y: torch.Tensor
    est: Optional[torch.Tensor] = None
    data: Optional[torch.Tensor] = None


class Skipped(NamedTuple):
    """A skipped call whose error the next computed step corrects: its step, coordinate, flow time, and the data
    estimate of the output it was given."""
    step: int
    coord: float
    time: float
    data: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Here:
    """What the noise-space extrapolator needs about the skipped call: its step position, sigma, the input
    of this key's chunk, and the model's noise map."""
    pos: float
    sigma: float
    x: Optional[torch.Tensor]
    space: Optional[NoiseMap]


@dataclasses.dataclass
class Decision:
    skip: bool
    predictions: dict = dataclasses.field(default_factory=dict)
    order: int = 0
    error: float = float("nan")
    reason: str = ""
    record: Optional[CallRecord] = dataclasses.field(default=None, repr=False, compare=False)


def sigma_to_coordinate(sigma: float, coordinate: str, schedule: Sequence[float]) -> float:
    """The extrapolation axis at ``sigma``: sigma, lambda = -log(sigma), flow time sigma/(1 + sigma) (``time``, a
    VP model's; a flow model's flow time is its sigma) or the step position in ``schedule`` (``step``)."""
    if coordinate == "sigma":
        return float(sigma)
    if coordinate == "lambda":
        return -math.log(max(float(sigma), 1e-12))
    if coordinate == "time":
        return flow_time(sigma, flow=False)
    if coordinate != "step":
        raise ValueError(f"coordinate must be sigma, lambda, time or step here, got {coordinate!r} "
                         f"('auto' is resolved by CacheSettings.resolved)")
    pos = step_position(schedule, float(sigma))
    return float("nan") if pos is None else pos


class CacheRun:
    """State of one sampling call. ``schedule`` is the sigma schedule actually sampled (n + 1 values);
    ``flow`` says whether the model is a flow model (decides coordinate ``auto``); ``noise_injected`` whether
    the sampler adds fresh noise at every step (the extrapolation space: policy.extrapolation_rule);
    ``sensitivity`` the sampler's sensitivity to each of the n steps (abcache_core/sensitivity.py), which places
    even mode's computed steps (None, or not n values: the step lengths in flow time, euler's); ``calls`` the
    sampler's model calls in each step (abcache_core/sensitivity.measure_calls): where a step has more than one
    (heun, dpm_2), even mode decides per call (policy.spread_calls), else per step. Where policy.corrects_skips
    says so (euler in even mode), a computed step also corrects the steps skipped before it
    (:meth:`corrected_outputs`)."""

    def __init__(self, settings: CacheSettings, schedule: Sequence[float], flow: bool = True,
                 noise_injected: bool = False, sensitivity: Optional[Sequence[float]] = None,
                 calls: Optional[Sequence[Sequence[bool]]] = None):
        self.settings = settings.resolved(flow).validate()
        self.noise_injected = bool(noise_injected)
        # the space the history's estimates are kept in (the same for every step of the run)
        self.estimate_space = extrapolation_rule(self.settings, 0.0, self.noise_injected)[0]
        self.schedule = [float(s) for s in schedule]
        self.steps = max(len(self.schedule) - 1, 0)
        measured = sensitivity is not None and len(sensitivity) == self.steps
        # places even mode's computed steps: the sampler's sensitivity to each step, else its length in flow time
        self.weights = tuple(float(w) for w in sensitivity) if measured else step_lengths(flow_times(self.schedule, flow))
        self.placement = "sampler" if measured else "step lengths"
        # even mode with a multi-call sampler: the calls of each step (one flag per call, True at the step's sigma)
        self.stages: Optional[tuple] = per_call_stages(self.settings, calls, self.steps)
        if self.stages is not None:
            self.placement += ", per call"
        # a computed step corrects the steps skipped since the last one (corrected_outputs)
        self.corrects = corrects_skips(self.settings, sensitivity if measured else None, self.schedule, flow,
                                       self.noise_injected, self.stages is not None)
        self._flow = bool(flow)
        self._skipped_since: dict[Hashable, dict] = {}   # key -> {step: Skipped} since its last computed call
        self._calls: dict = {}                  # (step, key) -> calls made so far (multi-call samplers)
        self.unsupported: Optional[str] = schedule_problem(self.schedule)   # set: nothing is cached
        self.records: list[CallRecord] = []
        self._hist: dict[Hashable, deque] = {}
        st = self.settings
        self._maxlen = max(st.order, 2 if decided_at_call_time(st.mode) else 1,
                           st.fit_points if st.extrapolator == "noise_lsq" and st.mode != "paper" else 1,
                           CORRECTION_POINTS if self.corrects else 1)
        self._lock = threading.RLock()
        self._decided: dict[float, bool] = {}   # sigma -> computed? (one decision per noise level)
        self._acc = 0.0                         # adaptive: accumulated error since the last compute
        self._run = 0                           # consecutive skipped noise levels
        self._last_coord: Optional[float] = None
        nz = [s for s in self.schedule if s > 0]
        ends = nz[:1] + nz[-1:]
        span_pts = [sigma_to_coordinate(s, self.settings.coordinate, self.schedule) for s in ends] if nz else []
        self._span = abs(span_pts[0] - span_pts[-1]) if len(span_pts) == 2 and span_pts[0] != span_pts[-1] else 1.0

    # -- deep copies (ComfyUI <= 0.13 deep-copies model_options): share the live run, never copy tensors
    def __deepcopy__(self, memo):
        return self

    def coordinate(self, sigma: float) -> float:
        return sigma_to_coordinate(sigma, self.settings.coordinate, self.schedule)

    # ------------------------------------------------------------------ decisions
    def decide(self, sigma: float, keys: Iterable[Hashable], device=None, predict: bool = True,
               inputs: Optional[Mapping[Hashable, torch.Tensor]] = None, space: Optional[NoiseMap] = None) -> Decision:
        """Compute or skip this model call. On skip, ``predictions`` holds one new tensor per key.

        One decision per noise level: every call at a σ already decided gets that decision again (a second
        pass, a memory split, Heun's corrector). The steps, in order: :meth:`_must_compute` (schedule,
        plan, history), :meth:`_extrapolate` (safe predictions), :meth:`_over_budget` (call-time modes only),
        then :meth:`_skipped`.

        ``inputs`` (this call's input per key) and ``space`` (the model's noise map) let the extrapolator rule
        predict in the noise space (policy.extrapolation_rule); without them the output is extrapolated.

        ``predict=False`` (not in a call-time mode, whose decision needs the predictions): a skip decision
        carries no predictions; the caller asks :meth:`predict` for each key when it needs it (the block
        cache, which extrapolates one block at a time) and must compute whatever it gets None for.
        """
        call_time = decided_at_call_time(self.settings.mode)
        if not predict and call_time:
            raise ValueError("adaptive mode decides on its predictions: call decide() with predict=True")
        sigma, keys = float(sigma), list(keys)
        with self._lock:
            pos, level, reason = self._must_compute(sigma, keys, call_time)
            self._count_call(pos, keys)
            if reason:
                return self._computed(pos, sigma, reason, level)
            target = self.coordinate(sigma)
            hists = [self._hist[k] for k in keys]
            if predict:
                preds, order, err = self._extrapolate(keys, hists, target, device, call_time,
                                                      self._here(pos, sigma, inputs, space))
                if preds is None:
                    return self._computed(pos, sigma, "unsafe prediction", level)
            else:
                preds, order, err = {}, min(min(self.settings.order, len(h)) for h in hists), float("nan")
            first = level not in self._decided
            if call_time and first:
                reason = self._over_budget(target, err)
                if reason:
                    return self._computed(pos, sigma, reason, level)
            if self.corrects and predict:
                self._note_skipped(pos, sigma, target, preds, inputs, space)
            return self._skipped(pos, sigma, level, target, first, preds, order, err)

    def _note_skipped(self, pos, sigma: float, target: float, preds: dict, inputs, space) -> None:
        """Keep the data estimate of each prediction, for the correction at the key's next computed call. A key
        without its input or a map has nothing kept, and its steps are not corrected."""
        if pos is None or inputs is None or space is None:
            return
        step = int(math.floor(pos + 1e-6))
        for k, y in preds.items():
            x = inputs.get(k)
            if x is not None and x.shape == y.shape:
                data = space.to_data(y, x.to(y.device), sigma)
                if self.settings.cache_device == "cpu" and data.device.type != "cpu":
                    data = data.to("cpu", non_blocking=False)
                self._skipped_since.setdefault(k, {})[step] = Skipped(step, target, flow_time(sigma, self._flow), data)

    def corrected_outputs(self, sigma: float, outputs: Mapping[Hashable, torch.Tensor],
                          space: Optional[NoiseMap]) -> dict:
        """Deferred correction (docs/DESIGN.md): after :meth:`record` of a computed call, the outputs to return
        instead, {key: new tensor}, for the keys that skipped steps since their last computed call (empty where
        the run does not correct, policy.corrects_skips).

        For each skipped step n, its data estimate is interpolated through this call and the ones computed
        before it (Lagrange through up to ``CORRECTION_POINTS``, on the run's axis, under the amplification
        guard); D_interp(n) - D_used(n) is the error of the skipped output in data units, -(...)/t_n in velocity
        (flow time t). The sampler's result moves by s_n times a velocity error at step n (the run's weights, the
        sampler's measured sensitivity), so this call's velocity gets sum_n (s_n / s_m) times the skipped steps'
        errors: the result moves as if they had been given the interpolated outputs, and the next latent is back
        on the trajectory. The history keeps the model's own outputs."""
        out: dict = {}
        if not self.corrects:
            return out
        sigma = float(sigma)
        pos = step_position(self.schedule, sigma)
        with self._lock:
            pending = {k: self._skipped_since.pop(k, None) for k in outputs}
            if pos is None or space is None or not sigma > 0:
                return out
            m = int(math.floor(pos + 1e-6))
            time_m = flow_time(sigma, self._flow)
            for k, y in outputs.items():
                skipped, hist = pending.get(k), self._hist.get(k)
                if not skipped or not hist or hist[0].data is None or not 0 <= m < self.steps:
                    continue
                points = [e for e in list(hist)[:CORRECTION_POINTS] if e.data is not None]
                shift = None
                for n in sorted(skipped.values()):
                    w, used = self._guarded(lambda q: lagrange_weights([e.coord for e in points[:q]], n.coord),
                                            len(points))
                    if w is None or used < 2 or not 0 <= n.step < self.steps:
                        continue
                    interp = self._combine([e.data for e in points[:used]], w, None, cast=False)
                    if interp is None:
                        continue
                    gain = (self.weights[n.step] / self.weights[m]) * (time_m / n.time)
                    term = (interp - n.data.to(interp.device, interp.dtype)) * gain
                    shift = term if shift is None else shift + term
                if shift is None:
                    continue
                # the output is affine in its data estimate: add the shift's part to the model's own output
                change = space.from_data(shift, torch.zeros_like(shift), sigma).to(y.device)
                fixed = y.to(change.dtype) + change
                if bool(torch.isfinite(fixed).all()):
                    out[k] = fixed.to(y.dtype)
        return out

    def would_skip(self, sigma: float, keys: Iterable[Hashable]) -> bool:
        """True when :meth:`decide` called now with these keys would skip (never in a call-time mode, whose
        decision needs the call's own error budget). Changes nothing: no record, no decision stored."""
        if decided_at_call_time(self.settings.mode):
            return False
        sigma, keys = float(sigma), list(keys)
        with self._lock:
            _, _, reason = self._must_compute(sigma, keys, False)
            if reason:
                return False
            preds, _, _ = self._extrapolate(keys, [self._hist[k] for k in keys], self.coordinate(sigma), None, False)
            return preds is not None

    def _must_compute(self, sigma: float, keys: list, call_time: bool):
        """(step position, noise level, reason) -- a reason when this call must run the model."""
        if self.unsupported:
            return None, None, "unsupported schedule"
        pos = step_position(self.schedule, sigma) if self.steps > 0 else None
        if pos is None or not (sigma > 0) or not keys:
            return pos, None, "off-schedule"
        level = round(sigma, 12)
        step = int(math.floor(pos + 1e-6))
        if self.stages is not None:
            # decided per call: the n-th call of a step (heun's corrector, then its call on the trajectory at the
            # same sigma, extrapolated from the corrector when the plan computes only that: policy.spread_calls)
            call = self._call_index(step, keys)
            level = (level, call)
            planned = planned_call(self.settings, step, call, self.weights, self.stages)
        else:
            planned = planned_compute(self.settings, step, self.steps, self.weights) is True
        prior = self._decided.get(level)
        if planned:
            return pos, level, "planned"
        if prior is True:
            return pos, level, "same sigma computed"
        hists = [self._hist.get(k) for k in keys]
        if any(not h for h in hists):
            return pos, level, "no history"
        if call_time and prior is None and self._run >= self.settings.max_skips:
            return pos, level, "max skips"
        if call_time and prior is None and min(len(h) for h in hists) < 2:
            return pos, level, "warming history"
        return pos, level, ""

    def _call_index(self, step: int, keys: list) -> int:
        """How many calls of ``step`` came before this one: the most any of its keys has seen (a key that a
        memory split or a guidance pass leaves out of one call still counts the calls it was in)."""
        return max(self._calls.get((step, k), 0) for k in keys)

    def _count_call(self, pos, keys: list) -> None:
        if self.stages is None or pos is None or not keys:
            return
        step = int(math.floor(pos + 1e-6))
        index = self._call_index(step, keys) + 1
        for k in keys:
            self._calls[(step, k)] = index

    @staticmethod
    def _here(pos, sigma, inputs, space):
        """key -> Here for the noise-space extrapolator (None: output space only)."""
        if inputs is None or space is None or pos is None:
            return None
        return lambda key: Here(pos, sigma, inputs.get(key), space)

    def _extrapolate(self, keys: list, hists: list, target: float, device, want_estimate: bool, here=None):
        """({key: prediction}, lowest order used, largest error estimate) or (None, 0, nan) if one is unsafe."""
        preds, orders, err = {}, [], float("nan")
        for k, h in zip(keys, hists):
            p = self._predict(h, target, device, want_estimate, None if here is None else here(k))
            if p is None:
                return None, 0, float("nan")
            preds[k], o, e = p
            orders.append(o)
            if not math.isnan(e):
                err = e if math.isnan(err) else max(err, e)
        return preds, min(orders), err

    def _over_budget(self, target: float, err: float) -> str:
        """Adaptive mode: charge this skip's error to the budget since the last compute; a reason if it is spent."""
        weight = abs(target - (self._last_coord if self._last_coord is not None else target)) / self._span
        cost = err * max(weight, 1.0 / max(self.steps, 1))
        # >=: a zero budget never skips, even when the estimate is exactly 0 (constant output)
        if not math.isfinite(cost) or self._acc + cost >= self.settings.tolerance:
            return f"estimate {err:.2e} over budget"
        self._acc += cost
        return ""

    def _skipped(self, pos, sigma, level, target, first, preds, order, err) -> Decision:
        if first:
            self._run += 1
            self._decided[level] = False
        self._last_coord = target
        rec = CallRecord(pos, sigma, False, order, err, "extrapolated")
        self.records.append(rec)
        return Decision(True, preds, order, err, "extrapolated", record=rec)

    def predict(self, sigma: float, key: Hashable, device=None) -> Optional[torch.Tensor]:
        """Extrapolation of ``key``'s history at ``sigma`` (a new tensor), or None when none is safe."""
        with self._lock:
            h = self._hist.get(key)
            if not h:
                return None
            p = self._predict(h, self.coordinate(float(sigma)), device, want_estimate=False)
        return None if p is None else p[0]

    def mark(self) -> int:
        """A position in the decision log, for :meth:`extrapolated_since`."""
        with self._lock:
            return len(self.records)

    def extrapolated_since(self, mark: int) -> bool:
        """True when a call decided after ``mark`` (from :meth:`mark`) was extrapolated, not computed."""
        with self._lock:
            return any(not r.computed for r in self.records[mark:])

    def _computed(self, pos, sigma, reason, level=None) -> Decision:
        if level is not None and level not in self._decided:
            self._decided[level] = True
            self._acc, self._run = 0.0, 0
        if level is not None:
            self._last_coord = self.coordinate(sigma)
        rec = CallRecord(-1.0 if pos is None else pos, sigma, True, 0, float("nan"), reason)
        self.records.append(rec)
        return Decision(False, reason=reason, record=rec)

    def unfinished(self, decision: Decision) -> None:
        """The model call of ``decision`` raised (a computed call, or the block cache's call that runs the
        first blocks on a skipped step): it is not counted in the summary."""
        if decision.record is not None:
            with self._lock:
                decision.record.finished = False

    def _predict(self, hist: deque, target: float, device, want_estimate: bool, here: Optional["Here"] = None):
        """(prediction, order used, error estimate) or None when no safe prediction exists.

        ``here``: the skipped call's step position, sigma, input and noise map; with it the extrapolator rule
        (policy.extrapolation_rule) may choose the noise space. Without it (or when the noise space is not
        available for this history) the output is extrapolated."""
        s = self.settings
        entries = list(hist)  # most recent first
        k = min(s.order, len(entries))
        if s.mode == "paper":
            h = 0.0                   # Prop. 2 flow form
            if s.coordinate == "lambda":
                # Prop. 2 VP form, h = mean lambda spacing of the history (target - last for k = 1)
                cs = [e.coord for e in entries[:k]]
                h = (cs[0] - cs[-1]) / (k - 1) if k > 1 else target - cs[0]
            out = self._combine([e.y for e in entries[:k]], paper_weights(k, h), device)
            return None if out is None else (out, k, float("nan"))
        got = None                  # (prediction, points used), in the space the rule picks
        if here is not None:
            space, fit = extrapolation_rule(s, here.pos - entries[0].pos, self.noise_injected)
            if space in ("noise", "data"):
                def predict(m):
                    return self._predict_noise(entries, target, device, here, fit, m, data=space == "data")
                got = predict(k if fit == "lagrange" else s.fit_points)
        if got is None:             # the output: the rule says so, or no noise estimate / input / map here
            def predict(m):
                w, m = self._guarded(lambda n: lagrange_weights([e.coord for e in entries[:n]], target), m)
                out = None if w is None else self._combine([e.y for e in entries[:m]], w, device)
                return None if out is None else (out, m)
            got = predict(k)
        if got is None:
            return None
        out, k = got
        if not want_estimate:
            return out, k, float("nan")
        if k < 2:
            return out, k, float("inf")
        # embedded estimate: the same rule with one point fewer, in the same space
        lo = predict(k - 1)
        if lo is None:
            return None
        hi_t, lo_t = out.float(), lo[0].float()
        denom = float(torch.linalg.vector_norm(hi_t))
        err = float(torch.linalg.vector_norm(hi_t - lo_t)) / denom if denom > 0 else float("inf")
        return out, k, err

    def _guarded(self, weights_for, k: int):
        """(weights, points) for the largest point count <= k whose weights are finite and within the
        amplification guard; (None, 0) when none is."""
        while k >= 1:
            w = weights_for(k)
            if amplification(w) <= self.settings.max_amplification and all(math.isfinite(x) for x in w):
                return w, k
            k -= 1
        return None, 0

    def _predict_noise(self, entries: list, target: float, device, here: "Here", fit: str, limit: int,
                       data: bool = False):
        """(output, points used): the output recombined from the noise estimate -- the last noise estimates (at
        most ``limit``) extrapolated to ``target`` (fit ``lagrange``: exact through them; ``lsq``: a least-squares
        line), turned back into an output with the current input. ``data``: the history holds data estimates,
        which are extrapolated the same way and turned back into an output with the current input
        (NoiseMap.from_data). None when the history has no estimates, the input is missing or the map cannot recombine at this
        sigma."""
        space, x = here.space, here.x
        points = limit
        noisy = []
        for e in entries[:points]:
            if e.est is None:
                break
            noisy.append(e)
        if space is None or x is None or not noisy or not space.usable(here.sigma, "data" if data else "noise"):
            return None
        if x.shape != noisy[0].est.shape:
            return None

        def weights(m):
            cs = [e.coord for e in noisy[:m]]
            return lagrange_weights(cs, target) if fit == "lagrange" else least_squares_weights(cs, target, min(1, m - 1))

        w, m = self._guarded(weights, len(noisy))
        if w is None:
            return None
        est = self._combine([e.est for e in noisy[:m]], w, device, cast=False)
        if est is None:
            return None
        x = x.to(est.device)
        y = space.from_data(est, x, here.sigma) if data else space.from_noise(est, x, here.sigma)
        if not bool(torch.isfinite(y).all()):
            return None
        return y.to(noisy[0].y.dtype), m

    def _estimate(self, space: NoiseMap, y: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The estimate of a computed output kept in the history, in the run's estimate space: its noise estimate,
        or its data estimate (NoiseMap.to_data)."""
        est = space.to_data(y, x, sigma) if self.estimate_space == "data" else space.to_noise(y, x, sigma)
        return est.to(y.dtype)

    @staticmethod
    def _combine(tensors, weights, device, cast: bool = True):
        """sum_j w_j t_j in float32 or wider (cast back to the tensors' dtype unless ``cast`` is False), or
        None if not finite."""
        ref = tensors[0]
        dev = ref.device if device is None else device
        acc = None
        work = torch.promote_types(ref.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays fp64
        for y, w in zip(tensors, weights):
            term = y.to(device=dev, dtype=work) * w
            acc = term if acc is None else acc.add_(term)
        if acc is None or not bool(torch.isfinite(acc).all()):
            return None
        return acc.to(ref.dtype) if cast else acc

    # ------------------------------------------------------------------ history
    def record(self, sigma: float, outputs: Mapping[Hashable, torch.Tensor],
               inputs: Optional[Mapping[Hashable, torch.Tensor]] = None, space: Optional[NoiseMap] = None) -> None:
        """Store computed outputs (one tensor per key) at this sigma. Never call it with predictions.

        ``inputs`` (the call's input per key) and ``space`` (the model's noise map): the noise estimate of each
        output is stored too, for extrapolators that use the noise space (only when the rule may use it)."""
        c = self.coordinate(float(sigma))
        if not math.isfinite(c) or self.unsupported:
            return
        pos = step_position(self.schedule, float(sigma)) if self.steps > 0 else None
        pos = float("nan") if pos is None else pos
        keep_est = space is not None and inputs is not None and self.estimate_space != "output" and float(sigma) > 0
        with self._lock:
            for n, (key, y) in enumerate(outputs.items()):
                y = y.detach()
                prev = self._hist.get(key)
                if n == 0 and prev and prev[0].y.shape == y.shape and prev[0].coord != c:
                    self._note_change(float(sigma), y, prev[0].y)
                x = inputs.get(key) if keep_est or (self.corrects and space is not None and inputs is not None) else None
                fits = x is not None and x.shape == y.shape
                est = self._estimate(space, y, x, float(sigma)) if fits and keep_est else None
                # kept in float32 or wider: a half-precision data estimate would carry its rounding, divided by a
                # small sigma, into the correction (corrected_outputs)
                data = space.to_data(y, x, float(sigma)) if fits and self.corrects else None
                if self.settings.cache_device == "cpu" and y.device.type != "cpu":
                    y = y.to("cpu", non_blocking=False)
                    est = None if est is None else est.to("cpu", non_blocking=False)
                    data = None if data is None else data.to("cpu", non_blocking=False)
                h = self._hist.get(key)
                if h is None or h.maxlen != self._maxlen:
                    h = self._hist[key] = deque(h or (), maxlen=self._maxlen)
                if h and (h[0].y.shape != y.shape or h[0].y.dtype != y.dtype):
                    h.clear()                # shape/dtype changed (resolution, context window): restart
                if any(e.coord == c for e in h):
                    # same noise level again (Heun, or a sampler revisiting a sigma): keep only the newest
                    # evaluation, so Lagrange nodes stay distinct
                    kept = [e for e in h if e.coord != c]
                    h.clear()
                    h.extend(kept)
                h.appendleft(Entry(c, pos, y, est, data))

    def _note_change(self, sigma: float, y: torch.Tensor, prev: torch.Tensor) -> None:
        ref = float(torch.linalg.vector_norm(prev.float()))
        if ref <= 0:
            return
        change = float(torch.linalg.vector_norm(y.float() - prev.to(y.device).float())) / ref
        computed = [r for r in self.records if r.computed]
        cur = next((r for r in reversed(computed) if r.sigma == sigma), None)
        before = next((r for r in reversed(computed) if r.sigma > sigma), None)
        if cur is not None:
            gap = cur.step - before.step if before is not None and cur.step > before.step else 1.0
            cur.change = change / gap   # per step, so gaps of several skipped steps stay comparable

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._hist.pop(key, None)
            self._skipped_since.pop(key, None)

    def history_sizes(self) -> dict:
        with self._lock:
            return {k: len(v) for k, v in self._hist.items()}

    def history_tensors(self) -> list:
        with self._lock:
            return [t for h in self._hist.values() for e in h for t in (e.y, e.est, e.data) if t is not None]

    def release(self) -> None:
        """Drop every tensor reference (the records keep only numbers)."""
        with self._lock:
            self._hist.clear()
            self._decided.clear()
            self._calls.clear()
            self._skipped_since.clear()

    # ------------------------------------------------------------------ telemetry
    def summary(self) -> dict[str, Any]:
        with self._lock:
            done = [r for r in self.records if r.finished]
            total = len(done)
            computed = sum(r.computed for r in done)
            errs = [r.error for r in self.records if not r.computed and math.isfinite(r.error)]
        return {
            "calls": total,
            "computed": computed,
            "skipped": total - computed,
            "speedup": total / computed if computed else float("inf") if total else 1.0,
            "max_error": max(errs) if errs else float("nan"),
        }

    def summary_line(self, name: str = "AB-Cache") -> str:
        s = self.summary()
        err = "n/a" if math.isnan(s["max_error"]) else f"{s['max_error']:.2e}"
        return (f"{name}: computed {s['computed']}/{s['calls']} model calls "
                f"({s['speedup']:.2f}x fewer), largest error estimate {err}")
