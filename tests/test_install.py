"""The pack as the ecosystem's own tools see it: `comfy node validate` and `comfy node pack` (comfy-cli from PyPI,
offline), then the packed archive, a plain git clone and ComfyUI-Manager's own CLI install (from a local git URL),
each installed into a fresh ``custom_nodes/``, loaded by a real headless ComfyUI server and run in a graph."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "helper_pack" / "ab_test_nodes"
COMFY_CLI = [sys.executable, "-m", "comfy_cli", "--skip-prompt", "--no-enable-telemetry"]

pytestmark = pytest.mark.server


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A git repository holding what a commit of this working tree would hold (tracked and new, not ignored
    files), so the tools see the working tree a developer is testing."""
    dst = tmp_path_factory.mktemp("checkout") / "ab-cache"
    dst.mkdir()
    files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    _git("init", "-q", cwd=dst)
    _git("add", "-A", cwd=dst)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot", cwd=dst)
    return dst


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    pytest.importorskip("comfy_cli", reason="comfy-cli is in requirements-dev.txt")
    return subprocess.run([*COMFY_CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_comfy_node_validate(checkout):
    r = _cli("node", "validate", cwd=checkout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation checks passed" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.fixture(scope="module")
def packed(checkout, tmp_path_factory) -> Path:
    r = _cli("node", "pack", cwd=checkout)
    assert r.returncode == 0, r.stdout + r.stderr
    archive = checkout / "node.zip"
    assert archive.is_file(), r.stdout
    dst = tmp_path_factory.mktemp("registry") / "ab-cache"
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        z.extractall(dst)
    # the registry archive holds the pack and its docs, not the development tree (.comfyignore)
    assert {"__init__.py", "pyproject.toml", "requirements.txt", "nodes/ab_nodes.py", "abcache_core/params.py",
            "workflows/flux1_dev_t2i.json", "README.md", "LICENSE"} <= set(names), names
    assert not [n for n in names if n.split("/")[0] in ("tests", "devtools", "benchmarks", ".ci")], names
    return dst


@pytest.fixture(scope="module")
def cloned(checkout, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("clone") / "ab-cache"
    _git("clone", "-q", str(checkout), str(dst), cwd=dst.parent)
    return dst


@pytest.fixture(scope="module")
def manager_installed(checkout, comfy, tmp_path_factory) -> Path:
    """ComfyUI-Manager's own CLI (cm-cli, PyPI comfyui-manager) installs the pack from a git URL, as a user's
    Manager does; a file://localhost URL keeps it offline. It writes into the custom_nodes of the ComfyUI at
    COMFYUI_PATH: a copy of the runtime's tree (without its model folders)."""
    pytest.importorskip("cm_cli", reason="comfyui-manager is in requirements-dev.txt")
    root = tmp_path_factory.mktemp("manager") / "ComfyUI"
    shutil.copytree(comfy.path, root, ignore=shutil.ignore_patterns("models", "custom_nodes", "__pycache__",
                                                                  "output", "input", "temp", "user"))
    (root / "custom_nodes").mkdir()
    env = {**os.environ, "COMFYUI_PATH": str(root)}
    r = subprocess.run([sys.executable, "-m", "cm_cli", "install", f"file://localhost{checkout}", "--no-deps"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "Installation was successful" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    dst = root / "custom_nodes" / checkout.name
    assert (dst / "__init__.py").is_file() and (dst / "nodes" / "ab_nodes.py").is_file()
    return dst


def _graph() -> dict:
    fam = "flux_dev"
    return {
        "1": {"class_type": "ABTest_TinyModel", "inputs": {"family": fam, "seed": 0}},
        "2": {"class_type": "ABCache", "inputs": {"model": ["1", 0], "order": 2, "interval": 4, "warmup": 3}},
        "3": {"class_type": "ABTest_CountCalls", "inputs": {"model": ["2", 0]}},
        "4": {"class_type": "ABTest_RandomConditioning", "inputs": {"family": fam, "seed": 1}},
        "5": {"class_type": "ABTest_RandomConditioning", "inputs": {"family": fam, "seed": 2}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["1", 1], "seed": 0,
            "steps": 12, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "installed"}},
    }


@pytest.mark.parametrize("how", ["packed", "cloned", "manager_installed"])
def test_installed_pack_loads_and_runs_a_graph(comfy, how, request):
    """Installed the way the registry (archive) or a user (git clone) installs it, the pack loads without
    import errors in a fresh ComfyUI server, shows its nodes, and a graph runs with the planned model calls."""
    from devtools.server import ComfyServer

    pack_dir = request.getfixturevalue(how)
    with ComfyServer({"ab-cache": pack_dir, "ab_test_nodes": HELPER}, extra_args=["--cache-none"]) as srv:
        assert not srv.pack_load_problems(), srv.log_text()[-3000:]
        info = srv.get("/object_info")
        assert {"ABCache", "ABCacheAdvanced", "ABCacheReport", "ABCacheFluxBlocks"} <= set(info)
        srv.run(_graph())
        log = srv.log_text()
    assert re.findall(r"ABTest_CountCalls: forward calls = (\d+)", log)[-1] == "6"   # steps 0,1,2,3,7,11
    assert "AB-Cache: computed 6/12 model calls" in log
