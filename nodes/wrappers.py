"""ModelPatcher wrappers that put an :class:`abcache_core.CacheRun` between the sampler and the model.

* OUTER_SAMPLE    -- one fresh CacheRun per sampling call (schedule = the sigmas actually sampled);
                     in ``finally``: one summary line, telemetry to the sink, release of every tensor.
* PREDICT_NOISE   -- one sampler evaluation (one denoised prediction at one sigma): opens a fresh
                     :class:`PassScope` for it, so that the CALC_COND_BATCH wrapper can count passes.
* CALC_COND_BATCH -- tags each conditioning of this batch of model calls with its *pass*: how many times
                     that conditioning was already evaluated in this sampler evaluation (0 = the normal
                     pass; 1 = PAG's / SLG's perturbed cond, SAG's blurred uncond, ...). History is keyed
                     by pass, so a guidance pass never replaces the normal pass's history.
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
import logging
import threading
from typing import Any, Optional

import torch

import comfy.model_patcher
import comfy.patcher_extension as pe

from ..abcache_core import CacheRun, CacheSettings, plan, rescale_denoised

KEY = "ab_cache"
SCOPE_KEY = "ab_cache_pass_scope"   # transformer_options: the PassScope of the current sampler evaluation
PASS_KEY = "ab_cache_passes"        # transformer_options: uuid -> pass ordinal of this calc_cond_batch
LOG = logging.getLogger("ab_cache")
# ComfyUI's own step caches (EasyCache and LazyCache both store their holder under "easycache"); two step
# caches on one model would skip twice and corrupt each other's state.
OTHER_CACHE_KEYS = ("easycache", "lazycache", "ab_cache_blocks")  # ab_cache_blocks: nodes/blocks.py


def other_caches(model_options: dict) -> list[str]:
    to = model_options.get("transformer_options", {})
    return sorted({str(getattr(to[k], "name", k)) for k in OTHER_CACHE_KEYS if k in to})


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


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """What the node stores on the model: configuration only (deep-copy safe)."""

    settings: CacheSettings        # coordinate "auto" is resolved per model at the start of each run
    verbose: bool = False
    sink: Any = None               # TelemetrySink (shared) or None


def is_flow(model_sampling) -> bool:
    import comfy.model_sampling as ms

    return isinstance(model_sampling, ms.CONST)


def has_diffusion_model_hook(diffusion_model) -> bool:
    """True when the model's forward runs DIFFUSION_MODEL wrappers (core classes define ``_forward``)."""
    return callable(getattr(type(diffusion_model), "_forward", None))


class ActiveRun:
    """Per-sampling-call state shared by the wrappers of one run."""

    def __init__(self, spec: CacheSpec, schedule, level: str, flow: bool):
        self.spec = spec
        self.run = CacheRun(spec.settings, schedule, flow=flow)
        self.level = level                     # "diffusion_model" or "apply_model"
        self.flow = flow                       # CONST (flow) model sampling: the exposure rescale's space
        self.lock = threading.Lock()
        self.dm_calls = 0                      # DIFFUSION_MODEL wrapper invocations (hook detection)
        self.signatures: dict = {}             # key -> (shape, dtype) of the chunk it was recorded for
        self.parts: dict = {}                  # uuid -> number of output parts (LTX-2: [video, audio])

    def __deepcopy__(self, memo):
        return self


