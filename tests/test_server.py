"""End to end through a real headless ComfyUI server: the pack loads, a graph with AB-Cache runs, the
output is saved, and the real forward calls drop as planned."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "helper_pack" / "ab_test_nodes"

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(comfy):
    from devtools.server import ComfyServer

    srv = ComfyServer({"ab-cache": REPO, "ab_test_nodes": HELPER}, extra_args=["--cache-none"])
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


def graph(cache: dict | None, seed=0, steps=12, family="flux_dev", prefix="abcache_e2e"):
    g = {
        "1": {"class_type": "ABTest_TinyModel", "inputs": {"family": family, "seed": 0}},
        "3": {"class_type": "ABTest_CountCalls", "inputs": {"model": ["2", 0] if cache else ["1", 0]}},
        "4": {"class_type": "ABTest_RandomConditioning", "inputs": {"family": family, "seed": 1}},
        "5": {"class_type": "ABTest_RandomConditioning", "inputs": {"family": family, "seed": 2}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["1", 1],
            "seed": seed, "steps": steps, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": prefix}},
    }
    if cache:
        g["2"] = {"class_type": cache.pop("class_type", "ABCache"), "inputs": {"model": ["1", 0], **cache}}
    return g


def _calls(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"ABTest_CountCalls: forward calls = (\d+)", log)]


def test_pack_loads_without_import_errors(server):
    assert not server.pack_load_problems(), server.log_text()[-3000:]
    info = server.get("/object_info/ABCache")
    inputs = info["ABCache"]["input"]["required"]
    assert set(inputs) == {"model", "order", "interval", "warmup"}
    assert all("tooltip" in spec[1] for spec in inputs.values())
    assert "ABCacheAdvanced" in server.get("/object_info/ABCacheAdvanced")


def test_graph_runs_end_to_end_with_fewer_forward_calls(server):
    plain = server.run(graph(None, prefix="plain"))
    cached = server.run(graph({"order": 2, "interval": 4, "warmup": 3}, prefix="cached"))
    for entry, prefix in ((plain, "plain"), (cached, "cached")):
        files = entry["outputs"]["8"]["latents"]
        assert files and files[0]["filename"].startswith(prefix)
        assert (server.base / "output" / files[0]["filename"]).is_file()
    log = server.log_text()
    assert _calls(log)[-2:] == [12, 6]  # steps 0,1,2,3,7,11
    assert re.search(r"AB-Cache: computed 6/12 model calls", log)


def test_bad_input_is_refused_at_validation(server):
    g = graph({"class_type": "ABCacheAdvanced", "order": 2, "interval": 4, "warmup": 3, "mode": "table",
               "coordinate": "auto", "tolerance": 0.01, "max_skips": 3, "start_percent": 0.0, "end_percent": 1.0,
               "final_steps": 1, "table": "FFxx", "cache_device": "same", "verbose": False})
    status, body = server.post("/prompt", {"prompt": g, "client_id": server.client_id})
    assert status == 400, body
    assert "invalid characters" in str(body["node_errors"])
    g["2"]["inputs"]["order"] = 9
    g["2"]["inputs"]["table"] = "FFss"
    status, body = server.post("/prompt", {"prompt": g, "client_id": server.client_id})
    assert status == 400 and "order" in str(body["node_errors"])


def test_noise_adding_samplers_over_http(server):
    """KSampler with euler_ancestral: the run extrapolates the data estimate (its log line says so) with the
    planned calls; SamplerCustomAdvanced with SamplerEulerAncestral at eta 0 (no noise added) keeps the noise
    estimate."""
    cache = {"order": 2, "interval": 4, "warmup": 3, "speed": 3.0}
    g = graph(dict(cache), prefix="ancestral")
    g["7"]["inputs"]["sampler_name"] = "euler_ancestral"
    before = len(server.log_text())
    server.run(g)
    log = server.log_text()[before:]
    assert _calls(log)[-1] == 4 and re.findall(r"AB-Cache: computed 4/12 model calls.*data space[,\]]", log)
    g = graph(dict(cache), prefix="eta0")
    del g["7"]
    g.update({
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "11": {"class_type": "CFGGuider", "inputs": {"model": ["3", 0], "positive": ["4", 0], "negative": ["5", 0],
                                                     "cfg": 2.0}},
        "12": {"class_type": "SamplerEulerAncestral", "inputs": {"eta": 0.0, "s_noise": 1.0}},
        "13": {"class_type": "BasicScheduler", "inputs": {"model": ["3", 0], "scheduler": "simple", "steps": 12,
                                                          "denoise": 1.0}},
        "7": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["10", 0], "guider": ["11", 0],
                                                                "sampler": ["12", 0], "sigmas": ["13", 0],
                                                                "latent_image": ["1", 1]}},
    })
    before = len(server.log_text())
    server.run(g)
    log = server.log_text()[before:]
    assert _calls(log)[-1] == 4 and re.findall(r"AB-Cache: computed 4/12 model calls.*noise space[,\]]", log)


def test_placement_by_the_sampler_over_http(server):
    """KSampler with dpmpp_2m (one call per step): the node places its 4 of 12 calls by the sampler's measured
    sensitivity, and its log line says so; heun (two calls in a step) is placed by the step lengths and decided per
    call: 8 of its 23 calls, and no warning of too few calls (7 of its 12 steps have a computed call)."""
    for sampler, placement in (("dpmpp_2m", "sampler"), ("heun", "step lengths, per call")):
        g = graph({"order": 2, "interval": 4, "warmup": 3, "speed": 3.0}, prefix=f"placed_{sampler}")
        g["7"]["inputs"].update(sampler_name=sampler, scheduler="karras")
        before = len(server.log_text())
        server.run(g)
        log = server.log_text()[before:]
        assert re.findall(rf"AB-Cache: computed \d+/\d+ model calls.*placed by {placement}\]", log), log[-2000:]
        assert _calls(log)[-1] == (4 if sampler == "dpmpp_2m" else 8)
        assert ("too few to extrapolate" in log) == (sampler == "dpmpp_2m")


def test_interrupt_over_http_then_next_run_is_clean(server):
    """POST /interrupt in the middle of a long cached run: the run ends as interrupted, AB-Cache still logs
    its summary (its cleanup ran), and the next prompt succeeds with the planned forward calls."""
    import time

    before = server.log_text().count("AB-Cache: computed")
    pid = server.queue(graph({"order": 2, "interval": 4, "warmup": 3}, steps=5000, prefix="long"))
    deadline = time.time() + 120
    while time.time() < deadline and not server.get("/queue")["queue_running"]:
        time.sleep(0.1)
    time.sleep(1.0)
    server.interrupt()
    entry = server.wait(pid, timeout=120)
    events = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in events, events
    after = server.run(graph({"order": 2, "interval": 4, "warmup": 3}, prefix="after_interrupt"))
    assert after["outputs"]["8"]["latents"]
    log = server.log_text()
    assert log.count("AB-Cache: computed") == before + 2
    assert _calls(log)[-1] == 6


# ------------------------------------------------------------------------------- ComfyUI's own input checks
OUT_OF_RANGE = [
    ("ABCache", dict(interval=0)),
    ("ABCache", dict(order=5)),              # the nodes offer orders 1-4
    ("ABCache", dict(warmup=-1)),
    ("ABCacheAdvanced", dict(interval=0)),
    ("ABCacheAdvanced", dict(order=5)),
    ("ABCacheAdvanced", dict(tolerance=-1.0)),
    ("ABCacheAdvanced", dict(max_skips=99)),
    ("ABCacheAdvanced", dict(start_percent=1.5)),
    ("ABCacheAdvanced", dict(mode="bogus")),
    ("ABCacheAdvanced", dict(coordinate="timestep")),
    ("ABCacheAdvanced", dict(exposure_delta=2.0)),
    ("ABCacheAdvanced", dict(exposure_apply="never")),
    ("ABCacheAdvanced", dict(mode="adaptive", order=1)),
    ("ABCacheAdvanced", dict(start_percent=0.8, end_percent=0.2)),
]


def _node_inputs(node_id: str, **values) -> dict:
    """Every widget input of one of this pack's nodes at its default (from the core's table), then ``values``."""
    from abcache_core import PARAMS
    from abcache_core.params import ADVANCED_NODE_INPUTS, ADVANCED_NODE_OPTIONAL, SIMPLE_NODE_INPUTS

    names = SIMPLE_NODE_INPUTS if node_id == "ABCache" else ADVANCED_NODE_INPUTS + ADVANCED_NODE_OPTIONAL
    return {"class_type": node_id, **{n: PARAMS[n].default for n in names}, **values}


@pytest.mark.parametrize("node_id,bad", OUT_OF_RANGE, ids=[f"{n}-{'-'.join(b)}" for n, b in OUT_OF_RANGE])
def test_out_of_range_prompt_is_refused_before_any_model_loads(server, node_id, bad):
    """ComfyUI itself range-checks every input validate_inputs does not take; validate_inputs checks the rest
    (and the cross-checks). Either way /prompt answers 400 with node_errors and nothing executes."""
    before = server.log_text().count("ABTest_CountCalls: forward calls")
    history = len(server.get("/history"))
    g = graph(_node_inputs(node_id, **bad), prefix="refused")
    status, body = server.post("/prompt", {"prompt": g, "client_id": server.client_id})
    assert status == 400, body
    errors = str(body.get("node_errors", {}).get("2", ""))
    assert errors and any(name in errors for name in bad), body
    assert len(server.get("/history")) == history
    assert server.log_text().count("ABTest_CountCalls: forward calls") == before


def test_linked_inputs_validate_when_their_value_is_known(server):
    """Widgets converted to inputs and fed by ComfyUI's Primitive nodes: the graph validates (linked values are
    unknown at validation) and runs with the linked values; a bad linked value fails at the node, at execution,
    with the same message validation gives."""
    from abcache_core import PARAMS

    kinds = {"int": "PrimitiveInt", "float": "PrimitiveFloat", "text": "PrimitiveString", "bool": "PrimitiveBoolean"}
    g = graph(_node_inputs("ABCacheAdvanced", order=2, interval=4, warmup=3, mode="fixed"), prefix="linked")
    values = dict(g["2"]["inputs"])
    for i, (name, value) in enumerate(v for v in values.items() if v[0] in PARAMS):
        kind = PARAMS[name].kind
        if kind in kinds:   # combos have no core Primitive node in the API format; they stay widgets
            g[f"p{i}"] = {"class_type": kinds[kind], "inputs": {"value": value}}
            g["2"]["inputs"][name] = [f"p{i}", 0]
    linked = [n for n, v in g["2"]["inputs"].items() if isinstance(v, list) and n != "model"]
    assert {"order", "interval", "warmup", "tolerance", "start_percent", "end_percent", "table"} <= set(linked)
    server.run(g)
    assert _calls(server.log_text())[-1] == 6       # steps 0,1,2,3,7,11 of 12, as with widget values

    g["2"]["inputs"]["mode"] = "table"
    g[g["2"]["inputs"]["table"][0]]["inputs"]["value"] = "FFxx"
    status, body = server.post("/prompt", {"prompt": g, "client_id": server.client_id})
    assert status == 200, body          # the table's value is not known at validation
    entry = server.wait(body["prompt_id"])
    msgs = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert msgs and "invalid characters" in msgs[0][1]["exception_message"], entry["status"]
