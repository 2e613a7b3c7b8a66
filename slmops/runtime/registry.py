"""Reading the model registry without importing mlflow: aliases and versions to (name, version, source, digest).

``slmops.load("chat-cpu")`` only needs three facts from the registry: which version an alias
points at, where that version's files are, and the candidate digest it was registered with.
Getting them through ``mlflow.MlflowClient`` costs about 3.3 s on a 2-core machine (``import
mlflow`` 2.1 s, opening the SQLite store with its migration checks 1.0 s); the readers here
take a few milliseconds:

* ``sqlite:`` stores are read with one read-only query on the registry tables
  (``registered_model_aliases``, ``model_versions``, ``model_version_tags``);
* ``http(s):`` tracking servers through MLflow's REST API (urllib, no ``requests``);
* anything else (databricks, other databases, an unexpected schema or a server error) goes
  through :class:`MlflowRegistryReader`, mlflow's own client, which is also the reference the
  tests compare the light readers with.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slmops.errors import RegistryError
from slmops.names import EXPERIMENT, TAG_DIGEST, TAG_GATE, TAG_RECIPE, TAG_VARIANT
from slmops.settings import Settings

logger = logging.getLogger(__name__)

DELETED_STAGE = "Deleted_Internal"  # mlflow's marker for a deleted version still in the table
DEFAULT_WORKSPACE = "default"  # mlflow >= 3.5 stores a workspace column; a plain client reads this one


@dataclass(frozen=True)
class VersionRef:
    """One registered model version: where its files are and the candidate digest it was registered with."""

    name: str
    version: str
    source: str
    digest: str | None = None
    gate: str | None = None  # the version's slmops.gate tag: "passed" or "failed" (None: registered without one)
    variant: str | None = None
    recipe: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class RegistryReader(Protocol):
    """What the runtime asks of a registry. ``None`` means "no such alias/version"."""

    def alias(self, alias: str, *, name: str | None = None) -> VersionRef | None: ...

    def version(self, name: str, version: str) -> VersionRef | None: ...

    def aliases(self) -> list[tuple[str, str]]:
        """Every (alias, registered model name) in the registry, sorted."""
        ...


class ReaderUnavailable(Exception):
    """A light reader cannot answer for this store (schema, protocol); the caller falls back to mlflow."""


# ----------------------------------------------------------------------------------------- SQLite
class SqliteRegistryReader:
    """Read-only queries on a local MLflow SQLite store (no write, no migration, no lock held)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ReaderUnavailable(f"no SQLite store at {self.path}")
        try:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(model_versions)")}
        except sqlite3.Error as exc:
            raise ReaderUnavailable(f"{self.path}: {exc}") from None
        if not {"name", "version", "source", "current_stage"} <= columns:
            raise ReaderUnavailable(f"{self.path} has no model registry tables mlflow's reader could use")
        self._storage = "storage_location" in columns
        self._workspace = "workspace" in columns

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise ReaderUnavailable(f"{self.path}: {exc}") from None

    def _ws(self, table: str) -> tuple[str, tuple[Any, ...]]:
        return (f" AND {table}.workspace = ?", (DEFAULT_WORKSPACE,)) if self._workspace else ("", ())

    def alias(self, alias: str, *, name: str | None = None) -> VersionRef | None:
        ws, ws_args = self._ws("a")
        where, args = ("a.alias = ?", (alias,)) if name is None else ("a.alias = ? AND a.name = ?", (alias, name))
        # search_registered_models() lists models by name; the first one holding the alias wins, as with mlflow
        rows = self._query(
            f"SELECT a.name, a.version FROM registered_model_aliases a WHERE {where}{ws} ORDER BY a.name LIMIT 1",
            args + ws_args,
        )
        return self.version(rows[0][0], str(rows[0][1])) if rows else None

    def version(self, name: str, version: str) -> VersionRef | None:
        if not str(version).isdigit():
            return None
        ws, ws_args = self._ws("v")
        location = "v.storage_location" if self._storage else "NULL"
        rows = self._query(
            f"SELECT {location}, v.source FROM model_versions v "
            f"WHERE v.name = ? AND v.version = ? AND v.current_stage != ?{ws}",
            (name, int(version), DELETED_STAGE) + ws_args,
        )
        if not rows:
            return None
        ws, ws_args = self._ws("t")
        tags = dict(
            self._query(
                f"SELECT t.key, t.value FROM model_version_tags t WHERE t.name = ? AND t.version = ?{ws}",
                (name, int(version)) + ws_args,
            )
        )
        return _ref(name, str(version), rows[0][0] or rows[0][1], tags)

    def aliases(self) -> list[tuple[str, str]]:
        ws, ws_args = self._ws("a")
        rows = self._query(f"SELECT a.alias, a.name FROM registered_model_aliases a WHERE 1 = 1{ws}", ws_args)
        return sorted((str(alias), str(name)) for alias, name in rows)


