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
    log = server.log_text()
    ours = [l for l in log.splitlines() if ("IMPORT FAILED" in l or "Cannot import" in l)
            and ("ab-cache" in l or "ab_test_nodes" in l)]
    assert not ours, log[-3000:]
    assert re.search(r"\d+\.\d+ seconds: \S*custom_nodes/ab-cache\s*$", log, re.M), "pack missing from import times"
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
