"""The light registry readers answer as mlflow's own client does, on the same store."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from slmops.errors import RegistryError
from slmops.names import TAG_DIGEST, TAG_GATE, TAG_RECIPE, TAG_VARIANT
from slmops.runtime.registry import (
    MlflowRegistryReader,
    SqliteRegistryReader,
    registry_reader,
    resolve_version,
)
from slmops.settings import get_settings
from tests.support.registry import TARGETS


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A SQLite registry written by mlflow: two models, a deleted version, aliases, digest tags."""
    home = tmp_path_factory.mktemp("registry")
    mp = pytest.MonkeyPatch()
    mp.setenv("SLMOPS_MLRUNS_DIR", str(home / "mlruns"))
    mp.delenv("SLMOPS_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    client = MlflowRegistryReader(settings).client
    for name in ("slmops-causal-lm", "slmops-sentence-embedding"):
        client.create_registered_model(name)
    for i in range(3):
        tags = {TAG_DIGEST: f"d{i}", TAG_GATE: "passed" if i else "failed", TAG_VARIANT: "v", TAG_RECIPE: f"r{i}"}
        client.create_model_version("slmops-causal-lm", source=f"file://{home}/lm/{i}", tags=tags)
    client.create_model_version("slmops-sentence-embedding", source=f"file://{home}/emb/0")  # no digest tag
    client.delete_model_version("slmops-causal-lm", "2")
    client.set_registered_model_alias("slmops-causal-lm", "chat-cpu", "3")
    client.set_registered_model_alias("slmops-sentence-embedding", "embeddings-cpu", "1")
    yield settings
    mp.undo()
    get_settings.cache_clear()


def _answer(target: str, reader, settings):
    try:
        return resolve_version(target, reader=reader, settings=settings)
    except RegistryError as exc:
        return type(exc)


@pytest.mark.parametrize("target", TARGETS)
def test_sqlite_reader_agrees_with_mlflow(store, target: str) -> None:
    db = store.mlruns_dir / "mlflow.db"
    light, reference = SqliteRegistryReader(db), MlflowRegistryReader(store)
    assert _answer(target, light, store) == _answer(target, reference, store)


def test_sqlite_reader_lists_aliases_and_reads_gate_tags_as_mlflow_does(store) -> None:
    light, reference = SqliteRegistryReader(store.mlruns_dir / "mlflow.db"), MlflowRegistryReader(store)
    assert (
        light.aliases()
        == reference.aliases()
        == [
            ("chat-cpu", "slmops-causal-lm"),
            ("embeddings-cpu", "slmops-sentence-embedding"),
        ]
    )
    for version in ("1", "3"):
        assert light.version("slmops-causal-lm", version) == reference.version("slmops-causal-lm", version)
    first = light.version("slmops-causal-lm", "1")
    assert (first.gate, first.variant, first.recipe) == ("failed", "v", "r0")
    assert light.version("slmops-sentence-embedding", "1").gate is None  # registered without the tag


def test_answers_are_the_expected_ones(store) -> None:
    reader = registry_reader(store)
    ref = resolve_version("chat-cpu", reader=reader, settings=store)
    assert (ref.name, ref.version, ref.digest, ref.uri) == ("slmops-causal-lm", "3", "d2", "models:/slmops-causal-lm/3")
    assert ref.source == f"file://{store.mlruns_dir.parent}/lm/2"  # the source it was registered with
    with pytest.raises(RegistryError, match=r"no registered model has the alias 'nope'.*slmops recommend"):
        resolve_version("nope", reader=reader, settings=store)
    with pytest.raises(RegistryError, match=r"models:/slmops-causal-lm/2 does not resolve"):
        resolve_version("models:/slmops-causal-lm/2", reader=reader, settings=store)  # deleted
    with pytest.raises(RegistryError, match=r"'models:/x/latest' is not models:/<name>/<version>"):
        resolve_version("models:/x/latest", reader=reader, settings=store)


def test_light_reader_is_chosen_for_sqlite_and_does_not_import_mlflow(store) -> None:
    code = (
        "import sys\nfrom slmops.settings import get_settings\n"
        "from slmops.runtime.registry import registry_reader, resolve_version\n"
        "s = get_settings(); r = registry_reader(s)\n"
        "print(resolve_version('chat-cpu', reader=r, settings=s).version, type(r.reader).__name__, 'mlflow' in sys.modules)"
    )
    env = {**os.environ, "SLMOPS_MLRUNS_DIR": str(store.mlruns_dir)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == ["3", "SqliteRegistryReader", "False"]


def test_unreadable_store_falls_back_to_mlflow(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_TRACKING_URI", f"sqlite:///{tmp_path}/missing.db")
    get_settings.cache_clear()
    assert isinstance(registry_reader(get_settings()), MlflowRegistryReader)
