"""Block-level caching for FLUX-family models (EB-Cache / FORA style) through ComfyUI's public block hooks.

FLUX (``comfy.ldm.flux.model.Flux``: FLUX.1 dev/schnell/Kontext) and Chroma call every transformer block
through ``transformer_options["patches_replace"]["dit"][("double_block", i)]`` and
``[("single_block", i)]`` when a replacement is registered. The replacement receives
``args = {"img", "txt" (double only), "vec", "pe", "attn_mask", "transformer_options"}`` and
``extra = {"original_block": f}``, where ``f(args)`` runs the real block and returns ``{"img", "txt"}``
(double) or ``{"img"}`` (single, whose img is the concatenated [txt, img] stream); the replacement returns
the same dict. Blocks are numbered in execution order: double blocks 0..D-1, then single blocks D.. .

Per model call (one DIFFUSION_MODEL call, all conditioning chunks batched):
* computed step (per the table/interval): every block runs; for each block at position >= compute_blocks
  and each conditioning chunk, the residual the block adds (out - in, per stream) is stored;
* skipped step: the first ``compute_blocks`` blocks run; every later block returns
  ``in + r̂``, r̂ = the stored residuals extrapolated to this σ (order 1 = reuse, as FORA/EB-Cache;
  order 2 = linear in σ; Lagrange weights on the computed steps, abcache_core.CacheRun). A block whose
  residual has no safe extrapolation runs for real. Embeddings, RoPE and the final layer always run.

What the hooks cannot do (see docs/EB_CACHE.md): EB-Cache caches a block's attention and MLP outputs
separately, before gating, and re-applies them with adaLN gates recomputed from the current timestep (and
its code ``a`` reuses attention while recomputing the MLP). The dit hooks see a block only as a whole
(input -> output), so that needs a copy of the block forward. Here a whole block's residual is reused,
gates included, and EB-Cache's ``a`` runs the step in full.

Per-run state lives in a :class:`BlockRun` created by an OUTER_SAMPLE wrapper for each sampling call and
released in its ``finally``; the model carries only a frozen, configuration-only :class:`BlockCacheSpec` and
pass-through block patches. Nothing of ours is a key of ``transformer_options`` (torch.compile, docs/DESIGN.md):
the run's DIFFUSION_MODEL wrapper hands each model call a copy of ``transformer_options`` whose dit patches are
the run's own (made once per run, bound to the BlockRun), and the call's state is found by the thread the call
runs on (``BlockRun.calls``), so calls of several device threads never mix. A real block runs with the
``transformer_options`` it would see without this node (our dit patches removed), so code Dynamo compiles for
a block is the same with and without the node.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Optional

import torch

import comfy.patcher_extension as pe

from ...abcache_core import PARAMS, CacheRun, CacheSettings
from .passes import PASS_WRAPPERS, pass_tag
from . import scope

LOG = scope.LOG

KEY_BLOCKS = "ab_cache_blocks"
NAME = scope.STEP_CACHES[KEY_BLOCKS]
BLOCK_MODES = ("table", "fixed")      # a step either runs all blocks or reuses the later ones: no call-time mode


# ------------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class BlockCacheSpec:
    """What the node stores on the model: configuration only (deep-copy safe)."""

    settings: CacheSettings        # mode fixed/table, order, interval, warm-up, table, cache device, exposure
    compute_blocks: int            # first blocks (execution order) that run on every step
    name: str = NAME               # how other step caches name it in their messages


def flux_family_classes() -> tuple:
    """The diffusion-model classes whose forward calls the dit double/single block hooks used here."""
    import comfy.ldm.flux.model

    classes = [comfy.ldm.flux.model.Flux]
    try:
        import comfy.ldm.chroma.model

        classes.append(comfy.ldm.chroma.model.Chroma)
    except Exception:  # runtimes without Chroma
        pass
    return tuple(classes)


def block_counts(diffusion_model) -> tuple[int, int]:
    return len(diffusion_model.double_blocks), len(diffusion_model.single_blocks)


# -------------------------------------------------------------------------------------- run state
class _Call:
    """One DIFFUSION_MODEL call: what the block hooks need to know."""

    def __init__(self, sigma: float, uuids: list, wkey, decision, sig):
        self.sigma = sigma
        self.uuids = uuids
        self.n = len(uuids)
        self.wkey = wkey
        self.decision = decision
        self.skip = decision.skip
        self.sig = sig               # input signature (shape, batch per chunk, dtype, context shape)
        self.thread = threading.get_ident()   # the thread the call (and so its block hooks) runs on
        self.rec: dict = {}          # computed call: key -> residual chunk
        self.seen: list = []         # computed call: (block name, streams) of the stored blocks, in order
        self.record_ok = True
        self.reused = 0              # skipped call: blocks replaced by extrapolated residuals


class BlockRun:
    """Per-sampling-call state shared by the wrappers and the block hooks of one run."""

    name = NAME

    def __init__(self, spec: BlockCacheSpec, schedule, n_double: int, flow: bool, sensitivity=None):
        self.spec = spec
        self.run = CacheRun(spec.settings, schedule, flow=flow, sensitivity=sensitivity)
        self.n_double = n_double
        self.flow = flow
        self.lock = threading.Lock()
        self.tail: tuple = ()        # (block name, streams) after compute_blocks, from the last computed call
        self.signatures: dict = {}   # (uuid, window) -> input signature its history was recorded for
        self.blocks_run = 0          # block evaluations (hooked blocks only)
        self.blocks_reused = 0
        self.pass_scope = None       # passes.PassScope of the current sampler evaluation
        self.calls: dict = {}        # thread id -> _Call of the model call running on that thread
        self.patches: dict = {}      # (block name, id of the node's patch) -> this run's patch for that block

    def __deepcopy__(self, memo):
        return self


# ----------------------------------------------------------------------------------------- wrappers


def outer_sample_wrapper(executor, *args, **kwargs):
    return scope.sampling_scope(executor, args, kwargs, KEY_BLOCKS, BlockCacheSpec,
                          scope.other_caches(executor.class_obj.model_options, KEY_BLOCKS), _start, _finish, NAME,
                                RUN_WRAPPERS)


def _start(spec: BlockCacheSpec, patcher, schedule, noise_injected: bool = False, sensitivity=None,
           calls=None) -> BlockRun:
    # ``calls`` (a multi-call sampler's calls per step) is not used: the block cache decides per step
    # noise_injected is not used: the block cache extrapolates residuals, not the model's noise estimate
    sampling = scope.sampling_of(patcher)
    n_double, _ = block_counts(patcher.model.diffusion_model)
    scope.warn_if_nothing_to_skip(NAME, spec.settings, len(schedule) - 1)
    active = BlockRun(spec, schedule, n_double, scope.is_flow(sampling), sensitivity)
    scope.warn_if_unsupported_schedule(NAME, active.run)
    return active


def _finish(active: BlockRun) -> None:
    run = active.run
    try:
        s = run.summary()
        total = active.blocks_run + active.blocks_reused
        LOG.info("%s: computed %d/%d model calls in full (%d first blocks always); %d of %d block evaluations "
                 "reused (%.2fx fewer) [%s, order %d]", NAME, s["computed"], s["calls"], active.spec.compute_blocks,
                 active.blocks_reused, total, total / active.blocks_run if active.blocks_run else 1.0,
                 run.settings.mode, run.settings.order)
    finally:
        run.release()
        active.signatures.clear()
        active.calls.clear()
        active.patches.clear()
        active.tail = ()


def diffusion_model_wrapper(active: BlockRun, executor, *args, **kwargs):
    """Decide compute/skip for this model call, expose it to the block hooks, record the residuals.

    The call's state is keyed by the thread it runs on (ComfyUI's multi-GPU work units run one model call per
    device thread at the same time); the block hooks of the call run on the same thread. Under torch.compile
    Dynamo never traces the bookkeeping (_begin_call, _end_call) nor the run's block patches."""
    to = scope.find_transformer_options(args, kwargs)
    if to is None:
        return executor(*args, **kwargs)
    x = args[0] if args else kwargs.get("x")
    ctx = args[2] if len(args) > 2 else kwargs.get("context")
    call, patches = _begin_call(active, to, x, ctx)
    if call is None:
        return executor(*args, **kwargs)        # nothing to key the history on: run as is
    # the run's own block patches, in this call's copy of transformer_options (the key is ComfyUI's own and
    # already there: the node registered pass-through patches for every block)
    args, kwargs = scope.with_transformer_options(args, kwargs, to, {"patches_replace": patches})
    try:
        out = executor(*args, **kwargs)
    except BaseException:
        _end_call(active, call, finished=False)   # the summary counts finished calls only
        raise
    _end_call(active, call)
    return out


