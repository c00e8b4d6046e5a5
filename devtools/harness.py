"""Drive real ComfyUI sampling on a ModelPatcher and observe the real forward calls.

Used by tests and benchmarks; needs ComfyUI activated first (devtools.runtime.activate).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

import comfy.patcher_extension as pe
import comfy.sample


@dataclasses.dataclass
class Spy:
    """What the innermost forward spy saw: one entry per real forward call."""

    sigmas: list = dataclasses.field(default_factory=list)       # sigma of each call
    schedules: list = dataclasses.field(default_factory=list)    # sample_sigmas (list) of each call
    uuids: list = dataclasses.field(default_factory=list)        # number of conditioning chunks per call
    inputs_intact: bool = True                                   # no wrapper wrote into the model input

    @property
    def calls(self) -> int:
        return len(self.sigmas)


def _find_to(args, kwargs):
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    for a in reversed(args):
        if isinstance(a, dict) and "sigmas" in a:
            return a
    return {}


def with_spy(model, level: Optional[str] = None):
    """Clone ``model`` and add a spy as the innermost wrapper of the real forward.

    level: "diffusion_model" (default when the model's forward runs those wrappers) or "apply_model".
    The spy also checks that its input is not modified in place by whatever runs after it.
    """
    if level is None:
        dm = model.model.diffusion_model
        level = "diffusion_model" if callable(getattr(type(dm), "_forward", None)) else "apply_model"
    spy = Spy()
    m = model.clone()

    def record(executor, *args, **kwargs):
        to = _find_to(args, kwargs)
        s = to.get("sigmas")
        spy.sigmas.append(float(s.flatten()[0]) if isinstance(s, torch.Tensor) else float("nan"))
        ss = to.get("sample_sigmas")
        spy.schedules.append([float(v) for v in ss.flatten()] if isinstance(ss, torch.Tensor) else [])
        spy.uuids.append(len(to.get("uuids") or []))
        x = args[0] if args else None
        parts = [x] if isinstance(x, torch.Tensor) else [p for p in (x or []) if isinstance(p, torch.Tensor)]
        before = [p.clone() for p in parts]   # LTX-2 passes a [video, audio] list
        out = executor(*args, **kwargs)
        if not all(torch.equal(b, p) for b, p in zip(before, parts)):
            spy.inputs_intact = False
        return out

    wtype = pe.WrappersMP.DIFFUSION_MODEL if level == "diffusion_model" else pe.WrappersMP.APPLY_MODEL
    m.add_wrapper_with_key(wtype, "abcache_test_spy", record)
    return m, spy


def sample(model, latent, positive, negative, steps=10, cfg=2.0, sampler="euler", scheduler="simple", seed=0,
           denoise=1.0, **kwargs) -> torch.Tensor:
    """comfy.sample.sample with seeded noise; returns the final latent."""
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=denoise, disable_pbar=True, seed=seed, **kwargs)


def apply_node(node_cls, model, **inputs):
    """Run a pack node on ``model`` as a graph would: every input not given takes the node schema's default
    (which comes from the core's parameter table). Returns the patched MODEL."""
    values = {i.id: getattr(i, "default", None) for i in node_cls.define_schema().inputs if i.id != "model"}
    unknown = set(inputs) - set(values)
    if unknown:
        raise TypeError(f"{node_cls.__name__} has no input(s) {sorted(unknown)}")
    return node_cls.execute(model, **{**values, **inputs})[0]


# The tests' own schedule: the fixed schedule (speed 0 on the simple node, mode "fixed" on the Advanced node),
# denser than the node's defaults, so that tiny runs of 6-10 steps skip some steps at known places.
TEST_SCHEDULE = dict(order=2, interval=3, warmup=2, speed=0.0)


def abcache(nodes, model, **inputs):
    """Apply AB-Cache as a graph would: the simple node, or AB-Cache (Advanced) when any of its own inputs is
    given. Inputs not given: ``TEST_SCHEDULE`` for order/interval/warmup/speed (and mode "fixed" on the Advanced
    node), the node defaults for the rest."""
    inputs = {**TEST_SCHEDULE, **inputs}
    simple = set(inputs) <= set(TEST_SCHEDULE)
    if not simple:
        inputs.setdefault("mode", "fixed")
    return apply_node(nodes.ABCacheNode if simple else nodes.ABCacheAdvancedNode, model, **inputs)


def expected_calls(spy: Spy, settings, flow: bool = True, sampler: Optional[str] = None, patcher=None) -> int:
    """Real forward calls a fixed/paper/table/even plan asks for, given the calls an unpatched run made (``flow``:
    whether the model is a flow model; ``sampler``: the sampler's name, and ``patcher`` the model -- they place even
    mode's steps, by the sampler's measured sensitivity where the node measures it, else by euler's step lengths,
    and for a sampler that calls the model more than once in a step decide even mode per call: one forward per
    sampler call, as the tiny models run cond and uncond in one batch)."""
    import math

    from abcache_core import planned_compute, step_position
    from abcache_core.policy import multi_call, planned_call, uses_placement

    n, seen, measured = 0, {}, {}
    for sigma, sched in zip(spy.sigmas, spy.schedules):
        pos = step_position(sched, sigma)
        if pos is None or sigma <= 0:
            n += 1
            continue
        step = int(math.floor(pos + 1e-6))
        if tuple(sched) not in measured:      # the probes run once per schedule, as the node runs them once a run
            measured[tuple(sched)] = (placement_weights(sched, flow, sampler, patcher),
                                      sampler_calls(sched, flow, sampler, patcher) if uses_placement(settings) else None)
        weights, stages = measured[tuple(sched)]
        if multi_call(stages):
            if step == 0 and seen.get((tuple(sched), 0), 0) >= len(stages[0]):    # the same schedule sampled again
                seen = {k: v for k, v in seen.items() if k[0] != tuple(sched)}
            call = seen.get((tuple(sched), step), 0)
            seen[(tuple(sched), step)] = call + 1
            n += planned_call(settings, step, call, weights, stages)
            continue
        n += planned_compute(settings, step, len(sched) - 1, weights) is not False
    return n


def sampler_calls(schedule, flow: bool, sampler: Optional[str] = None, patcher=None) -> Optional[tuple]:
    """The model calls of ComfyUI's ``sampler`` in each step of ``schedule`` as the node finds them
    (the pack's scope.sampler_calls); None without a sampler."""
    import importlib

    import comfy.samplers

    from devtools.pack import load_nodes

    if sampler is None:
        return None
    scope = importlib.import_module(load_nodes().__name__ + ".integration.scope")
    return scope.sampler_calls(comfy.samplers.sampler_object(sampler), list(schedule), flow, patcher)


def placement_weights(schedule, flow: bool, sampler: Optional[str] = None, patcher=None) -> tuple:
    """The weights even mode places its computed steps by on ``schedule``, as the node finds them: the
    sensitivity of ComfyUI's ``sampler`` on the model ``patcher`` measured by the pack's scope.sampler_sensitivity,
    or (None, or not measurable) the step lengths in flow time."""
    import importlib

    import comfy.samplers

    from abcache_core import flow_times, step_lengths
    from devtools.pack import load_nodes

    if sampler is not None:
        scope = importlib.import_module(load_nodes().__name__ + ".integration.scope")
        measured = scope.sampler_sensitivity(comfy.samplers.sampler_object(sampler), list(schedule), flow, patcher)
        if measured is not None:
            return measured
    return step_lengths(flow_times(schedule, flow))


def run_spied(case, model, **kw):
    """Sample a tiny-model case (default conditioning seeds 1/2, its own latent) through ``model`` with a
    forward spy; returns (output, spy)."""
    m, spy = with_spy(model)
    kw.setdefault("positive", case.positive(1))
    kw.setdefault("negative", case.negative(2))
    out = sample(m, kw.pop("latent", case.latent), kw.pop("positive"), kw.pop("negative"), **kw)
    return out, spy
