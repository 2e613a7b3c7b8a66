"""A real ``mlflow server`` on loopback, and a recording proxy that can stand in front of it.

The server is a subprocess in its own process group (``mlflow server`` starts uvicorn as a child):
:meth:`MlflowServer.stop` signals the whole group and waits, so nothing outlives the fixture. Every
wait is bounded; a server that dies or never answers ``GET /health`` fails with the tail of its log.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with a SQLite backend and proxied artifacts (``mlflow-artifacts:/``) under ``root``."""

    def __init__(self, root: Path, *, env: dict[str, str], startup_timeout_s: float = 120.0) -> None:
        self.root = Path(root)
        self.env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner process: not needed here
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root, start_new_session=True
            )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"mlflow server gave no /health in {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, then SIGKILL to whatever is left of the group."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # uvicorn, if it outlived its parent
        self.proc.wait(timeout=15)
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""


class RecordingProxy:
    """A loopback HTTP proxy to ``upstream`` that records each request (method, path, headers) and can answer
    the next ``fail_next`` requests itself with ``fail_status`` instead of forwarding them."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_next = 0
        self.fail_status = 503
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.proxy = self  # type: ignore[attr-defined]  # the handler reaches its proxy through the server
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _take_failure(self) -> bool:
        with self._lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return True
            return False


class _ProxyHandler(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        proxy: RecordingProxy = self.server.proxy
        proxy.requests.append((self.command, self.path, dict(self.headers.items())))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if proxy._take_failure():
            error = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected by the test"}'
            self._reply(proxy.fail_status, error, {"Content-Type": "application/json"})
            return
        conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            passed = {
                k: v
                for k, v in response.getheaders()
                if k.lower() not in ("transfer-encoding", "connection", "content-length")
            }
            self._reply(response.status, data, passed)
        finally:
            conn.close()

    def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # quiet
        pass


def forget_mlflow_uris() -> None:
    """Undo ``mlflow.set_tracking_uri``/``set_registry_uri`` (slmops's ``connect`` calls both, and mlflow copies
    them into ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI``), so no later test talks to a stopped server."""
    import mlflow

    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None is mlflow's "unset", it also drops the variable
    mlflow.set_registry_uri(None)  # type: ignore[arg-type]
    os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) leaves the variable behind
