"""Pass identity: which kind of model call a conditioning's call is within one sampler evaluation.

ComfyUI's guidance nodes (PerturbedAttentionGuidance, SelfAttentionGuidance, SkipLayerGuidanceDiT/SD3, LTXV's
spatio-temporal / modality guidance, ...) call calc_cond_batch a second time at the same sigma with a
conditioning the normal pass already evaluated. A PREDICT_NOISE wrapper opens a fresh :class:`PassScope` per
sampler evaluation, a CALC_COND_BATCH wrapper tags each conditioning with its pass ordinal, and
:func:`pass_tag` makes the pass part of every history key, so a guidance pass never replaces the normal
pass's history and each is extrapolated from its own.
"""
from __future__ import annotations

import threading

import comfy.patcher_extension as pe

from .scope import replace_arg, window_key


SCOPE_KEY = "ab_cache_pass_scope"   # transformer_options: the PassScope of the current sampler evaluation


PASS_KEY = "ab_cache_passes"        # transformer_options: uuid -> pass ordinal of this calc_cond_batch


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


def model_options_with(model_options: dict, **extra) -> dict:
    """A shallow copy of ``model_options`` whose transformer_options (also copied) carry ``extra``."""
    mo = dict(model_options)
    mo["transformer_options"] = {**model_options.get("transformer_options", {}), **extra}
    return mo


def pass_scope_wrapper(key: str):
    """PREDICT_NOISE wrapper (x, timestep, model_options, seed): a fresh PassScope per sampler evaluation,
    when the cache stored under ``key`` is active in this sampling call."""

    def predict_noise_wrapper(executor, *args, **kwargs):
        mo = kwargs.get("model_options", args[2] if len(args) > 2 else None)
        if not isinstance(mo, dict) or key not in mo.get("transformer_options", {}):
            return executor(*args, **kwargs)
        args, kwargs = replace_arg(args, kwargs, 2, "model_options",
                                    model_options_with(mo, **{SCOPE_KEY: PassScope()}))
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
    passes = scope.passes([u for u in uuids if u is not None], window_key(to))
    if not any(passes.values()):
        return executor(*args, **kwargs)
    args, kwargs = replace_arg(args, kwargs, 4, "model_options", model_options_with(mo, **{PASS_KEY: passes}))
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
