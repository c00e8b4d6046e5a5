"""How much the sampler's result moves per unit of error in one step's model output: what even mode spreads the
computed steps by (docs/DESIGN.md, "Placement").

A skipped step's extrapolation error e_i moves the sampler's result by about s_i e_i. Measured as an error in
the model's *velocity in flow time* v (x = (1 - t) x0 + t eps, v = eps - x0), euler's s_i is exactly the step's
length in flow time, |t_i - t_{i+1}|, for flow and for VP models alike. A multistep sampler carries a step's
output into later steps with coefficients of its own: dpmpp_2m weights the output before a long log-sigma step
by 1 + 1/(2r) and the one before by -1/(2r) (r the ratio of the two steps), deis, ipndm, lms and uni_pc spread it
over their next steps. Where the steps change length, as at the end of a VP schedule, their s_i is several times
the step length.

:func:`measure_sensitivity` measures s_i by running the sampler itself on :class:`VelocityProbe`, a linear
stand-in for the model: one channel per step, and at a call of step j (the step whose interval holds the
call's sigma, as decisions map calls to steps) velocity e_j, the unit vector of channel j, with the data
estimate D = x_flow - t v that this velocity and the input imply. From a zero latent the sampler's result in
flow coordinates then is exactly (s_0, ..., s_{n-1}). Everything the sampler does with the model's outputs is
measured, nothing about its coefficients is assumed. It gives None, and the caller places by the step lengths,
for a sampler that calls the model more than once in a step (heun, dpm_2: the corrector's call at a step's end
and the next step's first call share one noise level, so the probe splits a step's weight between the two ends;
measured, placing such samplers by it lost 0.5 to 2.6 dB where it moved a step, docs/DESIGN.md), and wherever the
result does not measure the sensitivity: added noise, a step-size controller, norms across channels, a call off
the schedule.

Samplers that call the model more than once in a step are not placed by a sensitivity; :func:`measure_calls`
records instead which calls each step gets and whether each is at the step's own sigma (heun: the corrector of
the step before, then the call on the trajectory, both at the step's sigma; dpm_2: the call on the trajectory,
then its midpoint between schedule points), for the per-call plan of even mode (policy.spread_calls).

Pure torch; never imports ComfyUI.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from .policy import flow_time, step_position


class ProbeAbort(Exception):
    """The sampler called the probe in a way that says its result will not measure the sensitivity."""


class VelocityProbe:
    """A linear stand-in for a denoiser, called like ComfyUI's ``model(x, sigma, **extra_args)`` -> data estimate.

    ``x`` has one channel per step of ``schedule`` (shape (1, steps, 1, 1)). At a call whose sigma lies in
    step j the velocity in flow time is ``scale`` times e_j and the data estimate is D = x_flow - t v, returned
    in the sampler's units: for a flow model x_flow = x and t = sigma; for a VP model the sampler's latent is
    x = x0 + sigma eps, so x_flow = x / (1 + sigma) and t = sigma / (1 + sigma) (policy.flow_time). A call off
    the schedule, or a second call in a step, aborts the sampler (:class:`ProbeAbort`)."""

    def __init__(self, schedule: Sequence[float], flow: bool, scale: float = 1.0):
        self.schedule = [float(s) for s in schedule]
        self.steps = len(self.schedule) - 1
        self.flow = bool(flow)
        self.scale = float(scale)
        self.called: set = set()

    def step_of(self, sigma: float) -> int:
        pos = step_position(self.schedule, sigma)
        if pos is None or not sigma > 0:
            raise ProbeAbort(f"the sampler called the model at sigma {sigma:.6g}, off its schedule")
        return min(int(math.floor(pos + 1e-6)), self.steps - 1)

    def __call__(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        s = torch.as_tensor(sigma).flatten()
        value = float(s[0])
        if not bool(torch.all(s == s[0])):
            raise ProbeAbort("the sampler called the model with different sigmas in one batch")
        j = self.step_of(value)
        if j in self.called:
            raise ProbeAbort(f"the sampler called the model more than once in step {j}")
        self.called.add(j)
        t = flow_time(value, self.flow)
        x_flow = x if self.flow else x / (1.0 + value)
        v = torch.zeros_like(x)
        v[:, j] = self.scale
        return x_flow - t * v


SamplerRun = Callable[[VelocityProbe, torch.Tensor, torch.Tensor], torch.Tensor]


def measure_sensitivity(run_sampler: SamplerRun, schedule: Sequence[float], flow: bool) -> Optional[tuple]:
    """(|s_0|, ..., |s_{n-1}|): the sampler's sensitivity to each step's velocity, measured by running it.

    ``run_sampler(model, x, sigmas)`` runs the sampler on ``model`` from latent ``x`` over ``sigmas`` and
    returns its result. Run twice, with the probe's velocity at scale 1 and 2, in float64 (float32 where the
    sampler mixes in float32 tensors of its own, as UniPC does). None -- the caller uses the step lengths --
    for a sampler that calls the model more than once in a step, and when anything says the result does not
    measure the sensitivity: the sampler raised, called the model off the schedule, left a step out, returned a
    non-finite or wrongly shaped result, or one that is not linear in the velocity (added noise, step-size
    control)."""
    schedule = [float(s) for s in schedule]
    if len(schedule) < 3:
        return None
    for dtype in (torch.float64, torch.float32):
        try:
            one, two = (_probe_result(run_sampler, schedule, flow, scale, dtype) for scale in (1.0, 2.0))
        except ProbeAbort:      # a call that no dtype changes
            return None
        except Exception:       # any other failure of a sampler we cannot see into: not measured in this dtype
            continue
        if one is None or two is None:
            return None
        tol = 1e-9 if dtype == torch.float64 else 1e-5
        if not torch.allclose(two, 2.0 * one, rtol=tol, atol=0.0) or not bool((one != 0).any()):
            return None
        return tuple(float(v) for v in one.abs())
    return None


def _probe_result(run_sampler: SamplerRun, schedule: list, flow: bool, scale: float, dtype) -> Optional[torch.Tensor]:
    """The sampler's result on :class:`VelocityProbe` from a zero latent, in flow coordinates (float64, flat); None
    when the sampler left a step out or the result is not a finite tensor of the latent's shape."""
    steps = len(schedule) - 1
    probe = VelocityProbe(schedule, flow, scale)
    x = torch.zeros((1, steps, 1, 1), dtype=dtype)
    with torch.no_grad():
        out = run_sampler(probe, x, torch.tensor(schedule, dtype=dtype))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x.shape) or len(probe.called) != steps:
        return None
    out = out.detach().to(torch.float64).flatten()
    if not flow:
        out = out / (1.0 + schedule[-1])        # x_flow = x / (1 + sigma) at the schedule's end
    return out if bool(torch.isfinite(out).all()) else None


