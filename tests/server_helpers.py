"""Running a diffblocks server for a test and talking to it as a client would: a real `diffblocks serve`
process on a free loopback port (or an app in a thread, for the fake-engine tests), HTTP through requests,
the socket through websocket-client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        try:
            if requests.get(url + "/prompt", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no answer from {url} in {timeout} s")


class ServerProcess:
    """`python -m diffblocks serve ...` on a free loopback port, its log in `log_path`."""

    def __init__(self, root: Path, models: Path, extra_args: tuple[str, ...] = (), wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models = models
        self.output, self.input, self.user = root / "output", root / "input", root / "user"
        self.log_path = root / "server.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "diffblocks", "-v", "serve", "--port", str(self.port), "--models", str(models),
               "--output", str(self.output), "--input", str(self.input), "--user-dir", str(self.user),
               "--temp", str(root / "temp"), *extra_args]
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait()

    def wait(self) -> None:
        """Until the server answers (start it with wait=False to build fixtures meanwhile)."""
        try:
            wait_until_up(self.url, proc=self.proc)
        except Exception:
            self.close()
            raise RuntimeError(f"server did not start:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class AppThread:
    """An aiohttp application served from a thread on a free loopback port (for tests of the HTTP side with
    a stand-in engine)."""

    def __init__(self, app) -> None:
        from aiohttp import web

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self._loop.run_until_complete(site.start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise TimeoutError("the app did not start")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Socket:
    """A `/ws` client: JSON events as (type, data), binary frames as bytes."""

    def __init__(self, url: str, client_id: str) -> None:
        import websocket

        self.client_id = client_id
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + f"/ws?clientId={client_id}",
                                              timeout=30)
        self.seen: list = []

    def recv(self, timeout: float = 30.0):
        import websocket

        self.ws.settimeout(timeout)
        opcode, data = self.ws.recv_data()
        item = data if opcode == websocket.ABNF.OPCODE_BINARY else (lambda m: (m["type"], m["data"]))(
            json.loads(data))
        self.seen.append(item)
        return item

    def until(self, predicate, timeout: float = 60.0) -> list:
        """Messages received until one satisfies `predicate` (inclusive)."""
        got, deadline = [], time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching message in {timeout} s; got {[_short(m) for m in got]}")
            item = self.recv(left)
            got.append(item)
            if predicate(item):
                return got

    def until_done(self, prompt_id: str, timeout: float = 60.0) -> list:
        """Messages until `executing` with node null for `prompt_id` (ComfyUI's end-of-prompt signal)."""
        return self.until(lambda m: isinstance(m, tuple) and m[0] == "executing" and m[1]["node"] is None
                          and m[1].get("prompt_id") == prompt_id, timeout)

    def close(self) -> None:
        self.ws.close()


def _short(message) -> str:
    return f"<{len(message)} bytes>" if isinstance(message, bytes) else f"{message[0]}"


def events(messages: list, kind: str) -> list[dict]:
    return [m[1] for m in messages if isinstance(m, tuple) and m[0] == kind]


def queue_prompt(url: str, prompt: dict, client_id: str | None = None, **extra) -> requests.Response:
    body = {"prompt": prompt, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    return requests.post(url + "/prompt", json=body, timeout=30)
