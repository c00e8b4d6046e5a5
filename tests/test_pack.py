"""Packaging and loading: the pack installs and imports the way ComfyUI and its registry expect."""
from __future__ import annotations

import ast
import asyncio
import logging
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_registry_metadata():
    meta = _pyproject()
    name = meta["project"]["name"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,99}", name) and "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["project"]["version"])
    comfy = meta["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert key in comfy, key
    assert (REPO / meta["project"]["license"]["file"]).is_file()


def test_requirements_match_project_dependencies():
    reqs = [l.split("#")[0].strip() for l in (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(r for r in reqs if r) == sorted(_pyproject()["project"]["dependencies"])


def _names(lines) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def test_requirements_list_only_what_comfyui_lacks(comfy):
    """A ComfyUI user's installer runs `pip install -r requirements.txt`: it must never touch torch (or anything
    ComfyUI pins itself)."""
    ours = _names((REPO / "requirements.txt").read_text().splitlines())
    theirs = _names((comfy.path / "requirements.txt").read_text().splitlines())
    assert ours, "requirements.txt lists the pack's needs (matplotlib for the Report node)"
    assert not ours & {"torch", "torchvision", "torchaudio", "xformers", "triton"}, ours
    assert not ours & theirs, f"already required by ComfyUI {comfy.version}: {sorted(ours & theirs)}"


def test_entry_point_is_only_an_entry_point():
    tree = ast.parse((REPO / "__init__.py").read_text())
    top = [type(n).__name__ for n in tree.body if not isinstance(n, ast.Expr)]
    assert top == ["AsyncFunctionDef"], top


def test_core_never_imports_comfy():
    for f in (REPO / "abcache_core").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for n in names:
                assert not n.split(".")[0] in ("comfy", "comfy_api", "nodes", "folder_paths"), f"{f}: imports {n}"


def test_comfyui_loader_registers_the_pack(comfy, caplog):
    """ComfyUI's own custom-node loader imports the repository and registers both nodes.

    An exception at import time makes load_custom_node return False, which fails this test."""
    import nodes as comfy_nodes

    assert Path(comfy_nodes.__file__).parent == comfy.path, "ComfyUI's nodes module must not be shadowed"
    with caplog.at_level(logging.WARNING):
        ok = asyncio.run(comfy_nodes.load_custom_node(str(REPO)))
    assert ok is True
    for node_id in ("ABCache", "ABCacheAdvanced"):
        assert node_id in comfy_nodes.NODE_CLASS_MAPPINGS
    assert not [r for r in caplog.records if "pyproject" in r.getMessage()], "pyproject.toml must parse"


def test_every_input_and_output_has_a_tooltip(pack):
    from devtools.pack import load_nodes

    n = load_nodes()
    node_list = asyncio.run(n.ABCacheExtension().get_node_list())
    assert {c.define_schema().node_id for c in node_list} >= {"ABCache", "ABCacheAdvanced", "ABCacheReport"}
    for node in node_list:
        schema = node.define_schema()
        for inp in schema.inputs:
            assert inp.tooltip and len(inp.tooltip) > 10, (schema.node_id, inp.id)
        for out in schema.outputs:
            assert out.tooltip, (schema.node_id, out)
        assert schema.description
