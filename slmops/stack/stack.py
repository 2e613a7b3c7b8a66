"""`slmops stack up|down|status`: start the services in order, record them in state.json, stop them in reverse.

state.json holds each running service's pid and start time (what `down` and `status` go by), the ports
(kept for the next `up`, so the printed URLs stay the same) and the environment clients export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from slmops.artifacts import folder_lock, write_json_atomic
from slmops.errors import StackError
from slmops.stack.config import HOST, StackConfig
from slmops.stack.process import Recorded, spawn, stop_tree
from slmops.stack.services import SERVICES, MlflowServer, Postgres, PrefectServer, Service, http_ok, require_drivers

logger = logging.getLogger(__name__)

STATE_VERSION = 1
State = Literal["running", "unhealthy", "stopped", "exited"]


class ServiceStatus(BaseModel):
    """One service as `slmops stack status` shows it."""

    name: str
    state: State  # exited: recorded as started, but its process is gone
    url: str | None = None
    pid: int | None = None
    log: Path


class StackStatus(BaseModel):
    """The stack's services, the environment that points clients at it, and whether this `up` found it up."""

    dir: Path
    services: list[ServiceStatus]
    env: dict[str, str]
    already_up: bool = False

    @property
    def running(self) -> bool:
        return all(s.state == "running" for s in self.services)


# ----------------------------------------------------------------------------------------- state.json
def _read_state(config: StackConfig) -> dict[str, Any]:
    try:
        state = json.loads(config.state_file.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise StackError(
            f"{config.state_file} is not valid JSON ({exc}); stop its services by hand, delete it"
        ) from None
    if state.get("version") != STATE_VERSION:
        raise StackError(f"{config.state_file} has state version {state.get('version')!r}, not {STATE_VERSION}")
    return dict(state)


def _recorded(state: dict[str, Any], name: str) -> Recorded | None:
    entry = state.get("services", {}).get(name)
    return Recorded(entry["pid"], entry["create_time"]) if entry else None


def _password(config: StackConfig) -> str:
    """The cluster's password, made at the first `up` and kept (mode 0600) for the next ones."""
    if config.password_file.is_file():
        return config.password_file.read_text().strip()
    password = secrets.token_urlsafe(24)
    config.password_file.touch(mode=0o600)
    config.password_file.write_text(password + "\n")
    return password


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """A free port below the kernel's ephemeral range: a port from ``bind(0)`` can be handed, between this check
    and the service's bind, to an outgoing connection (a server's own connections to PostgreSQL among them)."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768  # Linux's default
    low = 20000 if first_ephemeral > 21000 else 1024
    for _ in range(200):
        port = secrets.randbelow(first_ephemeral - low) + low
        if _port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: take any free port
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ports(config: StackConfig, previous: dict[str, int]) -> dict[str, int]:
    """Configured ports as given (a busy one fails at start, naming the service); else the last `up`'s, if free."""
    ports: dict[str, int] = {}
    for cls in SERVICES:
        configured, last = config.port(cls.name), previous.get(cls.name, 0)
        if configured:
            ports[cls.name] = configured
        elif last and last not in ports.values() and _port_free(last):
            ports[cls.name] = last
        else:
            port = _free_port()
            while port in ports.values():
                port = _free_port()
            ports[cls.name] = port
    return ports


def _services(config: StackConfig, ports: dict[str, int], password: str) -> list[Service]:
    require_drivers()
    pg = ports["postgres"]
    return [
        Postgres(config, port=pg, password=password),
        MlflowServer(config, port=ports["mlflow"], password=password, postgres_port=pg),
        PrefectServer(config, port=ports["prefect"], password=password, postgres_port=pg),
        # the Prefect workers of issue 13's work pools start here, after the server they poll
    ]


def _client_env(services: list[Service]) -> dict[str, str]:
    by_name = {s.name: s for s in services}
    prefect = by_name["prefect"]
    assert isinstance(prefect, PrefectServer)
    return {"MLFLOW_TRACKING_URI": str(by_name["mlflow"].url), "PREFECT_API_URL": prefect.api_url}


# ----------------------------------------------------------------------------------------- up
def up(config: StackConfig) -> StackStatus:
    """Start PostgreSQL, the MLflow server and the Prefect server, each waited for (bounded) until healthy.

    Already running: returns the status with ``already_up``. A service that exits or stays unhealthy
    past ``startup_timeout_s`` stops every service this call started, then raises StackError naming
    it and its log file. Also raises StackError when PostgreSQL's programs are missing.
    """
    config.dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(config.dir, what="starting or stopping this stack"):
        current = _status(config)
        if current.running:
            return current.model_copy(update={"already_up": True})
        if any(s.state in ("running", "unhealthy") for s in current.services):
            logger.warning("part of the stack in %s is down; restarting all of it", config.dir)
            _down(config)
        previous = _read_state(config).get("ports", {})
        services = _services(config, _ports(config, previous), _password(config))
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "ports": {s.name: s.port for s in services},
            "services": {},
            "env": _client_env(services),
        }
        try:
            for service in services:
                _start(service, config, state)
            write_json_atomic(config.state_file, state)
        except BaseException:
            for service in reversed(services):  # the failing one too: it may be running, only unhealthy
                recorded = _recorded(state, service.name)
                if recorded is not None:
                    _stop(service.name, recorded, type(service).stop_signal, config)
            state["services"] = {}
            write_json_atomic(config.state_file, state)
            raise
        _write_env_file(config, state["env"])
        return _status(config)


