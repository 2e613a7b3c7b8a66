"""``slmops.load``: resolve a use case, a ``models:/`` URI or constraints through MLflow and open the model.

Imports stay light: onnxruntime, tokenizers, numpy and (only when resolving through
the registry) mlflow. Never torch, transformers or optimum.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from slmops.artifacts import read_manifest
from slmops.catalog.estimate import RUNTIME_OVERHEAD_BYTES
from slmops.errors import IntegrityError, MemoryBudgetError, ModelLoadError, RegistryError, SlmopsError
from slmops.runtime.open import Model, open_folder
from slmops.runtime.states import LoadingEvent, LoadingState, StateCallback
from slmops.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def load(
    target: str | None = None,
    *,
    task: str | None = None,
    device: str | None = None,
    max_memory_mb: float | None = None,
    max_latency_ms: float | None = None,
    min_quality: float | None = None,
    capabilities: list[str] | None = None,
    on_state: StateCallback | None = None,
    settings: Settings | None = None,
) -> Model:
    """Open a registered model for serving.

    ``target`` is a use-case name (an alias set by ``slmops recommend``, e.g. ``"chat-cpu"``),
    a ``models:/name@alias`` or ``models:/name/version`` URI, or a local artifact folder.
    Without ``target``, the best registered version meeting the constraints is chosen
    (``task`` required). Raises RegistryError / NoEligibleModelError when nothing
    resolves, IntegrityError when a file does not match the manifest, MemoryBudgetError
    when the model would not fit ``max_memory_mb``.
    """
    settings = settings or get_settings()
    device = device or settings.device
    label = target or f"best {task} model"
    notify = on_state or (lambda event: None)
    notify(LoadingEvent(LoadingState.NOT_LOADED, label))
    try:
        if target is not None and Path(target).is_dir():
            folder = Path(target)
            read_manifest(folder, verify=True)
        else:
            uri = _resolve_uri(target, task=task, device=device, max_memory_mb=max_memory_mb,
                               max_latency_ms=max_latency_ms, min_quality=min_quality,
                               capabilities=capabilities or [], settings=settings)
            progress = lambda p: notify(LoadingEvent(LoadingState.DOWNLOADING, label, progress=p))  # noqa: E731
            folder = _cached_or_download(uri, settings=settings, notify=progress)
        notify(LoadingEvent(LoadingState.LOADING, label))
        _check_budget(folder, max_memory_mb)
        model = open_folder(folder, device=device, threads=settings.threads, verify=False)
    except SlmopsError as exc:
        notify(LoadingEvent(LoadingState.FAILED, label, detail=str(exc)))
        raise
    notify(LoadingEvent(LoadingState.LOADED, label))
    return model


def _resolve_uri(target: str | None, *, task: str | None, device: str, settings: Settings, **constraints: Any) -> str:
    from slmops.register.store import connect

    client = connect(settings)
    if target is not None and target.startswith("models:/"):
        return target
    if target is not None:
        for rm in client.search_registered_models():
            if target in (rm.aliases or {}):
                return f"models:/{rm.name}@{target}"
        raise RegistryError(
            f"no registered model has the alias {target!r} in {settings.resolved_tracking_uri()}; "
            "run `slmops recommend` (or `make run`), or pass a models:/ URI"
        )
    if task is None:
        raise RegistryError("load() needs a target (use case, models:/ URI, folder) or task= with constraints")
    from slmops.recommend.ranking import best, registered_candidates
    from slmops.recommend.usecases import Constraints

    wanted = Constraints(task=task, device=device, **constraints)
    objective = "decode_speed" if task == "causal-lm" else "throughput"
    return best(registered_candidates(client, task), wanted, objective, what="the given constraints").uri


def _cached_or_download(uri: str, *, settings: Settings, notify: Any) -> Path:
    """The verified artifact folder of ``uri``: from the cache when intact, else downloaded (once per version).

    A cached copy that fails its sha256 check is discarded and downloaded again; a fresh
    download that fails the check raises IntegrityError.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        name, version = _version_of(client, uri)
        source = client.get_model_version_download_uri(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{uri} does not resolve in {settings.resolved_tracking_uri()}: {exc.message}") from None
    cache = settings.cache_dir / "models" / name / version
    if (cache / "MLmodel").is_file():
        folder = _model_folder(cache, uri)
        try:
            read_manifest(folder, verify=True)
            notify(1.0)
            return folder
        except IntegrityError as exc:
            logger.warning("cached copy of %s is corrupt (%s); downloading it again", uri, exc)
    return _download(uri, source, cache, notify=notify)


def _download(uri: str, source: str, cache: Path, *, notify: Any) -> Path:
    import mlflow

    notify(0.0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))
        read_manifest(_model_folder(local, uri), verify=True)
        shutil.rmtree(cache, ignore_errors=True)  # a stale partial copy
        local.rename(cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notify(1.0)
    return _model_folder(cache, uri)


def _model_folder(root: Path, uri: str) -> Path:
    """The slmops artifact folder inside a downloaded pyfunc model (named in its MLmodel file)."""
    import yaml

    from slmops.register.names import ARTIFACT_KEY

    try:
        mlmodel = yaml.safe_load((root / "MLmodel").read_text())
        rel = mlmodel["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    except (FileNotFoundError, KeyError, TypeError):
        raise ModelLoadError(f"{uri} is not an slmops model (its MLmodel names no {ARTIFACT_KEY!r} artifact)") from None
    return root / rel


def _version_of(client: Any, uri: str) -> tuple[str, str]:
    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = body.partition("/")
    if not version.isdigit():
        raise RegistryError(f"{uri!r} is not models:/<name>/<version> or models:/<name>@<alias>")
    return name, version


def _check_budget(folder: Path, max_memory_mb: float | None) -> None:
    """Refuse a model whose weights plus runtime overhead exceed the budget, before opening it."""
    if max_memory_mb is None:
        return
    from slmops.export.modelcard import read_model_card
    from slmops.runtime.base import weights_bytes

    manifest = read_manifest(folder)
    weights = weights_bytes(folder, read_model_card(folder))  # counts external data under either name
    need_mb = (weights + RUNTIME_OVERHEAD_BYTES) / 2**20
    if need_mb > max_memory_mb:
        raise MemoryBudgetError(
            f"{manifest.variant} ({folder}) needs about {need_mb:.0f} MB "
            f"(weights + runtime) but max_memory_mb={max_memory_mb:.0f}; raise the budget or choose a smaller precision"
        )
