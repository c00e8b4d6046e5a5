"""Pass identity: which kind of model call a conditioning's call is within one sampler evaluation.

ComfyUI's guidance nodes (PerturbedAttentionGuidance, SelfAttentionGuidance, SkipLayerGuidanceDiT/SD3, LTXV's
spatio-temporal / modality guidance, ...) call calc_cond_batch a second time at the same sigma with a
conditioning the normal pass already evaluated. A per-run PREDICT_NOISE wrapper opens a fresh
:class:`PassScope` per sampler evaluation (on the run's state: the sampler calls it from one thread, one
evaluation at a time), and a per-run CALC_COND_BATCH wrapper passes the n-th evaluation (n > 0) of a
conditioning on with a shallow copy of its cond dict whose uuid is derived from the original
(uuid5(uuid, "pass<n>")). ComfyUI copies cond["uuid"] into transformer_options["uuids"], so the history key of
every model call carries its pass without any key of ours in transformer_options (torch.compile safe), and a
guidance pass never replaces the normal pass's history. The guider's conds are never modified.
"""
from __future__ import annotations

import threading
import uuid as uuidlib

import comfy.patcher_extension as pe

from .scope import replace_arg, window_key


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


def pass_uuid(u, n: int):
    """The uuid a conditioning's n-th pass (n > 0) is evaluated under."""
    if isinstance(u, uuidlib.UUID):
        return uuidlib.uuid5(u, f"pass{n}")
    return (u, "pass", n)


def predict_noise_wrapper(active, executor, *args, **kwargs):
    """Per-run PREDICT_NOISE wrapper (x, timestep, model_options, seed): a fresh PassScope per evaluation."""
    active.pass_scope = PassScope()
    return executor(*args, **kwargs)


def tag_passes(active, conds, to: dict):
    """``conds`` with the n-th evaluation (n > 0) of a conditioning in this sampler evaluation under a derived
    uuid (shallow copies of those cond dicts); ``conds`` itself when every pass is 0."""
    scope = getattr(active, "pass_scope", None)
    if not isinstance(scope, PassScope) or not isinstance(conds, (list, tuple)):
        return conds
    uuids = [c.get("uuid") for group in conds if group for c in group if isinstance(c, dict)]
    passes = scope.passes([u for u in uuids if u is not None], window_key(to))
    if not any(passes.values()):
        return conds
    tagged = [group if not group else
              [{**c, "uuid": pass_uuid(c["uuid"], passes[c["uuid"]])}
               if isinstance(c, dict) and passes.get(c.get("uuid")) else c for c in group]
              for group in conds]
    return type(conds)(tagged) if isinstance(conds, tuple) else tagged


def calc_cond_batch_args(args, kwargs):
    """(conds, x_in, timestep, model_options) of a CALC_COND_BATCH call (model, conds, x_in, timestep,
    model_options)."""
    def get(i, name):
        return kwargs.get(name, args[i] if len(args) > i else None)
    return get(1, "conds"), get(2, "x_in"), get(3, "timestep"), get(4, "model_options")


def calc_cond_batch_wrapper(active, executor, *args, **kwargs):
    """Per-run CALC_COND_BATCH wrapper: passes are told apart by derived uuids (tag_passes). Pass 0
    everywhere: the call is passed on unchanged."""
    conds, _, _, mo = calc_cond_batch_args(args, kwargs)
    to = mo.get("transformer_options", {}) if isinstance(mo, dict) else {}
    tagged = tag_passes(active, conds, to)
    if tagged is not conds:
        args, kwargs = replace_arg(args, kwargs, 1, "conds", tagged)
    return executor(*args, **kwargs)


def _patch_fingerprint(to: dict) -> tuple:
    """Which blocks this call's transformer_options replace (PAG's attn1, SLG's skipped DiT blocks ...):
    structure only, so the same patches give the same fingerprint on every step."""
    pr = to.get("patches_replace")
    if not isinstance(pr, dict):
        return ()
    return tuple(sorted((str(name), tuple(sorted(repr(b) for b in blocks)))
                        for name, blocks in pr.items() if isinstance(blocks, dict) and blocks))


def pass_tag(to: dict) -> tuple:
    """Which blocks this call replaces (PAG's attn1, SLG's skipped DiT blocks ...): part of every history key,
    so each kind of pass is extrapolated from its own history (the pass ordinal is in the uuid)."""
    return _patch_fingerprint(to)


PASS_WRAPPERS = {pe.WrappersMP.PREDICT_NOISE: predict_noise_wrapper,
                 pe.WrappersMP.CALC_COND_BATCH: calc_cond_batch_wrapper}
