"""The output-level cache: ModelPatcher wrappers that put an :class:`abcache_core.CacheRun` between the
sampler and the model (the AB-Cache and AB-Cache (Advanced) nodes attach them with :func:`apply_ab_cache`).

* OUTER_SAMPLE    -- one fresh CacheRun per sampling call (schedule = the sigmas actually sampled);
                     in ``finally``: one summary line, telemetry to the sink, release of every tensor.
* PREDICT_NOISE / CALC_COND_BATCH -- tag each conditioning's call with its pass (passes.py): history is
                     keyed by pass, so a guidance pass never replaces the normal pass's history.

The node stores only a CacheSpec at ``model_options["ab_cache"]`` and pass-through placeholders; OUTER_SAMPLE
installs the wrappers below bound to the run's state in its copy of the model options (scope.sampling_scope),
so nothing of ours is a key of transformer_options (torch.compile safe).
* DIFFUSION_MODEL -- per-conditioning model call: compute (and remember each chunk's raw output) or
                     return an extrapolation of each chunk's output. Used when the model's forward runs
                     DIFFUSION_MODEL wrappers (FLUX, HunyuanVideo, LTX, Wan, CogVideoX, SD U-Net, ...).
* APPLY_MODEL     -- the same at the apply_model level, in d = (x - denoised) / sigma space, for models
                     whose forward has no DIFFUSION_MODEL hook (SD3, Mochi, PixArt, HunyuanDiT, ...).
                     It also detects at run time that a DIFFUSION_MODEL wrapper never fired and takes over,
                     so no model is silently left uncached.
                     It is also where the optional exposure-bias compensation (EB-Cache's ε/δ, see
                     abcache_core/exposure.py) rescales the denoised output, on extrapolated calls or on all.

Nothing here writes into a tensor it did not allocate: predictions are new tensors and history entries
are clones of the model output.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import torch

import comfy.patcher_extension as pe

from ...abcache_core import CacheRun, CacheSettings
from ...abcache_core.policy import uses_placement
from ...abcache_core.spaces import noise_map
from .scope import replace_arg
from .passes import PASS_WRAPPERS, calc_cond_batch_args, pass_tag, tag_passes
from . import scope

LOG = scope.LOG

KEY = "ab_cache"
NAME = scope.STEP_CACHES[KEY]


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """What the node stores on the model: configuration only (deep-copy safe)."""

    settings: CacheSettings        # coordinate "auto" is resolved per model at the start of each run
    verbose: bool = False
    sink: Any = None               # TelemetrySink (shared) or None


class ActiveRun:
    """Per-sampling-call state shared by the wrappers of one run."""

    def __init__(self, spec: CacheSpec, schedule, level: str, flow: bool, model_space=None,
                 noise_injected: bool = False, sensitivity=None, calls=None):
        self.spec = spec
        self.run = CacheRun(spec.settings, schedule, flow=flow, noise_injected=noise_injected, sensitivity=sensitivity,
                            calls=calls)
        self.level = level                     # "diffusion_model" or "apply_model"
        self.flow = flow                       # CONST (flow) model sampling: the exposure rescale's space
        # noise maps (abcache_core/spaces.py) of what each level caches: the model's raw output, d = (x - D)/sigma
        self.spaces = {"raw": model_space, "denoised": noise_map("flow" if flow else "eps_latent")}
        self.lock = threading.Lock()
        self.dm_calls = 0                      # DIFFUSION_MODEL wrapper invocations (hook detection)
        self.signatures: dict = {}             # key -> (shape, dtype) of the chunk it was recorded for
        self.parts: dict = {}                  # uuid -> number of output parts (LTX-2: [video, audio])
        self.channels: dict = {}               # key -> output channels (the latent part of a concatenated input)
        self.pass_scope = None                 # passes.PassScope of the current sampler evaluation
        self.uncontrolled: set = set()         # noise levels of the calls now running without control

    def __deepcopy__(self, memo):
        return self


# ----------------------------------------------------------------------------------------- pass identity


# ---------------------------------------------------------------------------------------------- utils


# ------------------------------------------------------------------------------------------ wrappers


def outer_sample_wrapper(executor, *args, **kwargs):
    others = scope.other_caches(executor.class_obj.model_options, KEY)
    return scope.sampling_scope(executor, args, kwargs, KEY, CacheSpec, others, _start, _finish, NAME, RUN_WRAPPERS)


def _start(spec: CacheSpec, patcher, schedule, noise_injected: bool = False, sensitivity=None,
           calls=None) -> ActiveRun:
    model, sampling = patcher.model, scope.sampling_of(patcher)
    level = "diffusion_model" if scope.has_diffusion_model_hook(model.diffusion_model) else "apply_model"
    active = ActiveRun(spec, schedule, level, scope.is_flow(sampling), scope.noise_map_of(sampling), noise_injected,
                       sensitivity, calls)
    scope.warn_if_nothing_to_skip(NAME, spec.settings, len(schedule) - 1, calls)
    scope.warn_if_unsupported_schedule(NAME, active.run)
    return active


def _finish(active: ActiveRun) -> None:
    run = active.run
    try:
        LOG.info("%s [%s, %s, order %d, %s, %s space%s]", run.summary_line(), run.settings.mode,
                 run.settings.coordinate, run.settings.order, active.level, run.estimate_space,
                 f", placed by {run.placement}" if uses_placement(run.settings) else "")
        if active.spec.sink is not None:
            active.spec.sink.put({
                "summary": run.summary(),
                "settings": dataclasses.asdict(run.settings),
                "schedule": list(run.schedule),
                "level": active.level,
                "flow": active.flow,
                "estimate_space": run.estimate_space,
                "placement": run.placement if uses_placement(run.settings) else None,
                "records": [dataclasses.asdict(r) for r in run.records],
            })
    finally:
        run.release()
        active.signatures.clear()
        active.channels.clear()


def calc_cond_batch_wrapper(active: ActiveRun, executor, *args, **kwargs):
    """Pass identity (passes.tag_passes), then: when every conditioning that runs at this noise level will
    certainly be extrapolated, the conds are passed on without their 'control' (shallow copies), so ComfyUI
    does not evaluate a ControlNet / T2I adapter whose output the skipped call would not use. ComfyUI
    computes control inside calc_cond_batch, after this wrapper and before the model call."""
    conds, x_in, timestep, mo = calc_cond_batch_args(args, kwargs)
    to = mo.get("transformer_options", {}) if isinstance(mo, dict) else {}
    new = tag_passes(active, conds, to)
    level = None
    if _controlled(new) and _certain_skip(active, new, x_in, timestep, to):
        new = [group if not group else [{k: v for k, v in c.items() if k != "control"} for c in group]
               for group in new]
        level = round(float(timestep.flatten()[0]), 12)
    if new is not conds:
        args, kwargs = replace_arg(args, kwargs, 1, "conds", new)
    if level is None:
        return executor(*args, **kwargs)
    with active.lock:
        active.uncontrolled.add(level)
    try:
        return executor(*args, **kwargs)
    finally:
        with active.lock:
            active.uncontrolled.discard(level)


def _controlled(conds) -> bool:
    return isinstance(conds, (list, tuple)) and any(
        isinstance(c, dict) and c.get("control") is not None for group in conds if group for c in group)


@scope.dynamo_off
def _certain_skip(active: ActiveRun, conds, x_in, timestep, to: dict) -> bool:
    """True only when the model calls this calc_cond_batch makes will all be extrapolated: every active cond
    is plain (no area, mask, hooks or own transformer_options, which change its key or input), has history
    for this input shape, and CacheRun.would_skip says so for all their keys. Anything else: compute as today."""
    import comfy.samplers

    if not isinstance(x_in, torch.Tensor) or not isinstance(timestep, torch.Tensor) or timestep.numel() == 0:
        return False
    sigma = float(timestep.flatten()[0])
    wkey, tag = scope.window_key(to), pass_tag(to)
    keys = []
    with active.lock:
        for group in conds:
            for c in group or ():
                if not isinstance(c, dict):
                    return False
                if comfy.samplers.get_area_and_mult(c, x_in, timestep) is None:
                    continue                                  # not evaluated at this noise level
                if any(c.get(k) is not None for k in ("area", "mask", "hooks", "transformer_options")):
                    return False
                ck = (c.get("uuid"), wkey, tag)
                nparts = active.parts.get(ck, 1)
                sig = active.signatures.get(ck)
                if c.get("uuid") is None or sig is None or sig[0] != tuple(x_in.shape) or sig[2] != nparts:
                    return False
                keys += [ck + (p,) for p in range(nparts)]
    return bool(keys) and active.run.would_skip(sigma, keys)


def diffusion_model_wrapper(active: ActiveRun, executor, *args, **kwargs):
    to = scope.find_transformer_options(args, kwargs)
    if to is None:
        return executor(*args, **kwargs)
    with active.lock:
        active.dm_calls += 1
    if active.level != "diffusion_model":
        return executor(*args, **kwargs)
    x = args[0] if args else kwargs.get("x")
    return _cached_call(active, to, x, lambda: executor(*args, **kwargs), space="raw")


def apply_model_wrapper(active: ActiveRun, executor, x, t, *args, **kwargs):
    to = scope.apply_model_options(args, kwargs)
    if to is None:
        return executor(x, t, *args, **kwargs)
    mark = active.run.mark()
    if active.level == "diffusion_model":
        with active.lock:
            before = active.dm_calls
        out = executor(x, t, *args, **kwargs)
        with active.lock:
            missed = active.dm_calls == before and active.level == "diffusion_model"
            if missed:
                active.level = "apply_model"
        if missed:
            owner = executor.class_obj
            LOG.warning("AB-Cache: %s runs no DIFFUSION_MODEL wrappers; caching at the apply_model level instead",
                        type(owner.diffusion_model).__name__ if owner is not None else "model")
    else:
        out = _cached_call(active, to, x, lambda: executor(x, t, *args, **kwargs), space="denoised", t=t)
    return scope.apply_exposure(active.run, active.flow, x, t, out, mark)


def _cached_call(active: ActiveRun, to: dict, x, forward, space: str, t=None):
    """Compute or extrapolate one model call. ``space='denoised'`` caches d = (x - D) / sigma.
    Under torch.compile Dynamo never traces our bookkeeping (_plan_call, _record_call), so no guard sees a
    sigma value or a uuid."""
    out, ctx = _plan_call(active, to, x, space, t)
    if out is not None:
        return out
    try:
        out = forward()
    except BaseException:
        if ctx is not None:
            active.run.unfinished(ctx[1])   # the summary counts finished calls only
        raise
    if ctx is not None:
        corrected = _record_call(active, ctx, out, space, t)
        if corrected is not None:
            return corrected
    return out


@scope.dynamo_off
def _plan_call(active: ActiveRun, to: dict, x, space: str, t):
    """(extrapolated output, None) for a skipped call; (None, context for _record_call or None) otherwise."""
    sigmas = to.get("sigmas")
    uuids = list(to.get("uuids") or [])
    x_parts, _ = scope.as_parts(x)
    if not isinstance(sigmas, torch.Tensor) or sigmas.numel() == 0 or not uuids or x_parts is None:
        return None, None
    sigma = float(sigmas.flatten()[0])
    run = active.run
    wkey = scope.window_key(to)
    n = len(uuids)
    x_chunks = scope.split_batch(x_parts[0], n)
    if x_chunks is None:
        return None, None
    sig_in = (tuple(x_chunks[0].shape), x_parts[0].dtype, len(x_parts))
    conds = [(u, wkey, pass_tag(to)) for u in uuids]   # one history per conditioning, window and pass
    keys = []
    with active.lock:
        for c in conds:
            nparts = active.parts.get(c, 1)
            if active.signatures.get(c) != sig_in:
                for p in range(nparts):       # new resolution/dtype/batch for this cond: start over
                    run.forget(c + (p,))
            keys += [c + (p,) for p in range(nparts)]
    with active.lock:
        channels = {k: active.channels.get(k) for k in keys}
    inputs = _inputs_by_key(conds, keys, x_parts, n, channels)
    decision = run.decide(sigma, keys, device=x_parts[0].device, inputs=inputs, space=active.spaces[space])
    if decision.skip:
        out = _assemble(active, decision.predictions, conds, x_parts, space, t)
        if out is not None:
            if active.spec.verbose:
                LOG.info("AB-Cache: sigma %.4f extrapolated (order %d, estimate %.2e)", sigma, decision.order,
                         decision.error)
            return out, None
    if round(sigma, 12) in active.uncontrolled:
        LOG.warning("AB-Cache: sigma %.4f was planned as extrapolated (its control was not computed) but is "
                    "computed (%s)", sigma, decision.reason)
    return None, (sigma, decision, conds, x_chunks, sig_in, n, x_parts)


def _inputs_by_key(conds, keys, x_parts, n, channels) -> dict:
    """key (cond, window, pass, part) -> this call's input chunk of that part (for the noise space). Models that
    concatenate conditioning channels after the latent (image-to-video, inpainting: ComfyUI puts the latent
    first) get the latent's channels: the first ``channels[key]`` (the output's channel count)."""
    chunks = [scope.split_batch(p, n) if isinstance(p, torch.Tensor) else None for p in x_parts]
    out = {}
    for key in keys:
        i, p = conds.index(key[:-1]), key[-1]
        if p < len(chunks) and chunks[p] is not None:
            x, c = chunks[p][i], channels.get(key)
            out[key] = x[:, :c] if c is not None and x.ndim >= 2 and x.shape[1] > c else x
    return out


@scope.dynamo_off
def _record_call(active: ActiveRun, ctx, out, space: str, t):
    """Store a computed call's outputs in the history. Returns a new output to give the sampler instead where
    the run corrects the steps skipped before this one (CacheRun.corrected_outputs), else None."""
    sigma, decision, conds, x_chunks, sig_in, n, x_parts = ctx
    run = active.run
    corrected = None
    parts, _ = scope.as_parts(out)
    if parts is not None:
        chunks = [scope.split_batch(p, n) for p in parts]
        if all(c is not None for c in chunks):
            rec = {}
            for i, ck in enumerate(conds):
                with active.lock:
                    active.signatures[ck] = sig_in
                    active.parts[ck] = len(parts)
                for p, c in enumerate(chunks):
                    y = c[i]
                    if space == "denoised":
                        y = _to_d(x_chunks[i], y, _sig(t, i, n, y))
                    rec[ck + (p,)] = y.detach().clone()
            channels = {k: y.shape[1] if y.ndim >= 2 else None for k, y in rec.items()}
            with active.lock:
                active.channels.update(channels)
            inputs = _inputs_by_key(conds, list(rec), x_parts, n, channels)
            run.record(sigma, rec, inputs=inputs, space=active.spaces[space])
            fixed = run.corrected_outputs(sigma, rec, active.spaces[space])
            if fixed:
                corrected = _assemble(active, {**rec, **fixed}, conds, x_parts, space, t)
    if active.spec.verbose:
        LOG.info("AB-Cache: sigma %.4f computed (%s)%s", sigma, decision.reason,
                 ", skipped steps before it corrected" if corrected is not None else "")
    return corrected


def _sig(t, i, n, like):
    s = scope.split_batch(t.flatten(), n)[i] if isinstance(t, torch.Tensor) and t.numel() % n == 0 else t
    s = s.to(device=like.device, dtype=torch.float32)
    return s.reshape([-1] + [1] * (like.ndim - 1))


def _to_d(x, denoised, sigma):
    return ((x.float() - denoised.float()) / sigma).to(denoised.dtype)


def _assemble(active, preds, conds, x_parts, space, t):
    n = len(conds)
    nparts = active.parts.get(conds[0], 1)
    out_parts = []
    for p in range(nparts):
        chunks = []
        for i, c in enumerate(conds):
            y = preds.get(c + (p,))
            if y is None:
                return None
            if space == "denoised":
                xc = scope.split_batch(x_parts[0], n)[i]
                y = (xc.float() - _sig(t, i, n, xc) * y.float()).to(y.dtype)
            chunks.append(y)
        out_parts.append(torch.cat(chunks, dim=0))
    if len(out_parts) == 1 and len(x_parts) == 1:
        return out_parts[0]
    return out_parts


# ---------------------------------------------------------------------------------------------- apply
# Per-run wrappers (bound to the ActiveRun by scope.sampling_scope), in registration order.
RUN_WRAPPERS = {**PASS_WRAPPERS, pe.WrappersMP.CALC_COND_BATCH: calc_cond_batch_wrapper,
                pe.WrappersMP.APPLY_MODEL: apply_model_wrapper,
                pe.WrappersMP.DIFFUSION_MODEL: diffusion_model_wrapper}


def apply_ab_cache(model, settings: CacheSettings, verbose: bool = False, sink=None):
    """Clone ``model`` and attach AB-Cache. Re-applying replaces an earlier AB-Cache on the same model."""
    settings = settings.validate()
    m = scope.fresh_clone(model, KEY, NAME, scope.other_caches(model.model_options, KEY))
    m.model_options[KEY] = CacheSpec(settings, verbose, sink)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, outer_sample_wrapper)
    scope.register_placeholders(m, KEY, RUN_WRAPPERS)
    return m