# ----------------------------------------------------------------------------------------- pass identity
class PassScope:
    """One sampler evaluation (one PREDICT_NOISE call): how often each conditioning was evaluated in it.

    ComfyUI's guidance nodes (PerturbedAttentionGuidance, SelfAttentionGuidance, SkipLayerGuidanceDiT/SD3,
    LTXV's spatio-temporal / modality guidance, ...) call calc_cond_batch a second time at the same sigma
    with a conditioning the normal pass already evaluated (other attention patches, a blurred input). The
    n-th evaluation of a conditioning within one sampler evaluation is its pass n. A later sampler
    evaluation at the same sigma (Heun, DPM-2, restart) opens a new scope, so it is pass 0 again and keeps
    the keep-newest behaviour of CacheRun.record.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: dict = {}

    def __deepcopy__(self, memo):
        return self

    def passes(self, uuids, wkey) -> dict:
        """uuid -> pass ordinal for one calc_cond_batch over ``uuids`` (counts it)."""
        out = {}
        with self._lock:
            for u in uuids:
                if u in out:
                    continue
                n = self._seen.get((u, wkey), 0)
                self._seen[(u, wkey)] = n + 1
                out[u] = n
        return out


def _with_transformer_options(model_options: dict, **extra) -> dict:
    """A shallow copy of ``model_options`` whose transformer_options (also copied) carry ``extra``."""
    mo = dict(model_options)
    mo["transformer_options"] = {**model_options.get("transformer_options", {}), **extra}
    return mo


def _replace_arg(args, kwargs, index: int, name: str, value):
    if name in kwargs or len(args) <= index:
        return args, {**kwargs, name: value}
    return args[:index] + (value,) + args[index + 1:], kwargs


def pass_scope_wrapper(key: str):
    """PREDICT_NOISE wrapper (x, timestep, model_options, seed): a fresh PassScope per sampler evaluation,
    when the cache stored under ``key`` is active in this sampling call."""

    def predict_noise_wrapper(executor, *args, **kwargs):
        mo = kwargs.get("model_options", args[2] if len(args) > 2 else None)
        if not isinstance(mo, dict) or key not in mo.get("transformer_options", {}):
            return executor(*args, **kwargs)
        args, kwargs = _replace_arg(args, kwargs, 2, "model_options",
                                    _with_transformer_options(mo, **{SCOPE_KEY: PassScope()}))
        return executor(*args, **kwargs)

    return predict_noise_wrapper


def calc_cond_batch_wrapper(executor, *args, **kwargs):
    """CALC_COND_BATCH wrapper (model, conds, x_in, timestep, model_options): tags each conditioning with
    its pass ordinal in the current sampler evaluation (see PassScope). Pass 0 everywhere: no change."""
    mo = kwargs.get("model_options", args[4] if len(args) > 4 else None)
    conds = kwargs.get("conds", args[1] if len(args) > 1 else None)
    to = mo.get("transformer_options", {}) if isinstance(mo, dict) else {}
    scope = to.get(SCOPE_KEY)
    if not isinstance(scope, PassScope) or not isinstance(conds, (list, tuple)):
        return executor(*args, **kwargs)
    uuids = [c.get("uuid") for group in conds if group for c in group if isinstance(c, dict)]
    passes = scope.passes([u for u in uuids if u is not None], _window_key(to))
    if not any(passes.values()):
        return executor(*args, **kwargs)
    args, kwargs = _replace_arg(args, kwargs, 4, "model_options", _with_transformer_options(mo, **{PASS_KEY: passes}))
    return executor(*args, **kwargs)


def _patch_fingerprint(to: dict) -> tuple:
    """Which blocks this call's transformer_options replace (PAG's attn1, SLG's skipped DiT blocks ...):
    structure only, so the same patches give the same fingerprint on every step."""
    pr = to.get("patches_replace")
    if not isinstance(pr, dict):
        return ()
    return tuple(sorted((str(name), tuple(sorted(repr(b) for b in blocks)))
                        for name, blocks in pr.items() if isinstance(blocks, dict) and blocks))


def pass_tag(to: dict, uuid) -> tuple:
    """The identity of one conditioning's call within a step: (pass ordinal, replaced blocks).

    Part of every history key, so each kind of pass is extrapolated from its own history."""
    passes = to.get(PASS_KEY)
    n = passes.get(uuid, 0) if isinstance(passes, dict) else 0
    return (n, _patch_fingerprint(to))


def add_pass_wrappers(m, key: str) -> None:
    """The PREDICT_NOISE and CALC_COND_BATCH wrappers that give each model call its pass (see pass_tag)."""
    m.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, key, pass_scope_wrapper(key))
    m.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, key, calc_cond_batch_wrapper)


# ---------------------------------------------------------------------------------------------- utils
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


def _window_key(to: dict):
    w = to.get("context_window")
    if w is None:
        return None
    idx = getattr(w, "index_list", None)
    return tuple(idx) if idx is not None else id(w)


def _as_parts(out):
    if isinstance(out, torch.Tensor):
        return [out], False
    if isinstance(out, (list, tuple)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return list(out), True
    return None, False


def _split(t: torch.Tensor, n: int) -> Optional[list]:
    if t.ndim == 0 or n <= 0 or t.shape[0] % n:
        return None
    b = t.shape[0] // n
    return [t[i * b:(i + 1) * b] for i in range(n)]


# ------------------------------------------------------------------------------------------ wrappers
def sampling_scope(executor, args, kwargs, key: str, spec_type, others: list, start, finish, name: str):
    """The OUTER_SAMPLE pattern shared by every cache node of this pack.

    Reads the node's spec under ``key``; bypasses (with a warning) when another step cache is attached;
    otherwise builds the per-run state with ``start(spec, model_patcher, schedule)``, exposes it under ``key`` in a
    copy of the guider's model_options for this sampling call only, and always calls ``finish(active)``.
    """
    guider = executor.class_obj
    orig = guider.model_options
    spec = orig.get("transformer_options", {}).get(key)
    if not isinstance(spec, spec_type):
        return executor(*args, **kwargs)
    if others:
        LOG.warning("%s: %s is also attached to this model; %s is bypassed for this run so that steps are not "
                    "skipped twice. Use one step cache per model.", name, " and ".join(others), name)
        return executor(*args, **kwargs)
    sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
    schedule = [float(s) for s in sigmas.detach().flatten().cpu()] if isinstance(sigmas, torch.Tensor) else []
    active = start(spec, guider.model_patcher, schedule)
    guider.model_options = comfy.model_patcher.create_model_options_clone(orig)
    guider.model_options["transformer_options"][key] = active
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = orig
        finish(active)


def outer_sample_wrapper(executor, *args, **kwargs):
    return sampling_scope(executor, args, kwargs, KEY, CacheSpec, other_caches(executor.class_obj.model_options),
                          _start, _finish, "AB-Cache")


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


def _start(spec: CacheSpec, patcher, schedule) -> ActiveRun:
    model, sampling = patcher.model, sampling_of(patcher)
    level = "diffusion_model" if has_diffusion_model_hook(model.diffusion_model) else "apply_model"
    active = ActiveRun(spec, schedule, level, is_flow(sampling))
    warn_if_nothing_to_skip("AB-Cache", spec.settings, len(schedule) - 1)
    warn_if_unsupported_schedule("AB-Cache", active.run)
    return active


def warn_if_unsupported_schedule(name: str, run: CacheRun) -> None:
    if run.unsupported:
        LOG.warning("%s: %s; this run is not cached (every step runs the model).", name, run.unsupported)


def warn_if_nothing_to_skip(name: str, settings: CacheSettings, steps: int) -> None:
    if steps <= 0 or settings.mode == "adaptive":
        return
    if all(plan(settings, steps)):
        LOG.warning("%s: with %d steps nothing can be skipped (mode %s, warm-up %d, interval %d, final steps "
                    "%d); every step runs the model. Lower the warm-up or interval, or use more steps.",
                    name, steps, settings.mode, settings.warmup, settings.interval, settings.final_steps)


def _finish(active: ActiveRun) -> None:
    run = active.run
    try:
        LOG.info("%s [%s, %s, order %d, %s]", run.summary_line(), run.settings.mode,
                 run.settings.coordinate, run.settings.order, active.level)
        if active.spec.sink is not None:
            active.spec.sink.put({
                "summary": run.summary(),
                "settings": dataclasses.asdict(run.settings),
                "schedule": list(run.schedule),
                "level": active.level,
                "records": [dataclasses.asdict(r) for r in run.records],
            })
    finally:
        run.release()
        active.signatures.clear()


def diffusion_model_wrapper(executor, *args, **kwargs):
    to = find_transformer_options(args, kwargs)
    active = to.get(KEY) if to is not None else None
    if not isinstance(active, ActiveRun):
        return executor(*args, **kwargs)
    with active.lock:
        active.dm_calls += 1
    if active.level != "diffusion_model":
        return executor(*args, **kwargs)
    x = args[0] if args else kwargs.get("x")
    return _cached_call(active, to, x, lambda: executor(*args, **kwargs), space="raw")


def active_in_apply_model(key: str, args, kwargs):
    """Our per-run state from an APPLY_MODEL call (x, t, c_concat, c_crossattn, control, transformer_options)."""
    to = kwargs.get("transformer_options")
    if not isinstance(to, dict):
        to = args[3] if len(args) > 3 and isinstance(args[3], dict) else None
    return to, (to.get(key) if to is not None else None)


def apply_model_wrapper(executor, x, t, *args, **kwargs):
    to, active = active_in_apply_model(KEY, args, kwargs)
    if not isinstance(active, ActiveRun):
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
            LOG.warning("AB-Cache: %s runs no DIFFUSION_MODEL wrappers; caching at the apply_model level instead",
                        type(executor.class_obj.diffusion_model).__name__ if executor.class_obj is not None else "model")
    else:
        out = _cached_call(active, to, x, lambda: executor(x, t, *args, **kwargs), space="denoised", t=t)
    return apply_exposure(active.run, active.flow, x, t, out, mark)


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


def _cached_call(active: ActiveRun, to: dict, x, forward, space: str, t=None):
    """Compute or extrapolate one model call. ``space='denoised'`` caches d = (x - D) / sigma."""
    sigmas = to.get("sigmas")
    uuids = list(to.get("uuids") or [])
    x_parts, _ = _as_parts(x)
    if not isinstance(sigmas, torch.Tensor) or sigmas.numel() == 0 or not uuids or x_parts is None:
        return forward()
    sigma = float(sigmas.flatten()[0])
    run = active.run
    wkey = _window_key(to)
    n = len(uuids)
    x_chunks = _split(x_parts[0], n)
    if x_chunks is None:
        return forward()
    sig_in = (tuple(x_chunks[0].shape), x_parts[0].dtype, len(x_parts))
    conds = [(u, wkey, pass_tag(to, u)) for u in uuids]   # one history per conditioning, window and pass
    keys = []
    with active.lock:
        for c in conds:
            nparts = active.parts.get(c, 1)
            if active.signatures.get(c) != sig_in:
                for p in range(nparts):       # new resolution/dtype/batch for this cond: start over
                    run.forget(c + (p,))
            keys += [c + (p,) for p in range(nparts)]
    decision = run.decide(sigma, keys, device=x_parts[0].device)
    if decision.skip:
        out = _assemble(active, decision.predictions, conds, x_parts, space, t)
        if out is not None:
            if active.spec.verbose:
                LOG.info("AB-Cache: sigma %.4f extrapolated (order %d, estimate %.2e)", sigma, decision.order, decision.error)
            return out
    try:
        out = forward()
    except BaseException:
        run.unfinished(decision)   # the summary counts finished calls only
        raise
    parts, _ = _as_parts(out)
    if parts is not None:
        chunks = [_split(p, n) for p in parts]
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
            run.record(sigma, rec)
    if active.spec.verbose:
        LOG.info("AB-Cache: sigma %.4f computed (%s)", sigma, decision.reason)
    return out


def _sig(t, i, n, like):
    s = _split(t.flatten(), n)[i] if isinstance(t, torch.Tensor) and t.numel() % n == 0 else t
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
                xc = _split(x_parts[0], n)[i]
                y = (xc.float() - _sig(t, i, n, xc) * y.float()).to(y.dtype)
            chunks.append(y)
        out_parts.append(torch.cat(chunks, dim=0))
    if len(out_parts) == 1 and len(x_parts) == 1:
        return out_parts[0]
    return out_parts


# ---------------------------------------------------------------------------------------------- apply
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


def apply_ab_cache(model, settings: CacheSettings, verbose: bool = False, sink=None):
    """Clone ``model`` and attach AB-Cache. Re-applying replaces an earlier AB-Cache on the same model."""
    settings = settings.validate()
    m = fresh_clone(model, KEY, "AB-Cache", other_caches(model.model_options))
    m.model_options["transformer_options"][KEY] = CacheSpec(settings, verbose, sink)
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, outer_sample_wrapper)
    add_pass_wrappers(m, KEY)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, KEY, apply_model_wrapper)
    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, KEY, diffusion_model_wrapper)
    return m
