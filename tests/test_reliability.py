"""Reliability: interrupts and model errors, a soak of 100 runs, fuzzing, bad input and security.

Counts of what these tests try are reported in docs/RELIABILITY.md.
"""
from __future__ import annotations

import ast
import gc
import logging
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abcache_core.params import COORDINATES

REPO = Path(__file__).resolve().parents[1]
SOAK_RUNS = 100
FUZZ_EXAMPLES = 60


def _cached(env, model, *schedule, **inputs):
    """AB-Cache as a graph applies it; positional ``order, interval, warmup`` (harness.TEST_SCHEDULE if omitted)."""
    return env.harness.abcache(env.nodes, model, **dict(zip(("order", "interval", "warmup"), schedule)), **inputs)


def _live_runs(env):
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is env.wrappers.ActiveRun]


def _live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _failing_model(env, model, at_call, exc):
    """Clone with an innermost wrapper that raises a new ``exc`` on real forward call number ``at_call``."""
    import comfy.patcher_extension as pe

    m = model.clone()
    n = {"k": 0}

    def boom(executor, *a, **kw):
        n["k"] += 1
        if n["k"] == at_call:
            raise exc()
        return executor(*a, **kw)

    m.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "abcache_test_boom", boom)
    return m


FRESH_PROCESS = textwrap.dedent("""
    import sys, torch
    sys.path.append({repo!r})
    from devtools import runtime
    runtime.activate(cpu=True)
    torch.set_num_threads(1)
    from devtools import tiny_models, harness
    from devtools.pack import load_nodes
    from safetensors.torch import save_file
    n = load_nodes()
    case = tiny_models.build("flux_dev", seed=0)
    m = harness.abcache(n, case.patcher)      # as _cached below
    out = harness.sample(m, case.latent, case.positive(1), case.negative(2), steps=12)
    save_file({{"out": out.contiguous()}}, {path!r})
""")


@pytest.mark.parametrize("kind", ["interrupt", "model_error"])
def test_failure_mid_sampling_leaves_nothing_behind(env, kind, tmp_path):
    import comfy.model_management as mm
    from safetensors.torch import load_file

    case = env.case("flux_dev")
    cached = _cached(env, case.patcher)
    exc = mm.InterruptProcessingException if kind == "interrupt" else RuntimeError
    raised = None
    try:
        env.harness.sample(_failing_model(env, cached, 5, exc), case.latent, case.positive(1), case.negative(2),
                           steps=12)
    except exc as e:
        raised = repr(e)  # keep no traceback: its frames would keep the run alive
    assert raised is not None
    assert not _live_runs(env), "run state must be released after an interrupt or error"
    after = env.harness.sample(cached, case.latent, case.positive(1), case.negative(2), steps=12)
    path = tmp_path / "fresh.safetensors"
    subprocess.run([sys.executable, "-c", FRESH_PROCESS.format(repo=str(REPO), path=str(path))], check=True,
                   capture_output=True, timeout=300)
    assert torch.equal(after, load_file(str(path))["out"]), "next run must equal a run in a fresh process"


