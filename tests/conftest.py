"""Shared fixtures. ComfyUI is real (devtools.runtime), never mocked."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Appended, not prepended: ComfyUI's top-level `nodes` module must win over this repo's `nodes/` package.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))


def pytest_configure(config):
    # Tiny models on a shared 2-core machine: one intra-op thread is both faster and less noisy.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI imported in-process on the CPU. Returns a namespace of the modules tests use."""
    from devtools import runtime

    path = runtime.activate(cpu=True)
    import types

    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models

    ns = types.SimpleNamespace(
        path=path,
        version=runtime.comfyui_version(path),
        sample=comfy.sample,
        samplers=comfy.samplers,
        model_patcher=comfy.model_patcher,
        patcher_extension=comfy.patcher_extension,
        model_management=comfy.model_management,
        supported_models=comfy.supported_models,
    )
    return ns


@pytest.fixture(scope="session")
def pack(comfy):
    """This repository imported as a custom-node package (as ComfyUI's loader does)."""
    from devtools.pack import load_pack

    return load_pack()


@pytest.fixture(scope="session")
def env(comfy, pack):
    """Tiny ComfyUI models (built once per session), the harness and this pack's node modules."""
    import types

    from devtools import harness, tiny_models
    from devtools.pack import load_nodes

    cases = {}

    def case(name, **overrides):
        ok, why = tiny_models.available(name)
        if not ok:
            pytest.skip(f"{name}: {why}")
        key = (name, tuple(sorted(overrides.items())))
        if key not in cases:
            cases[key] = tiny_models.build(name, seed=0, overrides=overrides or None)
        return cases[key]

    n = load_nodes()
    return types.SimpleNamespace(case=case, harness=harness, nodes=n, tm=tiny_models, comfy=comfy,
                                 wrappers=sys.modules[n.__name__ + ".integration.output_cache"],
                                 blocks=sys.modules[n.__name__ + ".integration.block_cache"])
