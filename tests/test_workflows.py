"""The example workflows in workflows/ against a real headless ComfyUI server.

For every workflow (UI format, as ComfyUI's "Save" writes it) and its API twin in workflows/api/:
- every node type exists in the server's /object_info (Note is a frontend-only node and is skipped);
- every widget value is valid for its input: INT/FLOAT within min/max (INT also on its step grid), STRING and
  BOOLEAN of the right type, combo values among the options. Exception: the loaders' file-name combos (and
  LoadImage's image) list the files in the server's models/input folders, which are empty here, so for them
  any value ending in a model/image file extension is accepted (the value itself cannot be checked);
- every link connects matching types (source output type == target input type, "*" matches anything), the
  UI's link bookkeeping is consistent, every required socket is connected, every node feeds an output;
- the API twin equals the UI graph converted here from /object_info's input order (widgets map onto
  widgets_values in order, skipping the frontend-only value after a seed (control_after_generate) and after
  LoadImage's image (upload); links become [source id, slot]);
- the server's own validator (POST /prompt) rejects the API twin for nothing but the missing model files;
- GET /workflow_templates lists the pack's workflows, and the files it serves are the committed ones.

The CogVideoX workflow needs core CogVideoX support (ComfyUI >= 0.21); on an older runtime the checks that
depend on it are skipped, with the reason.
"""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WF_DIR = REPO / "workflows"
PACK = "ab-cache"  # the pack's folder name in the test server's custom_nodes
NAMES = ["flux1_dev_t2i", "hunyuan_video_t2v", "ltxv_t2v", "ltxv_i2v", "wan21_t2v", "wan22_a14b_t2v",
         "cogvideox_5b_t2v"]
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # drawn by the frontend, never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FILE_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf",
                   ".png", ".jpg", ".jpeg", ".webp")
# What a workflow needs beyond the nodes every supported ComfyUI has: (node, input, option, what it is).
NEEDS = {
    "cogvideox_5b_t2v": ("CLIPLoader", "type", "cogvideox", "core CogVideoX support (ComfyUI >= 0.21)"),
}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server():
    from devtools.server import ComfyServer

    with ComfyServer({PACK: REPO}) as srv:
        srv.provide_input_image("example.png")   # LoadImage (ltxv_i2v) validates its file for real
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    info = server.get("/object_info")
    assert "ABCache" in info, f"the pack did not load into the server:\n{server.log_text()[-3000:]}"
    return info


@pytest.fixture(scope="module")
def comfyui_version(server):
    return server.get("/system_stats").get("system", {}).get("comfyui_version", "?")


def load(name: str, api: bool = False) -> dict:
    return json.loads((WF_DIR / ("api" if api else "") / f"{name}.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ /object_info
def all_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, required) in the node's input order; hidden inputs left out."""
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(name, info["input"][section][name], section == "required")
            for section in ("required", "optional") for name in order.get(section, [])]


def input_spec(object_info: dict, class_type: str, name: str) -> list | None:
    return {n: spec for n, spec, _ in all_inputs(object_info[class_type])}.get(name)