def test_soak_100_runs_memory_flat(env):
    import psutil

    proc = psutil.Process()
    case = env.case("flux_dev")
    configs = [dict(order=o, interval=i, warmup=w) for o in (1, 2, 3, 4) for i in (1, 2, 3, 5) for w in (0, 2)]
    adv = [dict(mode="adaptive", order=3, tolerance=0.05), dict(mode="paper", order=2, interval=6, warmup=5),
           dict(mode="table", table="FFsFsFsF"), dict(mode="fixed", cache_device="cpu")]
    samplers = ["euler", "heun", "dpmpp_2m", "euler_ancestral"]
    rss, tensors = {}, {}
    for r in range(SOAK_RUNS):
        if r % 5 == 4:
            a = dict(adv[(r // 5) % len(adv)])
            m = _cached(env, case.patcher, a.pop("order", 2), a.pop("interval", 3), a.pop("warmup", 2), **a)
        else:
            m = _cached(env, case.patcher, **configs[r % len(configs)])
        out = env.harness.sample(m, case.latent, case.positive(r), case.negative(r), steps=8 + r % 5,
                                 sampler=samplers[r % len(samplers)], seed=r)
        assert torch.isfinite(out).all()
        del m, out
        if r in (9, SOAK_RUNS - 1):
            tensors[r] = _live_tensors()
            rss[r] = proc.memory_info().rss
    assert not _live_runs(env)
    assert tensors[SOAK_RUNS - 1] <= tensors[9], tensors
    assert rss[SOAK_RUNS - 1] - rss[9] < 64 * 2**20, rss


FAMILIES = ["flux_dev", "sd15", "wan21_t2v", "sd3"]
SAMPLERS = ["euler", "heun", "dpmpp_2m", "dpm_2", "uni_pc", "euler_ancestral", "dpmpp_2s_ancestral", "lcm", "ddim"]
SCHEDULERS = ["simple", "normal", "karras", "sgm_uniform", "beta", "exponential"]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(family=st.sampled_from(FAMILIES), sampler=st.sampled_from(SAMPLERS), scheduler=st.sampled_from(SCHEDULERS),
       cfg=st.sampled_from([1.0, 3.5]), denoise=st.sampled_from([1.0, 0.6]), steps=st.integers(1, 14),
       batch=st.integers(1, 2), mode=st.sampled_from(["fixed", "adaptive", "paper", "table", "even"]),
       order=st.integers(1, 4), interval=st.integers(1, 6), warmup=st.integers(0, 6),
       final_steps=st.integers(0, 2), tolerance=st.sampled_from([0.0, 0.01, 0.5]),
       window=st.sampled_from([(0.0, 1.0), (0.2, 0.8)]), coordinate=st.sampled_from(COORDINATES))
def test_fuzz_never_crashes_and_follows_its_plan(env, family, sampler, scheduler, cfg, denoise, steps, batch, mode,
                                                 order, interval, warmup, final_steps, tolerance, window, coordinate):
    if mode == "adaptive":
        order = max(order, 2)
    case = env.case(family)
    latent = torch.zeros((batch,) + tuple(case.latent.shape[1:]))
    kw = dict(steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler, denoise=denoise)
    ref_m, ref_spy = env.harness.with_spy(case.patcher)
    ref = env.harness.sample(ref_m, latent, case.positive(1), case.negative(2), **kw)
    model = _cached(env, case.patcher, order, interval, warmup, mode=mode, final_steps=final_steps,
                    tolerance=tolerance, start_percent=window[0], end_percent=window[1], coordinate=coordinate,
                    table="FFsFsFFsssF", speed=3.0 if mode == "even" else 0.0)
    m, spy = env.harness.with_spy(model)
    out = env.harness.sample(m, latent, case.positive(1), case.negative(2), **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if torch.isfinite(ref).all():
        assert torch.isfinite(out).all()
    last = model.model_options["ab_cache"].sink.last
    planned = sum(r["computed"] for r in last["records"])
    assert spy.calls == planned <= ref_spy.calls, "real forward calls must equal the run's own decisions"
    if tolerance == 0.0 and mode == "adaptive":
        assert spy.calls == ref_spy.calls


# ------------------------------------------------------------------------------------------ bad input
BAD_ADVANCED = [
    (dict(order=0), "order"),
    (dict(order=6), "order"),
    (dict(interval=0), "interval"),
    (dict(warmup=-1), "warmup"),
    (dict(tolerance=-0.1), "tolerance"),
    (dict(tolerance=float("nan")), "tolerance"),
    (dict(start_percent=0.8, end_percent=0.2), "start_percent"),
    (dict(start_percent=1.5), "start_percent"),
    (dict(mode="table", table=""), "table is empty"),
    (dict(mode="table", table="FFxx"), "invalid characters"),
    (dict(mode="adaptive", order=1), "adaptive mode needs order >= 2"),
    (dict(mode="warp"), "mode must be one of"),
    (dict(coordinate="timestep"), "coordinate"),
    (dict(cache_device="gpu7"), "cache_device"),
    (dict(max_skips=-2), "max_skips"),
]


@pytest.mark.parametrize("bad,message", BAD_ADVANCED)
def test_bad_input_gets_actionable_error(env, bad, message):
    case = env.case("flux_dev")
    with pytest.raises(ValueError, match=message):
        env.harness.apply_node(env.nodes.ABCacheAdvancedNode, case.patcher, **bad)


def test_validation_reports_inconsistent_widgets(env):
    v = env.nodes.ABCacheAdvancedNode.validate_inputs
    assert v(mode="table", table="FFsF") is True
    assert "invalid characters" in v(mode="table", table="F?F")
    assert "start_percent" in v(start_percent=0.9, end_percent=0.1)
    assert "order >= 2" in v(mode="adaptive", order=1)


def test_nothing_to_skip_warns_and_is_exact(env, caplog):
    """Warm-up >= steps: a clear warning, and the image is exactly the uncached one (never half-cached)."""
    case = env.case("flux_dev")
    ref = env.harness.sample(case.patcher, case.latent, case.positive(1), case.negative(2), steps=6)
    with caplog.at_level(logging.WARNING, logger="ab_cache"):
        out = env.harness.sample(_cached(env, case.patcher, 2, 3, 10), case.latent, case.positive(1),
                                 case.negative(2), steps=6)
    assert torch.equal(out, ref)
    assert any("nothing can be skipped" in r.getMessage() for r in caplog.records)


def test_not_a_model_is_refused(env):
    with pytest.raises(Exception):
        env.nodes.ABCacheNode.execute("not a model", 2, 3, 2)


# ------------------------------------------------------------------------------------------ security
PACK_DIRS = ["abcache_core", "nodes"]
FORBIDDEN_MODULES = {"socket", "urllib", "http", "requests", "aiohttp", "pickle", "marshal", "shelve", "subprocess",
                     "ctypes"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def test_pack_source_has_no_network_pickle_or_eval():
    files = [REPO / "__init__.py"] + [f for d in PACK_DIRS for f in (REPO / d).rglob("*.py")]
    assert len(files) >= 6
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                mods = []
            for m in mods:
                assert m.split(".")[0] not in FORBIDDEN_MODULES, f"{f}: imports {m}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in FORBIDDEN_CALLS, f"{f}: calls {node.func.id}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("load", "loads") or not (
                    isinstance(node.value, ast.Name) and node.value.id in ("torch", "pickle")), f"{f}: {node.attr}"


def test_sampling_makes_no_network_calls(env, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("AB-Cache opened a network socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    case = env.case("flux_dev")
    out = env.harness.sample(_cached(env, case.patcher), case.latent, case.positive(1), case.negative(2), steps=8)
    assert torch.isfinite(out).all()
