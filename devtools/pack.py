"""Import this repository as a ComfyUI custom-node package, the way ComfyUI's loader does.

ComfyUI imports ``custom_nodes/<dir>/__init__.py`` as a package named after the directory, so the pack
uses relative imports (``from .nodes import ...``). Tests, benchmarks and the demo load it the same way,
under the fixed name ``ab_cache_pack``, after ComfyUI itself is importable (devtools.runtime.activate).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_NAME = "ab_cache_pack"


def load_pack(name: str = PACK_NAME):
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def load_nodes(name: str = PACK_NAME):
    """The pack's ``nodes`` subpackage (imports comfy)."""
    load_pack(name)
    return importlib.import_module(f"{name}.nodes")
