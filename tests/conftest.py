"""Every test runs with its own artifacts, MLflow store, caches and Hub cache in a temp dir."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


UNSET = (
    "SLMOPS_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "HF_HUB_OFFLINE",
    "SLMOPS_OFFLINE",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "SLMOPS_THREADS",
    "SLMOPS_TRACKING_TOKEN",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)


def isolated_env(home: Path) -> dict[str, str]:
    """Environment pointing every store slmops, MLflow, Prefect and huggingface_hub use under ``home``."""
    return {
        "SLMOPS_ARTIFACTS_DIR": str(home / "artifacts"),
        "SLMOPS_MLRUNS_DIR": str(home / "mlruns"),
        "SLMOPS_CACHE_DIR": str(home / "cache"),
        "SLMOPS_CONFIG_DIR": str(REPO_ROOT / "configs"),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def apply_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    from slmops.settings import get_settings

    for key in UNSET:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own artifacts, MLflow store, caches and Hub cache."""
    from slmops.settings import get_settings
    from tests.support.mlflowserver import forget_mlflow_uris

    home = tmp_path / "home"
    apply_env(monkeypatch, isolated_env(home))
    yield home
    get_settings.cache_clear()
    # slmops's connect() points mlflow at this test's store, and mlflow copies that into MLFLOW_TRACKING_URI and
    # MLFLOW_REGISTRY_URI: left set, a later test's clients and the processes it starts (stack workers) would
    # read this test's registry
    forget_mlflow_uris()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """HF folders of a tiny Llama and a tiny sentence-transformers BERT, built once per session."""
    from tests.support.tiny import build_tiny_bert, build_tiny_llama

    root = tmp_path_factory.mktemp("tiny-models")
    llama, bert = root / "tiny-llama", root / "tiny-bert"
    return {"tiny-llama": (llama, build_tiny_llama(llama)), "tiny-bert": (bert, build_tiny_bert(bert))}


@pytest.fixture()
def hub(tiny_models: dict[str, tuple[Path, dict]]):
    """A Hub-compatible server on 127.0.0.1 serving the tiny models as tiny/<id>."""
    from tests.support.hubserver import HubServer

    with HubServer() as server:
        for vid, (folder, _) in tiny_models.items():
            server.state.publish_folder(f"tiny/{vid}", folder)
        yield server


def tiny_env(home: Path, tiny_models: dict[str, tuple[Path, dict]], endpoint: str) -> dict[str, str]:
    """isolated_env plus configs/ for a pipeline over the tiny models served at ``endpoint``."""
    from tests.support.tiny import write_configs

    config_dir = home / "configs"
    write_configs(config_dir, variants={vid: facts for vid, (_, facts) in tiny_models.items()})
    return {**isolated_env(home), "SLMOPS_CONFIG_DIR": str(config_dir), "HF_ENDPOINT": endpoint, "SLMOPS_THREADS": "1"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The fault tests' ledger: how many faults were injected, recovered, and corrupt files left (must be 0)."""
    module = sys.modules.get("tests.integration.test_fetch_hub")
    if module is not None and module.FAULTS["injected"]:
        terminalreporter.write_line(module.fault_summary())
