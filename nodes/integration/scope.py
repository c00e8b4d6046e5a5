"""The sampling-call scope shared by both caches of this pack (output level and FLUX blocks), and the small
ComfyUI-facing helpers they share: one OUTER_SAMPLE pattern, one "other step caches" rule, one clone rule,
one exposure-bias hook, and readers of ComfyUI's call arguments.

Nothing here writes into a tensor it did not allocate.
"""
from __future__ import annotations

import logging
import threading
import types
import warnings
from typing import Optional

import torch

import comfy.model_patcher
import comfy.patcher_extension as pe

from ...abcache_core import CacheRun, CacheSettings, plan, rescale_denoised
from ...abcache_core.policy import speed_problem, uses_placement
from ...abcache_core.sensitivity import measure_calls, measure_sensitivity

LOG = logging.getLogger("ab_cache")


# Every step cache a model can carry -> the name messages use. This pack's own specs live at the TOP level of
# model_options (never in transformer_options: with torch.compile any optional key there is a hazard, see
# docs/DESIGN.md "torch.compile"); ComfyUI's EasyCache and LazyCache store their holder under "easycache" in
# transformer_options (the holder knows its own name). Two step caches on one model would skip twice and
# corrupt each other's state.
OWN_CACHES = {"ab_cache": "AB-Cache", "ab_cache_blocks": "AB-Cache FLUX blocks"}
COMFY_CACHES = {"easycache": "EasyCache", "lazycache": "LazyCache"}
STEP_CACHES = {**COMFY_CACHES, **OWN_CACHES}


def other_caches(model_options: dict, own_key: str) -> list[str]:
    """The names of the step caches on a model other than the one stored under ``own_key``."""
    to = model_options.get("transformer_options", {})
    found = {str(getattr(to[k], "name", None) or name) for k, name in COMFY_CACHES.items() if k in to}
    found |= {name for k, name in OWN_CACHES.items() if k in model_options and k != own_key}
    return sorted(found)


class TelemetrySink:
    """Holds the numbers (never tensors) of the last finished run of a patched model, for the report node.

    Shared, not copied, across ModelPatcher clones (ComfyUI <= 0.13 deep-copies model_options).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.last: Optional[dict] = None

    def __deepcopy__(self, memo):
        return self

    def put(self, data: dict) -> None:
        with self._lock:
            self.last = data


def is_flow(model_sampling) -> bool:
    import comfy.model_sampling as ms

    return isinstance(model_sampling, ms.CONST)


def noise_map_of(model_sampling):
    """The exact map between the diffusion model's raw output and its noise estimate (abcache_core/spaces.py)
    for this model sampling, or None where none is known (EDM, x0 prediction, Cosmos: output space only)."""
    import comfy.model_sampling as ms

    from ...abcache_core.spaces import noise_map

    kinds = [("EDM", None), ("X0", None), ("IMG_TO_IMG_FLOW", None), ("V_PREDICTION_DDPM", "v_ddpm"),
             ("V_PREDICTION", "v"), ("EPS", "eps"), ("CONST", "flow")]
    for name, kind in kinds:            # most derived first (EDM and X0 derive from V_PREDICTION and EPS)
        cls = getattr(ms, name, None)
        if cls is not None and isinstance(model_sampling, cls):
            return noise_map(kind, getattr(model_sampling, "sigma_data", 1.0)) if kind else None
    return None


def has_diffusion_model_hook(diffusion_model) -> bool:
    """True when the model's forward runs DIFFUSION_MODEL wrappers (core classes define ``_forward``)."""
    return callable(getattr(type(diffusion_model), "_forward", None))


def replace_arg(args, kwargs, index: int, name: str, value):
    if name in kwargs or len(args) <= index:
        return args, {**kwargs, name: value}
    return args[:index] + (value,) + args[index + 1:], kwargs


def find_transformer_options(args, kwargs) -> Optional[dict]:
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    for a in reversed(args):
        if isinstance(a, dict) and "sigmas" in a and "uuids" in a:
            return a
    return None


