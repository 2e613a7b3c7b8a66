"""Every test runs with its own artifacts, MLflow store, caches and Hub cache in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every store slmops, MLflow, Prefect and huggingface_hub use at a temp dir."""
    from slmops.settings import get_settings

    home = tmp_path / "home"
    env = {
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
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("SLMOPS_TRACKING_URI", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "SLMOPS_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


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


@pytest.fixture()
def tiny_project(isolated: Path, tiny_models, hub, monkeypatch: pytest.MonkeyPatch):
    """Settings + configs for a pipeline over the tiny models served by ``hub``."""
    from slmops.project import Project
    from slmops.settings import get_settings
    from tests.support.tiny import write_configs

    config_dir = isolated / "configs"
    write_configs(config_dir, variants={vid: facts for vid, (_, facts) in tiny_models.items()})
    monkeypatch.setenv("SLMOPS_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("SLMOPS_THREADS", "1")
    get_settings.cache_clear()
    return Project.load()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