class CallLog(VelocityProbe):
    """The probe of :func:`measure_calls`: answers every call (a step may be called more than once) and logs, in
    order, the step of each call and whether its sigma is the step's own schedule point."""

    def __init__(self, schedule: Sequence[float], flow: bool):
        super().__init__(schedule, flow)
        self.log: list[tuple[int, bool]] = []

    def __call__(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        value = float(torch.as_tensor(sigma).flatten()[0])
        j = self.step_of(value)
        pos = step_position(self.schedule, value)
        self.log.append((j, abs(pos - j) < 1e-6))
        self.called.clear()
        return super().__call__(x, sigma, *args, **kwargs)


def measure_calls(run_sampler: SamplerRun, schedule: Sequence[float], flow: bool) -> Optional[tuple]:
    """The sampler's model calls in each step, in order: a tuple per step of the schedule with one flag per call,
    True for a call at the step's own sigma (heun: the corrector of the step before, then the call on the
    trajectory, both at this step's sigma) and False for a call between schedule points (dpm_2's midpoint). The
    last call at the step's own sigma is the one *on the trajectory*, whose input is the sampler's latent.
    Measured by running the sampler on :class:`CallLog` (same arguments as :func:`measure_sensitivity`). None
    where the calls cannot be mapped onto steps: the sampler raised, called the model off the schedule, left a step
    out, or a step has no call at its own sigma."""
    schedule = [float(s) for s in schedule]
    if len(schedule) < 2:
        return None
    steps = len(schedule) - 1
    probe = CallLog(schedule, flow)
    x = torch.zeros((1, steps, 1, 1), dtype=torch.float64)
    try:
        with torch.no_grad():
            run_sampler(probe, x, torch.tensor(schedule, dtype=torch.float64))
    except Exception:       # ProbeAbort (a call off the schedule) or a sampler we cannot see into
        return None
    calls = tuple(tuple(at_point for j, at_point in probe.log if j == step) for step in range(steps))
    if any(True not in c for c in calls):
        return None
    return calls