def with_transformer_options(args, kwargs, to: dict, extra: dict):
    """(args, kwargs) of a wrapped call with ``to`` replaced by a copy that also holds ``extra``."""
    new = {**to, **extra}
    if kwargs.get("transformer_options") is to:
        return args, {**kwargs, "transformer_options": new}
    return tuple(new if a is to else a for a in args), kwargs


def window_key(to: dict):
    w = to.get("context_window")
    if w is None:
        return None
    idx = getattr(w, "index_list", None)
    return tuple(idx) if idx is not None else id(w)


def as_parts(out):
    if isinstance(out, torch.Tensor):
        return [out], False
    if isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return list(out), True
    return None, False


def split_batch(t: torch.Tensor, n: int) -> Optional[list]:
    if t.ndim == 0 or n <= 0 or t.shape[0] % n:
        return None
    b = t.shape[0] // n
    return [t[i * b:(i + 1) * b] for i in range(n)]


def sampling_scope(executor, args, kwargs, key: str, spec_type, others: list, start, finish, name: str,
                   wrappers: dict):
    """The OUTER_SAMPLE pattern shared by every cache node of this pack.

    Reads the node's spec at ``model_options[key]``; bypasses (with a warning) when another step cache is
    attached; otherwise builds the per-run state with ``start(spec, model_patcher, schedule, noise_injected,
    sensitivity, calls)`` (:func:`sampler_adds_noise` and, where the settings place steps by them,
    :func:`sampler_sensitivity` and, where that is None, :func:`sampler_calls` of the sampler this call runs),
    and installs,
    in a copy of the guider's model_options for this sampling call only, the per-run wrappers
    ``wrappers[wrapper_type](active, executor, *args, **kwargs)`` bound to that state under ``key`` (replacing
    the pass-through placeholders the node registered, so the wrapper order of the graph is kept). Nothing of
    ours enters transformer_options' own keys. Always calls ``finish(active)``.
    """
    guider = executor.class_obj
    orig = guider.model_options
    spec = orig.get(key)
    if not isinstance(spec, spec_type):
        return executor(*args, **kwargs)
    if others:
        LOG.warning("%s: %s is also attached to this model; %s is bypassed for this run so that steps are not "
                    "skipped twice. Use one step cache per model.", name, " and ".join(others), name)
        return executor(*args, **kwargs)
    sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
    schedule = [float(s) for s in sigmas.detach().flatten().cpu()] if isinstance(sigmas, torch.Tensor) else []
    sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
    noise_injected = sampler_adds_noise(sampler)
    sensitivity = calls = None
    if uses_placement(spec.settings):       # (None for a sampler that adds noise: sampler_sensitivity's own rule)
        flow = is_flow(sampling_of(guider.model_patcher))
        sensitivity = sampler_sensitivity(sampler, schedule, flow, guider.model_patcher)
        if sensitivity is None:             # a sampler that calls the model more than once in a step?
            calls = sampler_calls(sampler, schedule, flow, guider.model_patcher)
    active = start(spec, guider.model_patcher, schedule, noise_injected, sensitivity, calls)
    mo = comfy.model_patcher.create_model_options_clone(orig)
    to = mo["transformer_options"] = dict(mo.get("transformer_options", {}))
    wr = to["wrappers"] = dict(to.get("wrappers", {}))
    for wtype, fn in wrappers.items():
        wr[wtype] = {**wr.get(wtype, {}), key: [run_bound(fn, active)]}
    guider.model_options = mo
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = orig
        finish(active)


# Words in the name of a sampler function (k-diffusion's sample_*, and custom samplers named the same way) that
# adds fresh noise to the latent at every step: euler/dpm_2/dpmpp_2s/res_multistep ancestral, dpmpp_sde,
# dpmpp_2m/3m_sde, er_sde, exp_heun_2_x0_sde, lcm, ddpm, seeds_2/3, sa_solver. The one list of them.
NOISE_ADDING_SAMPLER_WORDS = ("ancestral", "sde", "lcm", "ddpm", "seeds", "sa_solver")
# Options of those samplers that switch the added noise off (SamplerEulerAncestral & co. with eta 0 or s_noise 0).
NOISE_OFF_OPTIONS = ("eta", "s_noise")


