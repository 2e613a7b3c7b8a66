"""A real ``mlflow server`` on loopback, and a recording proxy that can stand in front of it.

The server is a subprocess in its own process group (``mlflow server`` starts uvicorn as a child):
:meth:`MlflowServer.stop` signals the whole group and waits, so nothing outlives the fixture. Every
wait is bounded; a server that dies or never answers ``GET /health`` fails with the tail of its log.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from tests.support.process import ServerProcess


class MlflowServer(ServerProcess):
    """``mlflow server`` with a SQLite backend and proxied artifacts (``mlflow-artifacts:/``) under ``root``."""

    name = "mlflow server"

    def __init__(self, root: Path, *, env: dict[str, str], startup_timeout_s: float = 120.0) -> None:
        # no job runner process: not needed here
        super().__init__(
            root, env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, startup_timeout_s=startup_timeout_s
        )

    def command(self) -> list[str]:
        return [
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