# ----------------------------------------------------------------------------------------- REST
class RestRegistryReader:
    """MLflow's REST API (``/api/2.0/mlflow/...``) over urllib; auth from the settings (token or basic)."""

    def __init__(self, base_url: str, *, settings: Settings, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Accept": "application/json"}
        if settings.tracking_token:
            self.headers["Authorization"] = f"Bearer {settings.tracking_token}"
        elif settings.tracking_username and settings.tracking_password:
            basic = b64encode(f"{settings.tracking_username}:{settings.tracking_password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"

    def _get(self, endpoint: str, **params: str) -> dict[str, Any] | None:
        import urllib.error  # here, not at the top: urllib.request pulls in http.client and ssl (30 ms)
        import urllib.parse
        import urllib.request

        url = f"{self.base_url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                code = json.loads(body).get("error_code")
            except (ValueError, AttributeError):
                code = None
            # mlflow answers a missing model/version with RESOURCE_DOES_NOT_EXIST, and a missing alias of an
            # existing model with 400 INVALID_PARAMETER_VALUE; anything without mlflow's JSON error (an HTML
            # 404 from a wrong URL path, a proxy's page) is not an answer
            missing_alias = endpoint == "registered-models/alias" and code == "INVALID_PARAMETER_VALUE"
            if code == "RESOURCE_DOES_NOT_EXIST" or missing_alias:
                return None
            raise ReaderUnavailable(f"{url}: HTTP {exc.code} {code or ''}".strip()) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ReaderUnavailable(f"{url}: {exc}") from None

    def alias(self, alias: str, *, name: str | None = None) -> VersionRef | None:
        if name is None:
            name = self._model_with_alias(alias)
            if name is None:
                return None
        found = self._get("registered-models/alias", name=name, alias=alias)
        return self._ref(found["model_version"]) if found else None

    def _model_with_alias(self, alias: str) -> str | None:
        return next((name for a, name in self._all_aliases() if a == alias), None)

    def _all_aliases(self) -> list[tuple[str, str]]:
        """(alias, model name) in the order mlflow lists the models (by name)."""
        found: list[tuple[str, str]] = []
        token: str | None = None
        while True:
            page = self._get("registered-models/search", max_results="1000", **({"page_token": token} if token else {}))
            for model in (page or {}).get("registered_models", []):
                found += [(a["alias"], model["name"]) for a in model.get("aliases", []) if a.get("alias")]
            token = (page or {}).get("next_page_token")
            if not token:
                return found

    def aliases(self) -> list[tuple[str, str]]:
        return sorted(self._all_aliases())

    def version(self, name: str, version: str) -> VersionRef | None:
        if not str(version).isdigit():
            return None
        found = self._get("model-versions/get", name=name, version=str(version))
        return self._ref(found["model_version"]) if found else None

    def _ref(self, mv: dict[str, Any]) -> VersionRef:
        name, version = mv["name"], str(mv["version"])
        where = self._get("model-versions/get-download-uri", name=name, version=version) or {}
        tags = {t["key"]: t.get("value") for t in mv.get("tags", [])}
        return _ref(name, version, where.get("artifact_uri") or mv.get("source", ""), tags)


# ----------------------------------------------------------------------------------------- mlflow
def follow_local_store(settings: Settings) -> None:
    """Re-root the default local store's recorded paths if the project was copied or moved (runtime.localstore)."""
    from slmops.runtime.localstore import relocate

    try:
        relocate(settings.mlruns_dir / "mlflow.db", settings.resolved_artifact_root(), experiment=EXPERIMENT)
    except sqlite3.Error as exc:
        raise RegistryError(
            f"the local MLflow store {settings.mlruns_dir / 'mlflow.db'} was copied or moved, and re-rooting its "
            f"artifact paths failed: {exc}; make the folder writable or set SLMOPS_MLRUNS_DIR to a writable copy"
        ) from exc


def connect(settings: Settings) -> Any:
    """Point mlflow at the configured store (creating the local one under mlruns/ if needed); return a client."""
    import mlflow
    from mlflow import MlflowClient

    from slmops.quiet import mlflow_store_init_quiet

    uri = settings.resolved_tracking_uri()
    if not settings.tracking_uri:
        settings.mlruns_dir.mkdir(parents=True, exist_ok=True)
        follow_local_store(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow_store_init_quiet():  # the client opens the store, creating a fresh SQLite one's tables
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


class MlflowRegistryReader:
    """mlflow's own client: the fallback for every other store, and the reference in the tests."""

    def __init__(self, settings: Settings) -> None:
        self.client = connect(settings)

    def alias(self, alias: str, *, name: str | None = None) -> VersionRef | None:
        from mlflow.exceptions import MlflowException

        try:
            if name is None:
                models = self.client.search_registered_models()
                name = next((rm.name for rm in models if alias in (rm.aliases or {})), None)
                if name is None:
                    return None
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            _raise_unless_not_found(exc, self.client.tracking_uri)
            return None
        return self._ref(mv)

    def version(self, name: str, version: str) -> VersionRef | None:
        from mlflow.exceptions import MlflowException

        if not str(version).isdigit():
            return None
        try:
            return self._ref(self.client.get_model_version(name, str(version)))
        except MlflowException as exc:
            _raise_unless_not_found(exc, self.client.tracking_uri)
            return None

    def aliases(self) -> list[tuple[str, str]]:
        from mlflow.exceptions import MlflowException

        try:
            models = self.client.search_registered_models()
        except MlflowException as exc:
            _raise_unless_not_found(exc, self.client.tracking_uri)
            return []
        return sorted((alias, rm.name) for rm in models for alias in (rm.aliases or {}))

    def _ref(self, mv: Any) -> VersionRef:
        source = self.client.get_model_version_download_uri(mv.name, mv.version)
        return _ref(mv.name, str(mv.version), source, mv.tags or {})


def _ref(name: str, version: str, source: str, tags: dict[str, Any]) -> VersionRef:
    """A VersionRef from a version's tags, read alike by every reader."""
    return VersionRef(
        name, version, source, tags.get(TAG_DIGEST), tags.get(TAG_GATE), tags.get(TAG_VARIANT), tags.get(TAG_RECIPE)
    )


def _raise_unless_not_found(exc: Any, where: str) -> None:
    """Nothing for mlflow's "no such model/version/alias" answers; RegistryError for anything else (auth, server)."""
    if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return
    raise RegistryError(f"the registry at {where} failed: {exc.error_code}: {exc.message}") from None


# ----------------------------------------------------------------------------------------- choosing
def registry_reader(settings: Settings, *, light: bool = True) -> RegistryReader:
    """The cheapest reader for the configured store; mlflow's client when no light reader fits (or ``light=False``)."""
    uri = settings.resolved_tracking_uri()
    if not settings.tracking_uri:
        follow_local_store(settings)
    if light:
        try:
            if uri.startswith("sqlite:///") and "?" not in uri:
                return _FallingBack(SqliteRegistryReader(Path(uri.removeprefix("sqlite:///"))), settings)
            if uri.startswith(("http://", "https://")):
                return _FallingBack(RestRegistryReader(uri, settings=settings), settings)
        except ReaderUnavailable as exc:
            logger.info("light registry reader unavailable (%s); using mlflow's client", exc)
    return MlflowRegistryReader(settings)


class _FallingBack:
    """A light reader that hands the question to mlflow's client when it cannot answer it."""

    def __init__(self, reader: RegistryReader, settings: Settings) -> None:
        self.reader, self.settings = reader, settings

    def _fallback(self, exc: Exception) -> RegistryReader:
        logger.warning(
            "registry reader %s failed (%s); falling back to mlflow's client", type(self.reader).__name__, exc
        )
        self.reader = MlflowRegistryReader(self.settings)
        return self.reader

    def alias(self, alias: str, *, name: str | None = None) -> VersionRef | None:
        try:
            return self.reader.alias(alias, name=name)
        except ReaderUnavailable as exc:
            return self._fallback(exc).alias(alias, name=name)

    def version(self, name: str, version: str) -> VersionRef | None:
        try:
            return self.reader.version(name, version)
        except ReaderUnavailable as exc:
            return self._fallback(exc).version(name, version)

    def aliases(self) -> list[tuple[str, str]]:
        try:
            return self.reader.aliases()
        except ReaderUnavailable as exc:
            return self._fallback(exc).aliases()


def resolve_version(target: str, *, reader: RegistryReader, settings: Settings) -> VersionRef:
    """The version named by a use case (alias), ``models:/name@alias`` or ``models:/name/version``.

    Raises RegistryError naming the target and the store when it does not resolve.
    """
    where = settings.resolved_tracking_uri()
    if target.startswith("models:/"):
        body = target.removeprefix("models:/")
        if "@" in body:
            name, alias = body.split("@", 1)
            found = reader.alias(alias, name=name)
        else:
            name, _, version = body.partition("/")
            if not name or not version.isdigit():
                raise RegistryError(f"{target!r} is not models:/<name>/<version> or models:/<name>@<alias>")
            found = reader.version(name, version)
        if found is None:
            raise RegistryError(f"{target} does not resolve in {where}; check the name, version or alias")
        return found
    found = reader.alias(target)
    if found is None:
        raise RegistryError(
            f"no registered model has the alias {target!r} in {where}; "
            "run `slmops recommend` (or `make run`), or pass a models:/ URI"
        )
    return found