@scope.dynamo_off
def _begin_call(active: BlockRun, to: dict, x, ctx):
    """(this call's _Call, patches_replace with the run's dit patches), or (None, None) when the call cannot be
    keyed (no sigma, no uuids, a batch the uuids do not divide)."""
    sigmas = to.get("sigmas")
    uuids = list(to.get("uuids") or [])
    pr = to.get("patches_replace")
    dit = pr.get("dit") if isinstance(pr, dict) else None
    if (not isinstance(x, torch.Tensor) or not isinstance(sigmas, torch.Tensor) or sigmas.numel() == 0
            or not uuids or x.ndim == 0 or x.shape[0] % len(uuids) or not isinstance(dit, dict)):
        return None, None
    run = active.run
    sigma = float(sigmas.flatten()[0])
    wkey = scope.window_key(to)
    n = len(uuids)
    uuids = [(u, pass_tag(to)) for u in uuids]   # a guidance pass (PAG, SLG ...) has its own history
    ctx_shape = tuple(ctx.shape[1:]) if isinstance(ctx, torch.Tensor) else None
    sig = (tuple(x.shape[1:]), x.shape[0] // n, x.dtype, ctx_shape)
    with active.lock:
        tail = active.tail
        for u in uuids:
            if active.signatures.get((u, wkey)) != sig:     # new resolution/prompt length: start over
                for name, streams in tail:
                    for st in streams:
                        run.forget((u, wkey, name, st))
        run_dit = {k: _run_patch(active, k, p) if getattr(p, "abcache_block", False) else p for k, p in dit.items()}
    keys = [(u, wkey, name, st) for u in uuids for name, streams in tail for st in streams]
    if not keys:
        keys = [(u, wkey, "blocks") for u in uuids]      # no history yet: decide() computes
    decision = run.decide(sigma, keys, device=x.device, predict=False)
    call = _Call(sigma, uuids, wkey, decision, sig)
    with active.lock:
        active.calls[call.thread] = call
    return call, {**pr, "dit": run_dit}


@scope.dynamo_off
def _end_call(active: BlockRun, call: _Call, finished: bool = True) -> None:
    with active.lock:
        active.calls.pop(call.thread, None)
    if not finished:
        active.run.unfinished(call.decision)
        return
    with active.lock:
        active.blocks_reused += call.reused
    if not call.skip and call.record_ok and call.rec:
        active.run.record(call.sigma, call.rec)
        with active.lock:
            active.tail = tuple(call.seen)
            for u in call.uuids:
                active.signatures[(u, call.wkey)] = call.sig


def apply_model_wrapper(active: BlockRun, executor, x, t, *args, **kwargs):
    """Exposure-bias compensation (EB-Cache's ε/δ) on the denoised output; see abcache_core/exposure.py."""
    mark = active.run.mark()
    out = executor(x, t, *args, **kwargs)
    return scope.apply_exposure(active.run, active.flow, x, t, out, mark)


def _make_block_patch(kind: str, index: int, prev):
    """The dit replacement the node registers for one block: passes through (outside a sampling call, or when
    the run's wrapper did not install the run's patch); ``prev`` is a replacement that was there before
    (chained)."""
    def patch(args, extra):
        return _run_block(prev, args, extra)

    patch.abcache_block = True
    patch.abcache_prev = prev
    patch.abcache_name = (kind, index)
    return patch


def _run_patch(active: BlockRun, key, node_patch):
    """This run's patch for one block (made once per run; the caller holds the run's lock)."""
    ident = (key, id(node_patch))
    made = active.patches.get(ident)
    if made is None:
        made = active.patches[ident] = _make_run_patch(active, node_patch.abcache_name, node_patch.abcache_prev)
    return made


def _make_run_patch(active: BlockRun, name, prev):
    kind, index = name
    streams = ("img", "txt") if kind == "double_block" else ("img",)
    position = index if kind == "double_block" else active.n_double + index

    @scope.dynamo_skip          # never inlined by Dynamo (no guard on the run); the real block is compiled
    def patch(args, extra):
        call = active.calls.get(threading.get_ident())
        if call is None:
            return _run_block(prev, args, extra)
        if position < active.spec.compute_blocks:
            with active.lock:
                active.blocks_run += 1
            return _run_block(prev, args, extra)
        if call.skip:
            out = _reuse(active.run, call, name, streams, args)
            if out is not None:
                call.reused += 1
                return out
        # ComfyUI's FLUX blocks add into their input in place (img += ...): keep the input for the residual
        inputs = _inputs_before(call, streams, args)
        out = _run_block(prev, args, extra)
        with active.lock:
            active.blocks_run += 1
        if not call.skip:
            _store(call, name, streams, inputs, out)
        return out

    patch.abcache_run_patch = True
    return patch


@scope.dynamo_skip              # its own frame is not traced; the block it runs is compiled as usual
def _run_block(prev, args, extra):
    """Run the block: the replacement that was there before ours, or the real block, which gets its
    transformer_options without our patches (_without_own_patches)."""
    if prev is not None:
        return prev(args, extra)
    return extra["original_block"](_without_own_patches(args))


def _own(p) -> bool:
    return getattr(p, "abcache_block", False) or getattr(p, "abcache_run_patch", False)


@scope.dynamo_off
def _without_own_patches(args: dict) -> dict:
    """``args`` for a real block: its ``transformer_options`` without this node's dit patches (and without
    ``patches_replace`` / ``dit`` when nothing else is in them), i.e. what the block sees without this node.
    The blocks never read those patches; Dynamo would otherwise compile the block for a key set that a run
    without this node lacks (newer ComfyUI drops the guards on transformer_options: KeyError there)."""
    to = args.get("transformer_options")
    pr = to.get("patches_replace") if isinstance(to, dict) else None
    dit = pr.get("dit") if isinstance(pr, dict) else None
    if not isinstance(dit, dict):
        return args
    rest = {k: p for k, p in dit.items() if not _own(p)}
    pr = {k: v for k, v in pr.items() if k != "dit"}
    if rest:
        pr["dit"] = rest
    to = {k: v for k, v in to.items() if k != "patches_replace"}
    if pr:
        to["patches_replace"] = pr
    return {**args, "transformer_options": to}


@scope.dynamo_off
def _reuse(run: CacheRun, call: _Call, name, streams, args) -> Optional[dict]:
    out = {}
    for st in streams:
        a = args.get(st)
        if not isinstance(a, torch.Tensor):
            return None
        preds = [run.predict(call.sigma, (u, call.wkey, name, st), device=a.device) for u in call.uuids]
        if any(p is None for p in preds):
            return None
        r = preds[0] if len(preds) == 1 else torch.cat(preds, dim=0)
        if r.shape != a.shape:
            return None
        out[st] = a + r.to(a.dtype)
    return out


@scope.dynamo_off
def _inputs_before(call: _Call, streams, args) -> Optional[dict]:
    """A copy of a computed block's input streams, taken before the block runs (and may modify them)."""
    if call.skip or not call.record_ok:
        return None
    return {st: a.detach().clone() for st in streams if isinstance((a := args.get(st)), torch.Tensor)}


@scope.dynamo_off
def _store(call: _Call, name, streams, args, out) -> None:
    if not call.record_ok or args is None:
        return
    for st in streams:
        a, o = args.get(st), out.get(st) if isinstance(out, dict) else None
        if not (isinstance(a, torch.Tensor) and isinstance(o, torch.Tensor) and a.shape == o.shape):
            call.record_ok = False
            return
        chunks = scope.split_batch((o - a).detach(), call.n)
        if chunks is None:
            call.record_ok = False
            return
        for u, c in zip(call.uuids, chunks):
            call.rec[(u, call.wkey, name, st)] = c
    call.seen.append((name, streams))


# -------------------------------------------------------------------------------------------- apply
# Per-run wrappers (bound to the BlockRun by scope.sampling_scope), in registration order.
RUN_WRAPPERS = {**PASS_WRAPPERS, pe.WrappersMP.APPLY_MODEL: apply_model_wrapper,
                pe.WrappersMP.DIFFUSION_MODEL: diffusion_model_wrapper}

def apply_block_cache(model, settings: CacheSettings, compute_blocks: int = PARAMS["compute_blocks"].default):
    """Clone ``model`` and attach block-level caching. Re-applying replaces an earlier one."""
    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if dm is None:
        raise ValueError(f"{NAME}: expected a MODEL (ComfyUI ModelPatcher), got {type(model).__name__}")
    if not isinstance(dm, flux_family_classes()):
        raise ValueError(f"{NAME}: works only with FLUX-family models (FLUX.1 dev/schnell/Kontext, Chroma), whose "
                         f"blocks ComfyUI exposes as dit double/single block hooks; this model is "
                         f"{type(dm).__name__}. Use AB-Cache or AB-Cache (Advanced) for it.")
    try:
        if settings.mode not in BLOCK_MODES:
            raise ValueError(f"mode must be one of {BLOCK_MODES}, got {settings.mode!r}")
        PARAMS["compute_blocks"].check(compute_blocks)
        settings = settings.validate()
    except ValueError as e:
        raise ValueError(f"{NAME}: {e}") from None
    m = scope.fresh_clone(model, KEY_BLOCKS, NAME, scope.other_caches(model.model_options, KEY_BLOCKS))
    n_double, n_single = block_counts(dm)
    current = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for kind, count in (("double_block", n_double), ("single_block", n_single)):
        for i in range(count):
            prev = current.get((kind, i))
            if getattr(prev, "abcache_block", False):
                prev = prev.abcache_prev        # re-applied: replace ours, keep what was under it
            m.set_model_patch_replace(_make_block_patch(kind, i, prev), "dit", kind, i)
    m.model_options[KEY_BLOCKS] = BlockCacheSpec(settings, int(compute_blocks))
    m.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY_BLOCKS, outer_sample_wrapper)
    scope.register_placeholders(m, KEY_BLOCKS, RUN_WRAPPERS)
    return m
