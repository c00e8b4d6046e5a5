"""The example workflows in the real ComfyUI frontend, in a real (headless) Chromium.

The headless server (devtools/server.py) serves the frontend of the installed comfyui-frontend-package; Debian's
Chromium (/usr/bin/chromium, never a downloaded browser) is driven by Playwright. For every workflows/*.json,
in a fresh browser context (fresh localStorage, so no workflow of an earlier test is restored):
- the app starts (``window.app`` with its graph, the #graph-canvas and the start-up default graph loaded);
- the workflow is fetched from the server's template route (/api/workflow_templates/ab-cache/<name>.json)
  and loaded with the app's own loader, ``app.loadGraphData`` (what opening a file does);
- no missing-nodes dialog (dialog key 'global-missing-nodes'), every node of app.graph has a registered type
  and every non-frontend-only node its definition from /object_info; no warning or error toast (the
  workflow-schema validation and link fixer report through toasts); no uncaught page error and no console
  error beyond the known harmless ones (blocked internet requests, 404s for optional user files);
- the missing-models dialog lists exactly the workflow's embedded models that the server does not have
  (all of them: the test server's model folders are empty); it is expected, checked and closed with its
  close button;
- widget values: what the frontend serializes again equals the file (nothing shifted or reset), INT/FLOAT
  widgets lie within their min/max and combo values among their options (model-file combos only by file
  extension, the folders being empty);
- the AB-Cache nodes (ABCache / ABCacheAdvanced): widgets with the /object_info names in order, the file's
  values, and the tooltips the frontend holds for them (node definition) equal to /object_info's, none
  empty; a real mouse hover over the 'order' widget shows the frontend's tooltip element with that text;
- screenshots: artifacts/browser/<name>.png (the whole graph, dialogs closed) and
  artifacts/browser/<name>-order-tooltip.png (the hover).

Without /usr/bin/chromium (or the playwright package) the tests are skipped, unless ABCACHE_REQUIRE_BROWSER=1
(set by .ci/run, which installs Chromium) makes that a failure.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WF_DIR = REPO / "workflows"
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
NAMES = sorted(p.stem for p in WF_DIR.glob("*.json"))
AB_TYPES = ("ABCache", "ABCacheAdvanced")
# The flags this closed network needs (no background requests to Google's hosts); Playwright itself adds
# --headless and a fresh temporary --user-data-dir per launch.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Server-side user settings written before the first page load. TutorialCompleted: no "new user" flow (that
# opens the template browser over the canvas). The three checks stay on explicitly, whatever the defaults.
# Classic (canvas) nodes, whose widget tooltips are the frontend's .node-tooltip element. The minimap would
# cover part of the graph in the screenshots.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Validation.Workflows": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": True,
    "Comfy.EnableTooltips": True,
    "Comfy.VueNodes.Enabled": False,
    "Comfy.Minimap.Visible": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # draw text at every zoom (else "zoom to fit" draws blank boxes)
}
# Before any page script: the "Introducing Nodes 2.0" banner (localStorage flag of TryVueNodeBanner.vue).
INIT_SCRIPT = "try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}"
# Console errors that are not about the workflow: requests to the internet (blocked by the frontend's own CSP;
def _dialog_era() -> bool:
    """The frontend bundled with ComfyUI 0.3.x reports missing models in a dialog (checked strictly there);
    newer frontends report them elsewhere, so there the dialog is checked only when it appears."""
    from devtools import runtime

    return runtime.comfyui_version().startswith("0.3.")


# the missing-models dialog asks huggingface.co for file sizes, the node badge api.comfy.org), and 404s for
# optional user files (user.css, comfy.templates.json, the empty workflows folder).
BENIGN_CONSOLE = re.compile(
    r"violates the following Content Security Policy|Refused to connect|Failed to fetch|"
    r"Failed to load resource: the server responded with a status of 404")

VIEWPORT = {"width": 1920, "height": 1200}

pytestmark = pytest.mark.server


def _load_workflow_helpers():
    """tests/test_workflows.py's helpers (skip logic for CogVideoX, /object_info parsing), imported by path."""
    path = REPO / "tests" / "test_workflows.py"
    spec = importlib.util.spec_from_file_location("abcache_test_workflows_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


wf = _load_workflow_helpers()


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return (f"{CHROMIUM} not found: install Debian's Chromium (`apt-get install -y chromium`; .ci/run does) "
                "to run the browser tests")
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (`pip install -r requirements-dev.txt`)"
    return None


@pytest.fixture(scope="module")
def browser_ready():
    reason = _browser_missing()
    if reason:
        if os.environ.get("ABCACHE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ABCACHE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def server(browser_ready):
    from devtools.server import ComfyServer

    with ComfyServer({wf.PACK: REPO}) as srv:
        srv.provide_input_image("example.png")   # LoadImage (ltxv_i2v) validates its file for real
        status, body = srv.post("/settings", SETTINGS)
        assert status == 200, f"POST /settings: {status} {body}"
        yield srv


@pytest.fixture(scope="module")
def object_info(server):
    info = server.get("/object_info")
    assert all(t in info for t in AB_TYPES), f"the pack did not load into the server:\n{server.log_text()[-3000:]}"
    return info


@pytest.fixture(scope="module")
def comfyui_version(server):
    return server.get("/system_stats").get("system", {}).get("comfyui_version", "?")


@pytest.fixture(scope="module")
def browser(browser_ready):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# ------------------------------------------------------------------------------------------ page scripts
# The frontend's pinia stores (dialog, toast, workflow) are reached through the Vue app on #vue-app.
JS_PINIA = "document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia"

JS_READY = f"""() => {{
  if (!(window.app && app.graph && app.canvas && document.getElementById('graph-canvas'))) return false
  const pinia = {JS_PINIA}
  // the start-up workflow (the default graph) is loaded: loading ours earlier would be overwritten by it
  return !!(pinia._s.get('workflow')?.activeWorkflow && app.graph.nodes.length > 0)
}}"""

JS_LOAD = f"""async (name) => {{
  const pinia = {JS_PINIA}
  const toasts = []
  pinia._s.get('toast').$onAction(({{name, args}}) => {{
    if (name === 'add') toasts.push(JSON.parse(JSON.stringify(args[0])))
    if (name === 'addAlert') toasts.push({{severity: 'warn', summary: 'Alert', detail: String(args[0])}})
  }})
  const res = await fetch('api/workflow_templates/ab-cache/' + name + '.json')
  if (!res.ok) throw new Error('template fetch ' + res.status)
  const workflow = await res.json()
  await app.loadGraphData(workflow, true, true, name)
  await new Promise(r => setTimeout(r, 300))
  const dialogs = pinia._s.get('dialog').dialogStack.map(d => d.key)
  const serialized = app.graph.serialize()
  const nodes = app.graph.nodes.map(n => {{
    const def = n.constructor.nodeData
    return {{
      id: n.id, type: n.type,
      registered: n.type in LiteGraph.registered_node_types,
      has_def: !!def,
      description: def?.description ?? null,
      output_tooltips: (def?.outputs ?? []).map(o => o.tooltip ?? null),
      widgets: (n.widgets ?? []).map(w => ({{
        name: w.name, type: w.type, value: w.value,
        min: w.options?.min ?? null, max: w.options?.max ?? null,
        values: Array.isArray(w.options?.values) ? w.options.values : null,
        def_tooltip: def?.inputs?.[w.name]?.tooltip ?? null,
      }})),
    }}
  }})
  const widgets_values = Object.fromEntries(serialized.nodes.map(n => [n.id, n.widgets_values ?? []]))
  return {{toasts, dialogs, nodes, widgets_values}}
}}"""

# Screen position (CSS pixels) of the middle of a widget, after centring the canvas on its node at zoom 1.
JS_WIDGET_POS = """([id, wname]) => {
  const node = app.graph.getNodeById(id)
  app.canvas.ds.scale = 1
  app.canvas.centerOnNode(node)
  app.canvas.setDirty(true, true)
  app.canvas.draw(true, true)
  const w = node.widgets.find(w => w.name === wname)
  const h = w.computedHeight || LiteGraph.NODE_WIDGET_HEIGHT
  const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + w.y + h / 2])
  const r = app.canvas.canvas.getBoundingClientRect()
  return [r.left + cx, r.top + cy]
}"""

# The frontend's own "Zoom to fit" command (nothing is selected: fits all nodes), then two frames drawn.
# (The command animates the view for 350 ms: wait until the view has stopped moving.)
JS_FIT = f"""async () => {{
  await {JS_PINIA}._s.get('command').execute('Comfy.Canvas.FitView')
  const frame = () => new Promise(r => requestAnimationFrame(r))
  const view = () => JSON.stringify([app.canvas.ds.scale, ...app.canvas.ds.offset])
  await new Promise(r => setTimeout(r, 400))
  for (let i = 0, last = null; i < 100; i++) {{
    const now = view()
    if (now === last) break
    last = now
    await frame(); await frame()
  }}
  return app.canvas.ds.scale
}}"""


# ------------------------------------------------------------------------------------------------- helpers
def _close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _expected_missing_models(ui: dict, object_info: dict) -> set[str]:
    """The embedded models (node properties.models) whose file the server does not list in the node's combos."""
    out = set()
    for node in ui["nodes"]:
        info = object_info.get(node["type"])
        for m in node.get("properties", {}).get("models", []):
            options = set()
            if info:
                for _, spec, _ in wf.all_inputs(info):
                    options |= set(wf.type_of(spec)[1] or [])
            if m["name"] not in options:
                out.add(m["name"])
    return out


def _widget_problems(node: dict, ui_node: dict, serialized: list, object_info: dict) -> list[str]:
    where = f"node {node['id']} {node['type']}"
    problems = []
    if len(serialized) != len(ui_node["widgets_values"]) or not all(
            _close(a, b) for a, b in zip(serialized, ui_node["widgets_values"])):
        problems.append(f"{where}: the frontend serializes widgets_values {serialized}, the file has "
                        f"{ui_node['widgets_values']}")
    specs = {n: s for n, s, _ in wf.all_inputs(object_info[node["type"]])} if node["type"] in object_info else {}
    for w in node["widgets"]:
        v, name = w["value"], w["name"]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (w["min"] is not None and v < w["min"]) or (w["max"] is not None and v > w["max"]):
                problems.append(f"{where}.{name} = {v}: outside the widget's [{w['min']}, {w['max']}]")
        if w["type"] == "combo" and w["values"] is not None and v not in w["values"]:
            spec = specs.get(name)
            if not (spec and wf.is_file_combo(name, spec) and isinstance(v, str)
                    and v.lower().endswith(wf.FILE_EXTENSIONS)):
                problems.append(f"{where}.{name} = {v!r}: not among the widget's options {w['values'][:12]}")
    return problems


def _ab_cache_problems(node: dict, ui_node: dict, object_info: dict) -> list[str]:
    where = f"node {node['id']} {node['type']}"
    info = object_info[node["type"]]
    expected = [(n, s) for n, s, _ in wf.all_inputs(info) if wf.is_widget(s)]
    problems = []
    names = [w["name"] for w in node["widgets"]]
    if names != [n for n, _ in expected]:
        return [f"{where}: widgets {names}, /object_info says {[n for n, _ in expected]}"]
    for w, value in zip(node["widgets"], ui_node["widgets_values"]):
        if not _close(w["value"], value):
            problems.append(f"{where}.{w['name']}: shows {w['value']!r}, the file has {value!r}")
    for w, (name, spec) in zip(node["widgets"], expected):
        want = wf.type_of(spec)[2].get("tooltip")
        if not want or not w["def_tooltip"]:
            problems.append(f"{where}.{name}: no tooltip (frontend {w['def_tooltip']!r}, /object_info {want!r})")
        elif w["def_tooltip"] != want:
            problems.append(f"{where}.{name}: frontend tooltip {w['def_tooltip']!r} != /object_info {want!r}")
    if not all(node["output_tooltips"]):
        problems.append(f"{where}: output without tooltip: {node['output_tooltips']}")
    return problems


# --------------------------------------------------------------------------------------------------- test
@pytest.mark.parametrize("name", NAMES)
def test_workflow_in_real_frontend(server, object_info, comfyui_version, browser, name):
    reason = wf.unsupported(name, object_info, comfyui_version)
    if reason:
        pytest.skip(reason)
    ui = wf.load(name)
    ui_nodes = {str(n["id"]): n for n in ui["nodes"]}   # newer frontends keep node ids as strings
    expected_missing_models = _expected_missing_models(ui, object_info)

    (ARTIFACTS / f"{name}-failure.png").unlink(missing_ok=True)  # from an earlier failed run
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    page_errors, console_errors = [], []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    try:
        t0 = time.time()
        page.goto(server.url, wait_until="load", timeout=120_000)
        page.wait_for_function(JS_READY, timeout=120_000, polling=200)
        startup = time.time() - t0
        start_errors = len(page_errors), len(console_errors)  # start-up noise is not the workflow's doing
        result = page.evaluate(JS_LOAD, name)

        # --- missing nodes: no dialog, every node type registered, every backend node has its definition
        assert "global-missing-nodes" not in result["dialogs"], f"{name}: missing-nodes dialog: {result['dialogs']}"
        unregistered = [(n["id"], n["type"]) for n in result["nodes"] if not n["registered"]]
        assert not unregistered, f"{name}: node types unknown to the frontend: {unregistered}"
        no_def = [(n["id"], n["type"]) for n in result["nodes"]
                  if not n["has_def"] and n["type"] not in wf.FRONTEND_ONLY]
        assert not no_def, f"{name}: nodes without a node definition from /object_info: {no_def}"
        # newer frontends keep node ids as strings
        assert sorted(str(n["id"]) for n in result["nodes"]) == sorted(ui_nodes), f"{name}: nodes lost on load"

        # --- no warnings: toasts (schema validation, link fixer, ...), other dialogs
        bad_toasts = [t for t in result["toasts"] if t.get("severity") in ("warn", "error")]
        assert not bad_toasts, f"{name}: warnings shown while loading: {json.dumps(bad_toasts, indent=1)[:3000]}"
        unexpected = [d for d in result["dialogs"] if d != "global-missing-models-warning"]
        assert not unexpected, f"{name}: unexpected dialogs: {unexpected}"

        # --- missing models: expected (the server's model folders are empty); check its list, then close it
        if expected_missing_models and ("global-missing-models-warning" in result["dialogs"] or _dialog_era()):
            assert "global-missing-models-warning" in result["dialogs"], (
                f"{name}: no missing-models dialog although the server lacks {sorted(expected_missing_models)}")
            dialog = page.locator(".p-dialog").filter(has_text=re.compile("Missing Models", re.I))
            dialog.wait_for(state="visible", timeout=10_000)
            text = dialog.inner_text()
            listed = set(re.findall(r"[\w.\-]+\.(?:safetensors|sft|ckpt|pt|pth|bin|gguf)", text))
            assert listed == expected_missing_models, (
                f"{name}: missing-models dialog lists {sorted(listed)}, expected {sorted(expected_missing_models)}")
            dialog.locator(".p-dialog-close-button").click()
            dialog.wait_for(state="detached", timeout=10_000)
        elif not expected_missing_models:
            assert "global-missing-models-warning" not in result["dialogs"], f"{name}: missing-models dialog"
        assert page.evaluate(f"{JS_PINIA}._s.get('dialog').dialogStack.length") == 0, f"{name}: a dialog stays open"

        # --- widget values as the frontend holds them
        problems = []
        for node in result["nodes"]:
            if node["type"] in wf.FRONTEND_ONLY:
                continue
            problems += _widget_problems(node, ui_nodes[str(node["id"])], result["widgets_values"][str(node["id"])],
                                         object_info)
        assert not problems, f"{name}: invalid widget values in the frontend:\n" + "\n".join(problems)

        # --- the AB-Cache nodes: widgets, values, tooltips
        ab_nodes = [n for n in result["nodes"] if n["type"] in AB_TYPES]
        assert ab_nodes, f"{name}: no AB-Cache node in the loaded graph"
        problems = [p for n in ab_nodes for p in _ab_cache_problems(n, ui_nodes[str(n["id"])], object_info)]
        assert not problems, f"{name}: AB-Cache widgets:\n" + "\n".join(problems)

        # --- screenshot of the whole graph
        page.evaluate(JS_FIT)
        page.wait_for_timeout(200)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

        # --- a real hover on the first AB-Cache node's 'order' widget shows its tooltip
        target = ab_nodes[0]
        want = wf.type_of(wf.input_spec(object_info, target["type"], "order"))[2]["tooltip"]
        x, y = page.evaluate(JS_WIDGET_POS, [target["id"], "order"])
        page.wait_for_timeout(100)
        page.mouse.move(x - 40, y + 3)
        page.mouse.move(x, y, steps=4)
        tip = page.locator(".node-tooltip")
        tip.wait_for(state="visible", timeout=10_000)
        shown = tip.inner_text()
        page.screenshot(path=str(ARTIFACTS / f"{name}-order-tooltip.png"))
        assert " ".join(shown.split()) == " ".join(want.split()), f"{name}: hover tooltip {shown!r}, expected {want!r}"

        # --- nothing broke while loading
        errors = page_errors[start_errors[0]:]
        assert not errors, f"{name}: uncaught page errors: {errors}"
        console = [e for e in console_errors[start_errors[1]:] if not BENIGN_CONSOLE.search(e)]
        assert not console, f"{name}: console errors while loading: {console}"
        print(f"{name}: frontend ready in {startup:.1f}s")
    except Exception:
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"))
        except Exception:
            pass
        raise
    finally:
        context.close()
