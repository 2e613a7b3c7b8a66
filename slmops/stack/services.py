"""The stack's services as data: how each one is prepared, started, checked for health and stopped.

Start order is the order of :data:`SERVICES`, then one :class:`Worker` per Prefect work pool
(slmops.stack.pools); `down` stops them in reverse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

from slmops.benchmark.config import load_device_profiles
from slmops.errors import StackError
from slmops.stack import pools
from slmops.stack.config import HOST, StackConfig
from slmops.stack.process import Account

logger = logging.getLogger(__name__)

DB_USER = "slmops"
DATABASES = ("mlflow", "prefect")
# What a user's environment may hold that would point a service elsewhere than the stack assigns.
_SCRUB = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Service:
    """One service of the stack, bound to ``HOST:port`` and writing to ``config.log(name)``."""

    name: str
    health_path: ClassVar[str | None] = None  # GET it for 200; None: the service has its own healthy()
    stop_signal: ClassVar[int] = signal.SIGTERM
    account: Account | None = None  # run as another user (see Postgres)

    def __init__(self, config: StackConfig, *, port: int, password: str) -> None:
        self.config, self.port, self.password = config, port, password

    @property
    def url(self) -> str | None:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return self.config.log(self.name)

    def database_url(self, driver: str, database: str, *, postgres_port: int) -> str:
        return f"postgresql+{driver}://{DB_USER}:{self.password}@{HOST}:{postgres_port}/{database}"

    def base_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in _SCRUB}

    def prepare(self) -> None:
        """One-time set-up before the first start (folders, a database cluster)."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return self.base_env()

    def cwd(self) -> Path:
        return self.config.dir

    def healthy(self) -> bool:
        return http_ok(f"{self.url}{self.health_path}")

    def ready(self) -> None:
        """Work after the first healthy answer (creating databases)."""


