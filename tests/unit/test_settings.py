"""Settings come from SLMOPS_* (and the HF/MLflow variables they alias); keywords win; bad values name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slmops.errors import ConfigError
from slmops.settings import Settings, env_vars


def test_environment_fills_what_keywords_leave(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLMOPS_THREADS", "3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings(mlruns_dir=tmp_path)
    assert settings.threads == 3
    assert settings.tracking_uri == "http://127.0.0.1:5999"
    assert settings.hf_offline is True
    assert settings.mlruns_dir == tmp_path
    assert Settings(threads=5).threads == 5  # a keyword beats the environment


def test_first_listed_variable_wins_and_names_ignore_case(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_vars("tracking_uri") == ["SLMOPS_TRACKING_URI", "MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://second")
    monkeypatch.setenv("SLMOPS_TRACKING_URI", "http://first")
    assert Settings().tracking_uri == "http://first"
    monkeypatch.delenv("SLMOPS_TRACKING_URI")
    monkeypatch.setenv("slmops_log_level", "info")
    settings = Settings()
    assert settings.tracking_uri == "http://second"
    assert settings.log_level == "INFO"


def test_unset_variables_give_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.field_names():
        for var in env_vars(name):
            monkeypatch.delenv(var, raising=False)
    settings = Settings()
    assert settings.tracking_uri is None
    assert settings.resolved_tracking_uri().startswith("sqlite:///")
    assert settings.device == "cpu"


@pytest.mark.parametrize(
    ("var", "value"),
    [("SLMOPS_THREADS", "abc"), ("SLMOPS_DEVICE", "tpu"), ("SLMOPS_HUB_TIMEOUT_S", "-1"), ("HF_HUB_OFFLINE", "maybe")],
)
def test_bad_variable_is_named_with_its_value(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        Settings()
    assert f"{var}={value!r}" in str(info.value)
    assert f"fix or unset {var}" in str(info.value)


def test_bad_keyword_is_named_without_blaming_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"threads=0: .*greater than or equal to 1") as info:
        Settings(threads=0)
    assert "unset" not in str(info.value)


def test_cli_reports_a_bad_variable_in_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "SLMOPS_THREADS": "many"}
    done = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "catalog", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "SLMOPS_THREADS='many'" in done.stderr
    assert "Traceback" not in done.stderr


def test_loader_import_stays_off_pydantic_settings_and_asyncio() -> None:
    code = (
        "import sys, slmops.runtime.loader; print(sorted({'pydantic_settings', 'asyncio', 'torch'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