def _start(service: Service, config: StackConfig, state: dict[str, Any]) -> Recorded:
    """Prepare, spawn and wait for one service; its pid is in state.json before the wait begins."""
    try:
        service.log.parent.mkdir(parents=True, exist_ok=True)
        service.prepare()
        popen, recorded = spawn(
            service.command(), env=service.env(), log=service.log, cwd=service.cwd(), account=service.account
        )
    except OSError as exc:
        raise StackError(f"{service.name} could not be prepared or started: {exc}; see {service.log}") from None
    if isinstance(service, Postgres):
        state["postgres_root"] = str(service.root)  # where prepare() put the cluster: `down --purge` deletes it
    state["services"][service.name] = {
        "pid": recorded.pid,
        "create_time": recorded.create_time,
        "url": service.url,
        "log": str(service.log),
    }
    write_json_atomic(config.state_file, state)
    deadline = time.monotonic() + config.startup_timeout_s
    while time.monotonic() < deadline:
        code = popen.poll()
        if code is not None:
            raise StackError(
                f"{service.name} exited with code {code} before it was healthy; see {service.log}{_tail(service.log)}"
            )
        if service.healthy():
            service.ready()
            logger.info("%s is up at %s (pid %d)", service.name, service.url, recorded.pid)
            return recorded
        time.sleep(0.5)
    raise StackError(
        f"{service.name} did not answer its health check at {service.url} within {config.startup_timeout_s:.0f} s; "
        f"see {service.log}{_tail(service.log)} (a busy machine may need a longer --timeout)"
    )


def _tail(log: Path, lines: int = 3) -> str:
    """The last lines of a log, for an error message."""
    with contextlib.suppress(OSError):
        last = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()][-lines:]
        if last:
            return ": ... " + " | ".join(last)
    return ""


def _write_env_file(config: StackConfig, env: dict[str, str]) -> None:
    text = "".join(f"export {key}={value}\n" for key, value in env.items())
    tmp = config.env_file.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(config.env_file)


# ----------------------------------------------------------------------------------------- down
def down(config: StackConfig, *, purge: bool = False) -> StackStatus:
    """Stop every service of the stack (process groups, then any descendant left), last started first.

    ``purge`` also deletes the state folder: databases, artifacts, logs. Raises StackError when a
    process survives SIGKILL.
    """
    if not config.dir.is_dir():
        return _status(config)
    with folder_lock(config.dir, what="starting or stopping this stack"):
        state = _down(config)
        if purge:
            import shutil

            root = state.get("postgres_root")
            if root and Path(root).resolve() != config.postgres_root.resolve():
                shutil.rmtree(root, ignore_errors=True)  # the cluster's folder outside --dir (see Postgres)
            shutil.rmtree(config.dir)
    return _status(config)


def _down(config: StackConfig) -> dict[str, Any]:
    state = _read_state(config)
    signals = {cls.name: cls.stop_signal for cls in SERVICES}
    for cls in reversed(SERVICES):
        recorded = _recorded(state, cls.name)
        if recorded is not None:
            _stop(cls.name, recorded, signals[cls.name], config)
    if state:
        state["services"] = {}
        write_json_atomic(config.state_file, state)
    config.env_file.unlink(missing_ok=True)
    return state


def _stop(name: str, recorded: Recorded, sig: int, config: StackConfig) -> None:
    logger.info("stopping %s (pid %d)", name, recorded.pid)
    stop_tree(recorded, sig=sig, timeout_s=config.stop_timeout_s, what=f"{name} (log {config.log(name)})")


# ----------------------------------------------------------------------------------------- status
def status(config: StackConfig) -> StackStatus:
    """Each service's state (running, unhealthy, stopped, exited), URL, pid and log file."""
    return _status(config)


def _status(config: StackConfig) -> StackStatus:
    state = _read_state(config) if config.dir.is_dir() else {}
    rows = []
    for cls in SERVICES:
        entry = state.get("services", {}).get(cls.name)
        recorded = _recorded(state, cls.name)
        if recorded is None:
            rows.append(ServiceStatus(name=cls.name, state="stopped", log=config.log(cls.name)))
            continue
        alive = recorded.alive()
        healthy = alive and _probe(cls, entry["url"], state.get("ports", {}).get(cls.name, 0))
        rows.append(
            ServiceStatus(
                name=cls.name,
                state="running" if healthy else "unhealthy" if alive else "exited",
                url=entry["url"],
                pid=recorded.pid,
                log=Path(entry["log"]),
            )
        )
    running = bool(state.get("services")) and all(r.state == "running" for r in rows)
    return StackStatus(dir=config.dir, services=rows, env=state.get("env", {}) if running else {})


def _probe(cls: type[Service], url: str, port: int) -> bool:
    """A health check that needs no credentials: the service's health endpoint, else a TCP connect (PostgreSQL)."""
    if cls.health_path is not None:
        return http_ok(f"{url}{cls.health_path}")
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=2):
        return True
    return False
