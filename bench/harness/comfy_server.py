"""A real ComfyUI server for end-to-end tests, and a small client for its HTTP + websocket API."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import websocket

from bench.harness.comfy_runtime import REPO, comfyui_root

PACK_NAME = "HyperSubject"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_directory(base: Path) -> Path:
    """A ComfyUI base directory holding only this pack in custom_nodes/ (linked, so edits are live)."""
    for sub in ("custom_nodes", "models/checkpoints", "models/clip_vision", "models/loras", "input", "output"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return base


class ComfyServer:
    """`main.py --cpu` on 127.0.0.1 with its own base directory; stopped by PID."""

    def __init__(self, base: Path, start_timeout: float = 180.0):
        self.base = make_base_directory(Path(base))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self.start_timeout = start_timeout
        self.process = None

    def start(self) -> "ComfyServer":
        root = comfyui_root()
        command = [sys.executable, str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--disable-api-nodes"]
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {self.start_timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **query) -> object:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def queue(self, graph: dict, client_id: str) -> str:
        status, body = self.post("/prompt", {"prompt": graph, "client_id": client_id})
        if status != 200:
            raise PromptRejected(body)
        return body["prompt_id"]

    def run(self, graph: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format graph, follow the websocket until it ends, return its /history entry."""
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout)
        try:
            prompt_id = self.queue(graph, client_id)
            messages = _follow(ws, prompt_id, time.monotonic() + timeout)
        finally:
            ws.close()
        entry = self.history(prompt_id)
        entry["messages"] = messages
        return entry

    def history(self, prompt_id: str, timeout: float = 30.0) -> dict:
        """The /history entry of a finished prompt (written just after the websocket says it finished)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                return entry
            time.sleep(0.05)
        raise TimeoutError(f"prompt {prompt_id} finished but has no /history entry after {timeout} s")

    def output_bytes(self, item: dict) -> bytes:
        return self.get("/view", filename=item["filename"], subfolder=item.get("subfolder", ""),
                        type=item.get("type", "output"))


class PromptRejected(Exception):
    """/prompt refused the graph (validation errors); `.body` holds the server's answer."""

    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body


def _follow(ws, prompt_id: str, deadline: float) -> list:
    messages = []
    while time.monotonic() < deadline:
        frame = ws.recv()
        if not isinstance(frame, str):
            continue
        message = json.loads(frame)
        data = message.get("data", {})
        if data.get("prompt_id") != prompt_id:
            continue
        messages.append(message)
        if message["type"] in ("execution_error", "execution_interrupted"):
            return messages
        if message["type"] == "executing" and data.get("node") is None:
            return messages
    raise TimeoutError(f"prompt {prompt_id} did not finish; last messages: {messages[-5:]}")


def execution_error(entry: dict) -> dict | None:
    """The execution_error message of a finished prompt, if it failed."""
    return next((m["data"] for m in entry["messages"] if m["type"] == "execution_error"), None)