class Postgres(Service):
    """A throwaway PostgreSQL cluster (``initdb``), TCP on loopback only, password auth, no Unix socket.

    PostgreSQL refuses to run as root: as root it runs as the ``postgres`` user, and when that user cannot
    reach the state folder (a parent with mode 0700, such as /root or pytest's temp root) the cluster lives
    in ``<tmp>/slmops-stack-pg-<hash of the folder>`` instead.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast shutdown": SIGTERM would wait for the other services' pooled connections

    def __init__(self, config: StackConfig, *, port: int, password: str) -> None:
        super().__init__(config, port=port, password=password)
        self.bin_dir = _postgres_bin_dir()
        self.account = _postgres_account()
        self.root = config.postgres_root

    @property
    def url(self) -> str | None:
        return f"postgresql://{DB_USER}@{HOST}:{self.port}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def _stamp(self) -> Path:
        """sha256 of the password the cluster was made with, to tell this stack's cluster from a stale one."""
        return self.root / "password.sha256"

    def _password_digest(self) -> str:
        return hashlib.sha256(self.password.encode()).hexdigest()

    def prepare(self) -> None:
        self.root = self._reachable_root()
        if (self.data / "PG_VERSION").is_file():
            made_with = self._stamp.read_text().strip() if self._stamp.is_file() else None
            if made_with is None or made_with == self._password_digest():
                return
            if self.root == self.config.postgres_root:
                raise StackError(
                    f"postgres: the cluster in {self.data} was made with another password than "
                    f"{self.config.password_file} holds; restore that file, or delete the cluster with "
                    f"`slmops stack down --purge --dir {self.config.dir}` and run `slmops stack up` again"
                )
            # the temp-folder cluster of an earlier stack in this folder, removed without `down --purge`
            logger.warning("postgres: %s belongs to an earlier stack in %s; replacing it", self.root, self.config.dir)
            shutil.rmtree(self.data)
        if self.data.exists():
            shutil.rmtree(self.data)  # a half-made cluster from an interrupted initdb
        pwfile = self.root / "initdb.pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        command = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            DB_USER,
            "--pwfile",
            str(pwfile),
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
        ]
        logger.info("initdb %s", self.data)
        try:
            with self.log.open("ab") as out:
                done = self._run(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.root)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise StackError(f"postgres: initdb failed with exit code {done.returncode}; see {self.log}")
        tmp = self._stamp.with_suffix(".tmp")
        tmp.write_text(self._password_digest() + "\n")
        tmp.replace(self._stamp)

    def command(self) -> list[str]:
        # -k '': no Unix socket, so nothing is written outside the data folder and only TCP on loopback listens
        return [str(self.bin_dir / "postgres"), "-D", str(self.data), "-h", HOST, "-p", str(self.port), "-k", ""]

    def cwd(self) -> Path:
        return self.root

    def env(self) -> dict[str, str]:
        return {**self.base_env(), "LC_ALL": "C"}

    def _connect(self, database: str = "postgres"):  # noqa: ANN202 - a psycopg connection
        import psycopg

        return psycopg.connect(
            host=HOST,
            port=self.port,
            user=DB_USER,
            password=self.password,
            dbname=database,
            connect_timeout=2,
            autocommit=True,
        )

    def healthy(self) -> bool:
        import psycopg

        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):  # waiting cannot fix it: say so now
                raise StackError(
                    f"postgres: the cluster in {self.data} refuses the password in {self.config.password_file} "
                    f"(made by an earlier stack, before the cluster kept a stamp of its password); stop it, delete "
                    f"{self.root} and run `slmops stack up` again"
                ) from None
            return False
        except psycopg.Error:
            return False

    def ready(self) -> None:
        with self._connect() as conn:
            have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for database in DATABASES:
                if database not in have:
                    conn.execute(f'CREATE DATABASE "{database}"')  # names are the constants above

    # ------------------------------------------------------------------ running as the postgres user
    def _run(self, command: list[str], **options: Any) -> subprocess.CompletedProcess[bytes]:
        """``command`` run to its end as the cluster's account."""
        account = self.account
        return subprocess.run(
            command,
            check=False,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
            **options,
        )

    def _own(self, path: Path) -> None:
        if self.account:
            os.chown(path, self.account.uid, self.account.gid)

    def _reachable_root(self) -> Path:
        """The cluster's folder, created and owned by the account postgres runs as."""
        if self.account is None:  # runs as the caller, who owns the state folder
            self.config.postgres_root.mkdir(parents=True, exist_ok=True)
            return self.config.postgres_root
        user = self.account.name
        for root in (self.config.postgres_root, self._fallback_root()):
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o700)
            self._own(root)
            if self._account_can_write(root):
                if root != self.config.postgres_root:
                    logger.info("the %s user cannot reach %s: the cluster lives in %s", user, self.config.dir, root)
                return root
        raise StackError(
            f"postgres: the user {user!r} can write neither {self.config.postgres_root} nor {root}; "
            "pass a --dir that user can reach"
        )

    def _fallback_root(self) -> Path:
        key = hashlib.sha256(str(self.config.dir.resolve()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"slmops-stack-pg-{key}"

    def _account_can_write(self, path: Path) -> bool:
        probe = self._run(["test", "-w", str(path), "-a", "-x", str(path)])
        return probe.returncode == 0


def require_drivers() -> None:
    """Raise StackError unless the PostgreSQL drivers of the services (the ``stack`` extra) are installed."""
    import importlib.util

    missing = [name for name in ("psycopg", "asyncpg") if importlib.util.find_spec(name) is None]
    if missing:
        raise StackError(
            f"{' and '.join(missing)} not installed: the MLflow and Prefect servers need them to use PostgreSQL; "
            "pip install 'slmops[stack]' (make setup installs it)"
        )


def _postgres_bin_dir() -> Path:
    """PostgreSQL's programs: the folder of ``pg_ctl`` on PATH (Debian links only some of them into /usr/bin)."""
    missing = [name for name in ("initdb", "pg_ctl") if shutil.which(name) is None]
    if missing:
        raise StackError(
            f"{' and '.join(missing)} not found on PATH; install PostgreSQL 15+ (Debian: apt-get install "
            "postgresql) or put its bin folder (e.g. /usr/lib/postgresql/15/bin) on PATH"
        )
    return Path(shutil.which("pg_ctl") or "").resolve().parent


def _postgres_account() -> Account | None:
    """None as an ordinary user; as root, the ``postgres`` account (initdb and postgres refuse root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root, and there is no 'postgres' user to run PostgreSQL as (it refuses root); "
            "create one (useradd --system postgres) or run `slmops stack` as an ordinary user"
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


class MlflowServer(Service):
    """``mlflow server`` on the cluster's ``mlflow`` database, proxying artifacts (``mlflow-artifacts:/``)."""

    name = "mlflow"
    health_path = "/health"

    def __init__(self, config: StackConfig, *, port: int, password: str, postgres_port: int) -> None:
        super().__init__(config, port=port, password=password)
        self.postgres_port = postgres_port

    def prepare(self) -> None:
        self.config.artifacts_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.config.artifacts_dir.resolve()),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def env(self) -> dict[str, str]:
        return {
            **self.base_env(),
            # the store URI through mlflow's own variable, not argv: it holds the password, and argv is public (ps)
            "MLFLOW_BACKEND_STORE_URI": self.database_url("psycopg", "mlflow", postgres_port=self.postgres_port),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no job-runner processes: slmops runs no MLflow jobs
        }


class PrefectServer(Service):
    """``prefect server start`` (API, UI and its services) on the cluster's ``prefect`` database."""

    name = "prefect"
    health_path = "/api/health"

    def __init__(self, config: StackConfig, *, port: int, password: str, postgres_port: int) -> None:
        super().__init__(config, port=port, password=password)
        self.postgres_port = postgres_port

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def prepare(self) -> None:
        self.config.prefect_home.mkdir(parents=True, exist_ok=True)

    def ready(self) -> None:
        """Create the work pools (their concurrency limits) before any worker polls one."""
        with pools.client(self.api_url) as api:
            pools.ensure_pools(api, self.config_pools)

    @property
    def config_pools(self) -> list[pools.Pool]:
        return pools.declared_pools(load_device_profiles())

    def command(self) -> list[str]:
        return [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        return {
            **self.base_env(),
            "PREFECT_HOME": str(self.config.prefect_home.resolve()),
            "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url(
                "asyncpg", "prefect", postgres_port=self.postgres_port
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }


class Worker(Service):
    """``prefect worker start --pool <pool>`` (type process) in its own empty folder, with a health endpoint.

    Its flow runs see only the stack's URLs, the configs and the code: their artifacts, caches and Hub
    downloads go under the worker's own folder, so a worker needs no folder of another one.
    """

    health_path = "/health"

    def __init__(
        self,
        config: StackConfig,
        *,
        port: int,
        password: str,
        pool: pools.Pool,
        client_env: dict[str, str],
        index: int = 0,
    ) -> None:
        super().__init__(config, port=port, password=password)
        self.pool, self.client_env = pool, client_env
        self.name = worker_name(pool.name, index)

    @property
    def home(self) -> Path:
        return self.config.dir / "workers" / self.name.removeprefix(WORKER_PREFIX)

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool.name]
        command += ["--type", pools.POOL_TYPE, "--name", f"{self.pool.name}@{HOST}:{self.port}", "--with-healthcheck"]
        if self.pool.worker_limit is not None:
            command += ["--limit", str(self.pool.worker_limit)]
        return command

    def env(self) -> dict[str, str]:
        from slmops.settings import get_settings

        env = self.base_env()
        code = Path(__file__).resolve().parents[2]  # the checkout holding slmops/ and flows/ (the deployments' code)
        path = [str(code)] if (code / "flows").is_dir() else []
        return {
            **env,
            **self.client_env,
            "PYTHONPATH": os.pathsep.join([*path, *filter(None, [env.get("PYTHONPATH")])]),
            "SLMOPS_CONFIG_DIR": str(get_settings().config_dir.resolve()),
            "SLMOPS_ARTIFACTS_DIR": str(self.home / "artifacts"),
            "SLMOPS_MLRUNS_DIR": str(self.home / "mlruns"),  # unused with MLFLOW_TRACKING_URI; never a shared one
            "SLMOPS_CACHE_DIR": str(self.home / "cache"),
            "HF_HOME": str(self.home / "hf"),
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_WORKER_WEBSERVER_HOST": HOST,
            "PREFECT_WORKER_WEBSERVER_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }

    def cwd(self) -> Path:
        return self.home


WORKER_PREFIX = "worker-"


def worker_name(pool: str, index: int = 0) -> str:
    """``worker-<pool>`` for a pool's first worker, ``worker-<pool>-<n>`` for its n-th."""
    return f"{WORKER_PREFIX}{pool}" + (f"-{index + 1}" if index else "")


def local_worker_pools(declared: list[pools.Pool]) -> tuple[list[pools.Pool], dict[str, str]]:
    """The pools this machine can serve, and why each other one gets no worker here (a device it lacks)."""
    from slmops.benchmark.harness import unavailable_reason

    profiles = load_device_profiles()
    served, skipped = [], {}
    for pool in declared:
        reason = unavailable_reason(profiles[pool.profile]) if pool.profile else None
        if reason is None:
            served.append(pool)
        else:
            skipped[pool.name] = reason
    return served, skipped


SERVICES: tuple[type[Service], ...] = (Postgres, MlflowServer, PrefectServer)
