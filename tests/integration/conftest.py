"""A local MLflow registry holding one registered tiny candidate per task, shared by the serve and pyfunc tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# alias -> (variant id, task); each alias points at that variant's registered fp32 candidate
ALIASES = {
    "chat-test": ("tiny-llama", "causal-lm"),
    "embed-test": ("tiny-bert", "sentence-embedding"),
    "rerank-test": ("tiny-ce", "cross-encoder"),
    "fill-test": ("tiny-mlm", "fill-mask"),
}


@pytest.fixture(scope="session")
def tiny_registry(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, Path]]:
    """Export, gate and register (slmops's own stages) a tiny model of every task in a SQLite store, and set the
    aliases of ALIASES. Returns the environment pointing at the store and each alias's candidate folder."""
    from slmops.names import registered_model_name
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings
    from tests.conftest import apply_env, isolated_env
    from tests.support.mlflowserver import forget_mlflow_uris
    from tests.support.registry import register_candidates
    from tests.support.tiny import build_candidates, build_tiny_cross_encoder, build_tiny_masked_lm, from_folder

    home = tmp_path_factory.mktemp("tiny-registry")
    env = isolated_env(home)
    builders = {vid: from_folder(*tiny_models[vid]) for vid in ("tiny-llama", "tiny-bert")}
    builders |= {"tiny-ce": build_tiny_cross_encoder, "tiny-mlm": build_tiny_masked_lm}
    folders = {}
    mp = pytest.MonkeyPatch()
    try:
        apply_env(mp, env)
        for alias, (vid, task) in ALIASES.items():
            root = home / "build" / vid
            variant = build_candidates(root, vid, builders[vid], recipes=("fp32",))
            version = register_candidates(variant, root)["fp32"]
            connect(get_settings()).set_registered_model_alias(registered_model_name(task), alias, version)
            folders[alias] = root / "cand" / "fp32"
    finally:
        forget_mlflow_uris()
        mp.undo()
        get_settings.cache_clear()
    return env, folders


@pytest.fixture(scope="session")
def tiny_llama_export(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``exporter -> folder``: the tiny Llama fetched and exported once per exporter, for tests that only open it."""
    from slmops.export import export
    from tests.support.tiny import as_fetched

    folders: dict[str, Path] = {}

    def exported(exporter: str) -> Path:
        if exporter not in folders:
            folder, facts = tiny_models["tiny-llama"]
            root = tmp_path_factory.mktemp(f"tiny-llama-{exporter}")
            shutil.copytree(folder, root / "fetch")
            export(
                as_fetched(root / "fetch", "tiny-llama", facts), src=root / "fetch", out=root / "out", exporter=exporter
            )
            folders[exporter] = root / "out"
        return folders[exporter]

    return exported
