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
from slmops.benchmark.config import load_device_profiles
from slmops.errors import StackError
from slmops.stack import pools
from slmops.stack.config import HOST, StackConfig
from slmops.stack.process import Recorded, spawn, stop_tree
from slmops.stack.services import (
    SERVICES,
    MlflowServer,
    Postgres,
    PrefectServer,
    Service,
    Worker,
    http_ok,
    local_worker_pools,
    require_drivers,
    worker_name,
)

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
    pools_without_worker: dict[str, str] = {}  # work pool -> why `up` started no worker for it on this machine
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


def _order(state: dict[str, Any]) -> list[str]:
    """The recorded services, first started first."""
    recorded = state.get("services", {})
    return [name for name in state.get("order", list(recorded)) if name in recorded]


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


def _ports(
    config: StackConfig, previous: dict[str, int], names: list[str], *, running: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Configured ports as given (a busy one fails at start, naming the service); else the last `up`'s, if free.
    A service in ``running`` keeps the port it listens on."""
    ports: dict[str, int] = {}
    for name in names:
        configured, last = config.port(name), previous.get(name, 0)
        if name in running and last:
            ports[name] = last
        elif configured:
            ports[name] = configured
        elif last and last not in ports.values() and _port_free(last):
            ports[name] = last
        else:
            port = _free_port()
            while port in ports.values():
                port = _free_port()
            ports[name] = port
    return ports


def _services(
    config: StackConfig, previous: dict[str, int], password: str, *, running: frozenset[str] = frozenset()
) -> tuple[list[Service], dict[str, str]]:
    """The services in start order (servers, then one worker per pool this machine can serve), and the pools left
    without a worker here with the reason. Those in ``running`` keep their ports."""
    require_drivers()
    served, skipped = local_worker_pools(pools.declared_pools(load_device_profiles()))
    count = {pools.BUILD_POOL: config.build_workers}
    started = [(pool, i) for pool in served for i in range(count.get(pool.name, 1))]
    workers = [worker_name(pool.name, i) for pool, i in started]
    ports = _ports(config, previous, [cls.name for cls in SERVICES] + workers, running=running)
    pg = ports["postgres"]
    services: list[Service] = [
        Postgres(config, port=pg, password=password),
        MlflowServer(config, port=ports["mlflow"], password=password, postgres_port=pg),
        PrefectServer(config, port=ports["prefect"], password=password, postgres_port=pg),
    ]
    env = _client_env(services)
    for pool, i in started:  # after the server they poll; PrefectServer.ready() created their pools
        port = ports[worker_name(pool.name, i)]
        services.append(Worker(config, port=port, password=password, pool=pool, client_env=env, index=i))
    return services, skipped


def _client_env(services: list[Service]) -> dict[str, str]:
    by_name = {s.name: s for s in services}
    prefect = by_name["prefect"]
    assert isinstance(prefect, PrefectServer)
    return {"MLFLOW_TRACKING_URI": str(by_name["mlflow"].url), "PREFECT_API_URL": prefect.api_url}


# ----------------------------------------------------------------------------------------- up
def up(config: StackConfig) -> StackStatus:
    """Start PostgreSQL, the MLflow server, the Prefect server (creating the work pools) and one worker per pool
    this machine can serve, each waited for (bounded) until healthy.

    Already running: returns the status with ``already_up``. Servers up but some workers down (a worker killed,
    its machine rebooted): starts those workers again and leaves the rest, and the flow runs they serve,
    running. A server down: restarts the whole stack. A service that exits or stays unhealthy past
    ``startup_timeout_s`` stops every service this call started, then raises StackError naming it and its log
    file. Also raises StackError when PostgreSQL's programs are missing.
    """
    config.dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(config.dir, what="starting or stopping this stack"):
        current = _status(config)
        if current.running:
            return current.model_copy(update={"already_up": True})
        servers = {cls.name for cls in SERVICES}
        if all(s.state == "running" for s in current.services if s.name in servers):
            return _restart_workers(config, current)
        if any(s.state in ("running", "unhealthy") for s in current.services):
            logger.warning("part of the stack in %s is down; restarting all of it", config.dir)
            _down(config)
        previous = _read_state(config).get("ports", {})
        services, skipped = _services(config, previous, _password(config))
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "ports": {s.name: s.port for s in services},
            "services": {},
            "env": _client_env(services),
            "pools_without_worker": skipped,
            "order": [s.name for s in services],  # the start order (state.json's mappings are written sorted)
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


def _restart_workers(config: StackConfig, current: StackStatus) -> StackStatus:
    """Start again each worker that is not running (stopping an unhealthy one first); servers and running workers
    keep running, on their ports."""
    state = _read_state(config)
    running = frozenset(s.name for s in current.services if s.state == "running")
    services, skipped = _services(config, state.get("ports", {}), _password(config), running=running)
    for service in services:
        if service.name in running:
            continue
        recorded = _recorded(state, service.name)
        was = next((s.state for s in current.services if s.name == service.name), "new")
        if recorded is not None and recorded.alive():  # unhealthy: alive, not answering its health check
            _stop(service.name, recorded, type(service).stop_signal, config)
        state["services"].pop(service.name, None)
        state["ports"][service.name] = service.port
        if service.name not in state["order"]:
            state["order"].append(service.name)
        logger.warning(
            "%s was %s: starting it again; the servers and the other workers keep running", service.name, was
        )
        try:
            _start(service, config, state)
        except BaseException:
            failed = _recorded(state, service.name)
            if failed is not None:  # it may be running, only unhealthy
                _stop(service.name, failed, type(service).stop_signal, config)
            state["services"].pop(service.name, None)
            write_json_atomic(config.state_file, state)
            raise
    state["pools_without_worker"] = skipped
    write_json_atomic(config.state_file, state)
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
    for name in reversed(_order(state)):
        recorded = _recorded(state, name)
        if recorded is not None:
            _stop(name, recorded, signals.get(name, Worker.stop_signal), config)
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
    classes: dict[str, type[Service]] = {cls.name: cls for cls in SERVICES}
    workers = [name for name in _order(state) if name not in classes]
    for name in [*classes, *workers]:
        cls = classes.get(name, Worker)
        entry = state.get("services", {}).get(name)
        recorded = _recorded(state, name)
        if recorded is None:
            rows.append(ServiceStatus(name=name, state="stopped", log=config.log(name)))
            continue
        alive = recorded.alive()
        healthy = alive and _probe(cls, entry["url"], state.get("ports", {}).get(name, 0))
        rows.append(
            ServiceStatus(
                name=name,
                state="running" if healthy else "unhealthy" if alive else "exited",
                url=entry["url"],
                pid=recorded.pid,
                log=Path(entry["log"]),
            )
        )
    running = bool(state.get("services")) and all(r.state == "running" for r in rows)
    return StackStatus(
        dir=config.dir,
        services=rows,
        env=state.get("env", {}) if running else {},
        pools_without_worker=state.get("pools_without_worker", {}),
    )


def _probe(cls: type[Service], url: str, port: int) -> bool:
    """A health check that needs no credentials: the service's health endpoint, else a TCP connect (PostgreSQL)."""
    if cls.health_path is not None:
        return http_ok(f"{url}{cls.health_path}")
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=2):
        return True
    return False