def sampler_adds_noise(sampler) -> bool:
    """Whether ComfyUI's ``sampler`` (a KSAMPLER, or anything with a ``sampler_function``) adds fresh noise to the
    latent at every step: by its function's name, unless its options set eta or s_noise to 0; any other sampler
    whose options set eta above 0 (dpm_adaptive / dpm_fast through SamplerDPMAdaptative & co.). Samplers this
    cannot tell (other classes, no name) count as deterministic, which is what they were treated as before."""
    fn = getattr(sampler, "sampler_function", None)
    name = str(getattr(fn, "__name__", "")).lower()
    options = getattr(sampler, "extra_options", None)
    options = {k: v for k, v in (options.items() if isinstance(options, dict) else ())
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not any(word in name for word in NOISE_ADDING_SAMPLER_WORDS):
        return options.get("eta", 0) > 0
    return not any(options.get(k) == 0 for k in NOISE_OFF_OPTIONS)


def sampler_sensitivity(sampler, schedule: list, flow: bool, patcher=None) -> Optional[tuple]:
    """How much the result of ComfyUI's ``sampler`` moves per unit of error in each step's model output, measured
    by running its sampler function on the core's linear probe model over ``schedule`` (abcache_core/
    sensitivity.py: a latent of one value per step, no model runs; 10-100 ms at 50 steps). None where it cannot be
    measured -- no ``sampler_function`` (a custom Sampler class), a sampler that adds noise, or anything the
    core's checks refuse -- and even mode then places by the step lengths, as for euler. ``patcher``: the model's
    ModelPatcher, which some samplers read their model sampling from (:class:`_SamplerModel`). The global random
    state and the warnings a sampler may raise on such an input stay as they were."""
    return _probe_sampler(measure_sensitivity, sampler, schedule, flow, patcher)


def sampler_calls(sampler, schedule: list, flow: bool, patcher=None) -> Optional[tuple]:
    """The model calls ComfyUI's ``sampler`` makes in each step of ``schedule`` (abcache_core/sensitivity.
    measure_calls: per step one flag per call, True for a call at the step's own sigma), measured the way
    :func:`sampler_sensitivity` measures. None for the same samplers (no ``sampler_function``, added noise) and
    wherever the calls cannot be mapped onto steps: those samplers are decided per step."""
    return _probe_sampler(measure_calls, sampler, schedule, flow, patcher)


def _probe_sampler(measure, sampler, schedule: list, flow: bool, patcher) -> Optional[tuple]:
    """``measure(run, schedule, flow)`` with ``run(model, x, sigmas)`` running ``sampler``'s function on a probe
    model (:func:`sampler_sensitivity`); None for a sampler without a function or one that adds noise."""
    fn = getattr(sampler, "sampler_function", None)
    if not callable(fn) or sampler_adds_noise(sampler):
        return None
    options = getattr(sampler, "extra_options", None)
    options = dict(options) if isinstance(options, dict) else {}

    def run(model, x, sigmas):
        return fn(_SamplerModel(model, patcher), x, sigmas, extra_args={}, callback=None, disable=True, **options)

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return measure(run, schedule, flow)


class _SamplerModel:
    """The probe as a sampler function sees its model: ComfyUI hands it a denoiser whose ``inner_model`` is the
    guider, and some samplers read the model sampling from there (res_multistep its noise scale through
    ``inner_model.model_patcher``, the flow variants of the ancestral samplers ``inner_model.inner_model.
    model_sampling``). Calls go to the probe; nothing else of the guider is offered."""

    def __init__(self, probe, patcher):
        self.probe = probe
        sampling = sampling_of(patcher) if patcher is not None else None
        self.inner_model = types.SimpleNamespace(model_patcher=patcher,
                                                 inner_model=types.SimpleNamespace(model_sampling=sampling))

    def __call__(self, x, sigma, *args, **kwargs):
        return self.probe(x, sigma, *args, **kwargs)


def dynamo_skip(fn):
    """Dynamo (torch.compile) never traces ``fn``'s own frame; what it calls (the model) is compiled as usual."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn, recursive=False) if disable is not None else fn


def dynamo_off(fn):
    """Dynamo never traces ``fn`` nor anything it calls (our bookkeeping: no guard on per-run objects)."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def run_bound(fn, active):
    """``fn`` bound to this run's state (a per-run wrapper)."""
    @dynamo_skip
    def bound(executor, *args, **kwargs):
        return fn(active, executor, *args, **kwargs)

    return bound


def passthrough(executor, *args, **kwargs):
    """The placeholder a node registers for each per-run wrapper: outside a sampling call it does nothing."""
    return executor(*args, **kwargs)


def register_placeholders(m, key: str, wrapper_types) -> None:
    for wtype in wrapper_types:
        m.add_wrapper_with_key(wtype, key, passthrough)


def sampling_of(patcher):
    """The model sampling the sampler really uses: the patcher's object patch (ModelSamplingDiscrete,
    ModelSamplingContinuousEDM/V, ModelSamplingSD3/Flux ...) when there is one. OUTER_SAMPLE runs before
    ComfyUI applies object patches to the model, so ``patcher.model.model_sampling`` is still the original."""
    get = getattr(patcher, "get_model_object", None)
    if callable(get):
        try:
            return get("model_sampling")
        except (AttributeError, KeyError):
            pass
    return patcher.model.model_sampling


def warn_if_unsupported_schedule(name: str, run: CacheRun) -> None:
    if run.unsupported:
        LOG.warning("%s: %s; this run is not cached (every step runs the model).", name, run.unsupported)


def warn_if_nothing_to_skip(name: str, settings: CacheSettings, steps: int, calls=None) -> None:
    if steps <= 0:
        return
    if all(plan(settings, steps)):
        LOG.warning("%s: with %d steps nothing can be skipped (mode %s, warm-up %d, interval %d, final steps "
                    "%d); every step runs the model. Lower the warm-up or interval, or use more steps.",
                    name, steps, settings.mode, settings.warmup, settings.interval, settings.final_steps)
        return
    problem = speed_problem(settings, steps, calls)
    if problem:
        LOG.warning("%s: %s", name, problem)


def apply_model_options(args, kwargs) -> Optional[dict]:
    """transformer_options of an APPLY_MODEL call (x, t, c_concat, c_crossattn, control, transformer_options),
    given the arguments after x and t."""
    to = kwargs.get("transformer_options")
    if not isinstance(to, dict):
        to = args[3] if len(args) > 3 and isinstance(args[3], dict) else None
    return to


def apply_exposure(run: CacheRun, flow: bool, x, t, out, mark: int):
    """EB-Cache's exposure-bias compensation on one apply_model output (denoised D at noise level t).

    D is rescaled (ε -> ε/δ at fixed x; abcache_core/exposure.py) when δ != 1 and either the settings say
    'all' or a call decided since ``mark`` was extrapolated. δ = 1 returns ``out`` itself.
    """
    s = run.settings
    if s.exposure_delta == 1.0 or not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
        return out
    if s.exposure_apply != "all" and not run.extrapolated_since(mark):
        return out
    if x.shape != out.shape or not isinstance(t, torch.Tensor) or t.numel() not in (1, out.shape[0]):
        return out
    return rescale_denoised(x, out, t.detach(), s.exposure_delta, flow)


def fresh_clone(model, key: str, name: str, others: list):
    """Clone for a cache node: refuse a model that already carries another step cache, and drop this node's
    own wrappers from an earlier application (re-applying replaces)."""
    if others:
        raise ValueError(f"{name}: this model already has {' and '.join(others)} attached. Both skip model work "
                         f"and would corrupt each other's cache: remove one of the two nodes.")
    m = model.clone()
    for wtype in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.PREDICT_NOISE, pe.WrappersMP.CALC_COND_BATCH,
                  pe.WrappersMP.DIFFUSION_MODEL, pe.WrappersMP.APPLY_MODEL):
        if m.get_wrappers(wtype, key):
            m.remove_wrappers_with_key(wtype, key)
    return m