def type_of(spec: list) -> tuple[str, list | None, dict]:
    """(type, combo options or None, options dict) for both the list-style and the v3 COMBO-style spec."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(spec[0], list):
        return "COMBO", spec[0], opts
    if spec[0] == "COMBO":
        return "COMBO", list(opts.get("options", [])), opts
    return spec[0], None, opts


def is_widget(spec: list) -> bool:
    typ, _, opts = type_of(spec)
    return typ in WIDGET_TYPES and not opts.get("forceInput")


def ui_only_values(name: str, spec: list) -> int:
    """Values the frontend stores after this widget that are not inputs of the node."""
    typ, _, opts = type_of(spec)
    n = 0
    if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
        n += 1  # fixed / increment / decrement / randomize
    if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
        n += 1  # the upload button
    return n


def is_file_combo(name: str, spec: list) -> bool:
    return bool(type_of(spec)[2].get("image_upload")) or re.fullmatch(r"(unet|clip|vae|ckpt|lora)_name\d*", name)


def widget_values(node: dict, info: dict) -> list[tuple[str, object, list]]:
    """(input name, value, spec) for every widget of a UI node, read from widgets_values in input order."""
    values = list(node.get("widgets_values") or [])
    out, i = [], 0
    for name, spec, required in all_inputs(info):
        if not is_widget(spec):
            continue
        if i >= len(values):
            assert not required, f"node {node['id']} {node['type']}: no widget value for required {name!r}"
            continue  # an optional widget newer than the workflow: the frontend uses its default
        out.append((name, values[i], spec))
        i += 1 + ui_only_values(name, spec)
    assert i == len(values), (f"node {node['id']} {node['type']}: {len(values)} widget values, the node's "
                              f"widgets account for {i}: {values}")
    return out


def ui_to_api(ui: dict, object_info: dict) -> dict:
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):  # notes, muted, bypassed
            continue
        info = object_info[node["type"]]
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {name: value for name, value, _ in widget_values(node, info)}
        for name, _, _ in all_inputs(info):
            if name in linked:
                inputs[name] = [str(linked[name][1]), linked[name][2]]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def unsupported(name: str, object_info: dict, version: str) -> str | None:
    if name not in NEEDS:
        return None
    node, inp, option, what = NEEDS[name]
    spec = input_spec(object_info, node, inp) if node in object_info else None
    if spec and option in (type_of(spec)[1] or []):
        return None
    return f"{name} needs {what}; this ComfyUI {version} has no {node}.{inp} option {option!r}"


# ------------------------------------------------------------------------------------------------- tests
def test_build_script_output_is_committed():
    """workflows/build.py is the single source: the committed JSON files are exactly what it writes."""
    from workflows import build

    files = build.render()
    assert sorted(p.stem for p in files if p.parent == WF_DIR) == sorted(NAMES)
    assert sorted(p.name for p in WF_DIR.glob("*.json")) == sorted(f"{n}.json" for n in NAMES)
    assert sorted(p.name for p in (WF_DIR / "api").glob("*.json")) == sorted(f"{n}.json" for n in NAMES)
    stale = [str(p.relative_to(REPO)) for p, text in files.items() if p.read_text(encoding="utf-8") != text]
    assert not stale, f"run `python -m workflows.build`: {stale}"


def test_workflow_shapes():
    """UI format as "Save" writes it; every workflow uses AB-Cache, Wan 2.2 caches each expert separately."""
    kinds = set()
    for name in NAMES:
        ui = load(name)
        assert {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"} <= set(ui)
        assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
        assert ui["last_link_id"] == max(l[0] for l in ui["links"])
        for n in ui["nodes"]:  # the fields the frontend's workflow schema (0.4) requires, with their types
            assert isinstance(n["id"], int) and isinstance(n["type"], str), n
            assert all(len(n[k]) == 2 and all(isinstance(x, (int, float)) for x in n[k]) for k in ("pos", "size"))
            assert isinstance(n["flags"], dict) and isinstance(n["properties"], dict), n["id"]
            assert isinstance(n["order"], int) and n["mode"] == 0 and isinstance(n["widgets_values"], list)
            for m in n["properties"].get("models", []):  # the frontend offers these downloads
                assert set(m) == {"name", "url", "directory"} and m["url"].startswith("https://"), m
                assert m["name"] in n["widgets_values"] and m["url"].endswith("/" + m["name"]), m
        assert sorted(n["order"] for n in ui["nodes"]) == list(range(len(ui["nodes"])))
        types = [n["type"] for n in ui["nodes"]]
        assert "Note" in types, name
        assert any(t in ("ABCache", "ABCacheAdvanced") for t in types), name
        kinds |= set(types)
    assert {"ABCache", "ABCacheAdvanced"} <= kinds
    wan22 = load("wan22_a14b_t2v", api=True)
    samplers = [k for k, v in wan22.items() if v["class_type"] == "KSamplerAdvanced"]
    assert len(samplers) == 2
    caches = [wan22[wan22[k]["inputs"]["model"][0]] for k in samplers]
    assert all(c["class_type"] in ("ABCache", "ABCacheAdvanced") for c in caches)
    loaders = set()
    for cache in caches:  # cache <- ModelSamplingSD3 <- UNETLoader: one expert each
        node = cache
        while node["class_type"] != "UNETLoader":
            node = wan22[node["inputs"]["model"][0]]
        loaders.add(node["inputs"]["unet_name"])
    assert len(loaders) == 2 and all("high_noise" in l or "low_noise" in l for l in loaders), loaders


def test_no_node_covers_another():
    """Rendered boxes (the 30 px title bar drawn above pos included) never overlap, so no widget is hidden."""
    for name in NAMES:
        boxes = [(n["id"], n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
                 for n in load(name)["nodes"]]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                overlap = a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
                assert not overlap, f"{name}: nodes {a[0]} and {b[0]} overlap"


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_node_types_exist(object_info, comfyui_version, name):
    missing = [n["type"] for n in load(name)["nodes"]
               if n["type"] not in object_info and n["type"] not in FRONTEND_ONLY]
    reason = unsupported(name, object_info, comfyui_version)
    if missing and reason:
        pytest.skip(f"{reason} (missing nodes: {missing})")
    assert not missing, f"{name}: node types unknown to this ComfyUI: {missing}"
    for n in load(name)["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            assert isinstance(n["widgets_values"][0], str) and n["widgets_values"][0].strip()


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_widget_values_are_valid(object_info, comfyui_version, name):
    reason = unsupported(name, object_info, comfyui_version)
    if reason:
        pytest.skip(reason)
    problems, by_extension = [], []
    for node in load(name)["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        for inp, value, spec in widget_values(node, object_info[node["type"]]):
            typ, options, opts = type_of(spec)
            where = f"node {node['id']} {node['type']}.{inp} = {value!r}"
            if typ == "COMBO":
                if value in options:
                    continue
                if is_file_combo(inp, spec) and isinstance(value, str) and value.lower().endswith(FILE_EXTENSIONS):
                    by_extension.append(value)  # the server's folder is empty: only the extension is checkable
                    continue
                problems.append(f"{where}: not among {options[:12]}")
            elif typ in ("INT", "FLOAT"):
                ok_type = isinstance(value, int) if typ == "INT" else isinstance(value, (int, float))
                if isinstance(value, bool) or not ok_type:
                    problems.append(f"{where}: not a {typ}")
                elif not opts.get("min", value) <= value <= opts.get("max", value):
                    problems.append(f"{where}: outside [{opts.get('min')}, {opts.get('max')}]")
                elif typ == "INT" and opts.get("step", 1) > 1 and (value - opts.get("min", 0)) % opts["step"]:
                    problems.append(f"{where}: not on the step grid min {opts.get('min', 0)} + k * {opts['step']}")
            elif typ == "STRING" and not isinstance(value, str):
                problems.append(f"{where}: not a string")
            elif typ == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}: not a boolean")
    assert not problems, "\n".join(problems)
    assert by_extension, "every workflow loads model files"


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_links_connect_matching_types(object_info, comfyui_version, name):
    ui = load(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    if any(n["type"] not in object_info for n in nodes.values() if n["type"] not in FRONTEND_ONLY):
        pytest.skip(unsupported(name, object_info, comfyui_version) or "unknown node types (see test_node_types_exist)")
    problems = []
    link_ids = set()
    for link_id, src, src_slot, dst, dst_slot, link_type in ui["links"]:
        link_ids.add(link_id)
        s, d = nodes[src], nodes[dst]
        out_type = object_info[s["type"]]["output"][src_slot]
        ui_input = d["inputs"][dst_slot]
        in_type = type_of(input_spec(object_info, d["type"], ui_input["name"]))[0]
        where = f"link {link_id}: {s['type']}[{src_slot}] -> {d['type']}.{ui_input['name']}"
        if not (out_type == in_type or "*" in (out_type, in_type)):
            problems.append(f"{where}: {out_type} into {in_type}")
        if link_type not in (out_type, "*") or ui_input["type"] != in_type:
            problems.append(f"{where}: recorded types {link_type}/{ui_input['type']}, server says {out_type}/{in_type}")
        if ui_input["link"] != link_id or link_id not in (s["outputs"][src_slot]["links"] or []):
            problems.append(f"{where}: not recorded on both ends")
    for node in nodes.values():
        if node["type"] in FRONTEND_ONLY:
            continue
        info = object_info[node["type"]]
        for slot, out in enumerate(node.get("outputs", [])):
            if out["type"] != info["output"][slot]:
                problems.append(f"node {node['id']} {node['type']} output {slot}: {out['type']} != {info['output'][slot]}")
            problems += [f"node {node['id']}: output link {l} unknown" for l in out.get("links") or [] if l not in link_ids]
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        problems += [f"node {node['id']}: input link {i['link']} unknown" for i in node.get("inputs", [])
                     if i.get("link") is not None and i["link"] not in link_ids]
        for inp, spec, required in all_inputs(info):
            if required and not is_widget(spec) and inp not in linked:
                problems.append(f"node {node['id']} {node['type']}: required input {inp!r} is not connected")
    assert not problems, "\n".join(problems)


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_api_twin_equals_the_ui_graph(object_info, comfyui_version, name):
    ui = load(name)
    if any(n["type"] not in object_info for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY):
        pytest.skip(unsupported(name, object_info, comfyui_version) or "unknown node types (see test_node_types_exist)")
    api = ui_to_api(ui, object_info)
    assert api == load(name, api=True)
    # every node feeds an output node (nothing dangling that the server would silently ignore)
    needed, todo = set(), [k for k, v in api.items() if object_info[v["class_type"]].get("output_node")]
    while todo:
        k = todo.pop()
        if k not in needed:
            needed.add(k)
            todo += [v[0] for v in api[k]["inputs"].values() if isinstance(v, list)]
    assert needed == set(api), f"nodes that feed no output: {sorted(set(api) - needed)}"


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_server_rejects_api_twin_only_for_missing_model_files(server, object_info, comfyui_version, name):
    """ComfyUI's own validation of the whole prompt. The models folders are empty, so the loaders' file
    names must be the only complaint (which also means nothing gets queued)."""
    reason = unsupported(name, object_info, comfyui_version)
    if reason:
        pytest.skip(reason)
    api = load(name, api=True)
    file_inputs = {(k, n) for k, v in api.items() for n, spec, _ in all_inputs(object_info[v["class_type"]])
                   if is_file_combo(n, spec) and n in v["inputs"]}
    loaders = {(k, n) for k, n in file_inputs if api[k]["class_type"] != "LoadImage"}
    present = [api[k]["inputs"][n] for k, n in loaders
               if api[k]["inputs"][n] in type_of(input_spec(object_info, api[k]["class_type"], n))[1]]
    if present:  # e.g. an extra_model_paths.yaml in the ComfyUI checkout: posting would run the workflow
        pytest.skip(f"this server has model files {present}; not queueing a real {name} run")
    status, body = server.post("/prompt", {"prompt": api, "client_id": server.client_id})
    assert status == 400, f"expected a rejection for the missing model files, got {status}: {body}"
    errors = [(node_id, e) for node_id, ne in body["node_errors"].items() for e in ne["errors"]]
    assert errors, body
    other = [(k, e) for k, e in errors
             if not (e["type"] == "value_not_in_list" and (k, e["extra_info"]["input_name"]) in file_inputs)]
    assert not other, json.dumps(other, indent=1)[:4000]
    complained = {(k, e["extra_info"]["input_name"]) for k, e in errors}
    assert complained == loaders, f"expected one complaint per model file: {sorted(loaders ^ complained)}"


@pytest.mark.server
def test_server_lists_the_workflows(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed.get(PACK, [])) == sorted(NAMES), listed
    for name in NAMES:  # served as-is for the template browser
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/{PACK}/{name}.json", timeout=30) as r:
            assert json.load(r) == load(name)
