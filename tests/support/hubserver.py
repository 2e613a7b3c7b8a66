"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1 for tests.

It speaks what huggingface_hub's snapshot_download / hf_hub_download use, in the 0.36
and 2.x clients: the revision and tree APIs, HEAD/GET on resolve URLs with X-Repo-Commit,
ETag / X-Linked-Etag and sizes, Range requests, and X-Error-Code errors.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_THRESHOLD = 10_000  # files at least this big are served as LFS (sha256 etag)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)  # sha -> commit
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha
    gated: bool = False

    def resolve(self, rev: str) -> Commit | None:
        sha = self.refs.get(rev, rev)
        return self.commits.get(sha)


@dataclass
class Fault:
    """Misbehave on requests whose path matches ``pattern`` (fnmatch), ``times`` times.

    kinds: ``drop`` (close the connection after ``arg`` body bytes), ``flip`` (invert the byte
    at offset ``arg``), ``status`` (answer HTTP ``arg``: 500, 503, 429 ...), ``stall`` (send
    nothing for ``arg`` seconds, then the body), ``slow`` (send the body at ``arg`` bytes per second).
    """

    kind: str
    pattern: str
    times: int = 1
    arg: float = 0
    method: str = "GET"
    fired: int = 0
    paths: set[str] = field(default_factory=set)


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.faults: list[Fault] = []
        self.lock = threading.Lock()

    def inject(self, kind: str, pattern: str, *, times: int = 1, arg: float = 0, method: str = "GET") -> Fault:
        fault = Fault(kind, pattern, times, arg, method)
        self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.fired < fault.times and fault.method == method and fnmatch.fnmatch(path, fault.pattern):
                    fault.fired += 1
                    fault.paths.add(path)
                    return fault
        return None

    @property
    def faults_injected(self) -> int:
        return sum(f.fired for f in self.faults)

    def publish(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main") -> str:
        """Add a commit with ``files`` on ``branch``; returns its sha."""
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        h = hashlib.sha1()
        for name in sorted(files):
            h.update(name.encode() + b"\0" + hashlib.sha1(files[name]).digest())
        h.update(str(len(repo.commits)).encode())
        sha = h.hexdigest()
        repo.commits[sha] = Commit(sha, dict(files))
        repo.refs[branch] = sha
        return sha

    def publish_folder(self, repo_id: str, folder: Path, *, branch: str = "main") -> str:
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()
        }
        return self.publish(repo_id, files, branch=branch)


_API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rest>.+)$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    if len(data) >= LFS_THRESHOLD:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def make_handler(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object) -> None:
            body = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _repo_commit(self, repo_id: str, rev: str) -> tuple[Repo, Commit] | None:
            repo = state.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
                return None
            if repo.gated and "authorization" not in {k.lower() for k in self.headers}:
                self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted")
                return None
            commit = repo.resolve(rev)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return repo, commit

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def _serve(self, *, send_body: bool) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            with state.lock:
                state.requests.append((self.command, path, dict(self.headers)))
            fault = state.take_fault(self.command, path)
            if fault is not None and fault.kind == "status":
                status = int(fault.arg)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                if status == 404:  # as the Hub answers for a file the commit does not have
                    self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if m := _API_RE.match(path):
                found = self._repo_commit(m["repo"], m["rest"].split("/", 1)[0])
                if found is None:
                    return
                repo, commit = found
                if m["kind"] == "revision":
                    self._json(
                        {
                            "id": repo.repo_id,
                            "modelId": repo.repo_id,
                            "sha": commit.sha,
                            "private": False,
                            "gated": repo.gated,
                            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                        }
                    )
                else:
                    self._json([_entry(p, d) for p, d in sorted(commit.files.items())])
                return
            if m := _RESOLVE_RE.match(path):
                found = self._repo_commit(m["repo"], m["rev"])
                if found is None:
                    return
                _, commit = found
                data = commit.files.get(m["path"])
                if data is None:
                    self._error(404, "EntryNotFound", f"{m['path']} does not exist on {m['rev']}")
                    return
                self._send_file(commit, data, send_body=send_body, fault=fault)
                return
            self._error(404, "RepoNotFound", f"unknown path {path}")

        def _send_file(self, commit: Commit, data: bytes, *, send_body: bool, fault: Fault | None = None) -> None:
            entry = _entry("", data)
            etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            start, end, status = 0, len(data), 200
            rng = self.headers.get("Range")
            if rng and (m := re.match(r"bytes=(\d+)-(\d*)", rng)):
                start = int(m[1])
                end = int(m[2]) + 1 if m[2] else len(data)
                status = 206
            self.send_response(status)
            self.send_header("X-Repo-Commit", commit.sha)
            self.send_header("ETag", f'"{etag}"')
            if "lfs" in entry:
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if not send_body:
                return
            body = data[start:end]
            if fault is not None and fault.kind == "stall":
                time.sleep(fault.arg)
            elif fault is not None and fault.kind == "flip":
                at = min(int(fault.arg), len(body) - 1)
                body = body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1 :]
            elif fault is not None and fault.kind == "slow":
                step = max(1, int(fault.arg / 20))  # 20 writes per second
                for at in range(0, len(body), step):
                    self.wfile.write(body[at : at + step])
                    self.wfile.flush()
                    time.sleep(0.05)
                return
            elif fault is not None and fault.kind == "drop":
                self.wfile.write(body[: int(fault.arg)])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up on injected faults are expected


class HubServer:
    """Start with ``with HubServer() as hub:``; ``hub.endpoint`` is its base URL."""

    def __init__(self) -> None:
        self.state = HubState()
        self.httpd = _QuietServer(("127.0.0.1", 0), make_handler(self.state))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
