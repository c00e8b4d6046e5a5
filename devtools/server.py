"""A headless ComfyUI server for end-to-end runs, and a small HTTP client for it (stdlib only).

    with ComfyServer(packs={"ab-cache": REPO, "ab_test_nodes": HELPER}) as srv:
        entry = srv.run(graph)             # POST /prompt, poll /history/{id}; raises on error
        print(srv.log_text())

The server runs ComfyUI's own ``main.py --cpu`` on 127.0.0.1 with a temporary base directory. Only the
given packs are whitelisted (they are symlinked into ``<base>/custom_nodes``). It is stopped by its PID.
"""
from __future__ import annotations

import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

from . import runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


class ComfyServer:
    def __init__(self, packs: dict[str, Path], base_dir: Optional[Path] = None, extra_args=(), env=None,
                 startup_timeout: float = 180.0):
        self.packs = {k: Path(v) for k, v in packs.items()}
        self._own_base = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="abcache-comfy-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.env = env
        self.startup_timeout = startup_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.base / "server.log"
        self.client_id = str(uuid.uuid4())

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ComfyServer":
        comfy = runtime.comfyui_path()
        nodes_dir = self.base / "custom_nodes"
        nodes_dir.mkdir(parents=True, exist_ok=True)
        for name, src in self.packs.items():
            link = nodes_dir / name
            if not link.exists():
                link.symlink_to(src.resolve(), target_is_directory=True)
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-all-custom-nodes",
               "--whitelist-custom-nodes", *self.packs.keys(),
               "--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--dont-print-server",
               "--log-stdout", *self.extra_args]
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=comfy, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + self.startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_text()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer within {self.startup_timeout:.0f}s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        if getattr(self, "_log", None):
            self._log.close()

    def cleanup(self) -> None:
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def provide_input_image(self, name: str = "example.png") -> None:
        """Put an image into the server's input folder (LoadImage validates its file for real): ComfyUI's own
        shipped example when the runtime has it, else a plain grey one."""
        dst = self.base / "input" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shipped = runtime.comfyui_path() / "input" / name
        if shipped.is_file():
            shutil.copy(shipped, dst)
        else:
            from PIL import Image

            Image.new("RGB", (64, 64), "gray").save(dst)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pack_load_problems(self) -> list[str]:
        """Log lines saying one of this server's packs failed to import, and a line for each pack missing from
        ComfyUI's import-time list. ComfyUI's own optional nodes (audio without torchaudio) are not ours."""
        log = self.log_text()
        dirs = [f"custom_nodes/{name}" for name in self.packs]
        failed = [l for l in log.splitlines() if ("IMPORT FAILED" in l or "Cannot import" in l)
                  and any(re.search(re.escape(d) + r"(\s|$)", l) for d in dirs)]
        loaded = [d for d in dirs if re.search(r"\d+\.\d+ seconds: \S*" + re.escape(d) + r"\s*$", log, re.M)]
        return failed + [f"{d} is missing from the import times" for d in dirs if d not in loaded]

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.load(r)

    def post(self, path: str, body: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
                return r.status, (json.loads(data) if data else None)
        except urllib.error.HTTPError as e:
            data = e.read()
            try:
                return e.code, json.loads(data)
            except ValueError:
                return e.code, data.decode(errors="replace")

    def queue(self, graph: dict) -> str:
        status, body = self.post("/prompt", {"prompt": graph, "client_id": self.client_id})
        if status != 200:
            raise ServerError(f"/prompt rejected the graph ({status}): {json.dumps(body, indent=1)[:4000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                st = h[prompt_id]["status"]
                if st.get("status_str") in ("success", "error") or st.get("completed"):
                    return h[prompt_id]
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"server died while running {prompt_id}:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)
        raise ServerError(f"prompt {prompt_id} did not finish in {timeout:.0f}s")

    def run(self, graph: dict, timeout: float = 300, expect_success: bool = True) -> dict:
        entry = self.wait(self.queue(graph), timeout)
        if expect_success and entry["status"].get("status_str") != "success":
            msgs = entry["status"].get("messages")
            raise ServerError(f"prompt failed: {json.dumps(msgs, indent=1)[:4000]}\n{self.log_text()[-3000:]}")
        return entry

    def interrupt(self) -> None:
        self.post("/interrupt", {})
