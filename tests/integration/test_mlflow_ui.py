"""What the MLflow UI shows of a registry slmops wrote, read back through MLflow's own client on a real SQLite
store: the experiment set up for comparison, params right for every recipe, versions linking to the run whose
numbers rank them, and a project folder that can be copied without writing into the original."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from slmops import names


def _register(home: Path, variant: Any, recipes: tuple[str, ...], build: str, mp: pytest.MonkeyPatch) -> dict:
    from slmops.settings import get_settings
    from tests.support.registry import register_candidates

    mp.setenv("SLMOPS_BUILD_ID", build)
    get_settings.cache_clear()
    return register_candidates(variant, home / "build", recipes=recipes)


@pytest.fixture()
def llama(tiny_models, isolated: Path) -> Any:
    """The tiny Llama exported and quantized (fp32, wo-int8) under the test's home."""
    from tests.support.tiny import build_candidates, from_folder

    return build_candidates(
        isolated / "build", "tiny-llama", from_folder(*tiny_models["tiny-llama"]), recipes=("fp32", "wo-int8")
    )


def test_recipes_log_bits_and_granularity() -> None:
    from slmops.quantize import load_recipes
    from tests.support.tiny import CONFIGS

    recipes = load_recipes(CONFIGS / "recipes.yaml")
    logged = {name: (r.weight_bits, r.granularity) for name, r in recipes.items()}
    assert logged["gguf-q4"] == (4, "block-32")
    assert logged["fp32"] == (32, "none")
    assert logged["fp16"] == (16, "none")
    assert logged["wo-int8"] == (8, "block-128, lm_head block-64")
    assert logged["wo-int4"] == (4, "block-32")
    assert logged["dyn-int8-pc"] == (8, "per-channel")
    for name, (bits, granularity) in logged.items():
        assert isinstance(bits, int) and granularity, name
        assert (bits == 32) == (recipes[name].precision == "fp32"), name


def test_experiment_runs_and_versions_for_comparison(llama, isolated: Path, monkeypatch) -> None:
    from slmops.register.store import compare_url, compare_view_state
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    first = _register(isolated, llama, ("fp32", "wo-int8"), "build-1", monkeypatch)
    second = _register(isolated, llama, ("fp32", "wo-int8"), "build-2", monkeypatch)
    assert first == second == {"fp32": "1", "wo-int8": "2"}  # identical candidates: versions reused
    client = connect(get_settings())
    experiment = client.get_experiment_by_name(names.EXPERIMENT)
    tags = experiment.tags

    assert tags[names.TAG_EXPERIMENT_KIND] == "custom_model_development"
    view = json.loads(tags[names.TAG_SAVED_VIEW_PREFIX + names.COMPARE_VIEW])
    assert view["name"] == names.COMPARE_VIEW_NAME
    state = json.loads(view["state"])
    assert state == compare_view_state()
    for column in ("bench.decode_tok_s", "bench.ttft_ms", "bench.peak_rss_mb", "bench.size_mb", "quality.ppl_ratio"):
        assert f"metrics.`{column}`" in state["selectedColumns"]
    assert f"tags.`{names.TAG_GATE}`" in state["selectedColumns"]
    url = compare_url(experiment.experiment_id)
    assert "workflowType=machine_learning" in url and f"viewStateShareKey={names.COMPARE_VIEW}" in url
    assert url in tags[names.TAG_NOTE]

    runs = client.search_runs([experiment.experiment_id], "tags.`slmops.recipe` != ''")
    assert len(runs) == 4
    for run in runs:
        params = run.data.params
        assert "None" not in params.values(), params
        assert params["bits"] == {"fp32": "32", "wo-int8": "8"}[params["recipe"]]
        assert params["granularity"] == {"fp32": "none", "wo-int8": "block-128, lm_head block-64"}[params["recipe"]]
        assert run.info.run_name.startswith(params["recipe"] + " · ")

    by_build = {(r.data.tags[names.TAG_BUILD_ID], r.data.params["recipe"]): r.info.run_id for r in runs}
    for recipe, version in second.items():
        mv = client.get_model_version(f"{names.REGISTERED_MODEL_PREFIX}-causal-lm", version)
        deciding = by_build[("build-2", recipe)]
        assert mv.run_id == by_build[("build-1", recipe)]  # MLflow's Source Run: the first build
        assert mv.tags[names.TAG_LATEST_RUN] == deciding  # the run recommend ranks by
        assert f"#/experiments/{experiment.experiment_id}/runs/{deciding})" in mv.description
        assert ", build build-2](" in mv.description
        assert mv.description.startswith(f"Recipe `{recipe}` on tiny-llama")
        assert "context 256 tokens" in mv.description  # from the model card


def test_an_existing_experiment_is_set_up_and_a_description_people_wrote_is_kept(isolated: Path) -> None:
    from slmops.register.store import ensure_experiment
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    client = connect(get_settings())
    experiment_id = client.create_experiment(names.EXPERIMENT)
    client.set_experiment_tag(experiment_id, names.TAG_EXPERIMENT_KIND, "genai_development")  # what the UI inferred
    client.set_experiment_tag(experiment_id, names.TAG_NOTE, "our notes")
    assert ensure_experiment(client, get_settings()) == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert tags[names.TAG_EXPERIMENT_KIND] == "custom_model_development"
    assert names.TAG_SAVED_VIEW_PREFIX + names.COMPARE_VIEW in tags
    assert tags[names.TAG_NOTE] == "our notes"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*"))}


def test_a_copied_project_never_writes_into_the_original(llama, isolated: Path, monkeypatch, tmp_path: Path) -> None:
    from tests.conftest import apply_env, isolated_env
    from tests.support.mlflowserver import forget_mlflow_uris

    _register(isolated, llama, ("fp32",), "in-a", monkeypatch)
    forget_mlflow_uris()
    a, b = isolated, tmp_path / "copy"
    shutil.copytree(a, b, symlinks=True)
    before = _snapshot(a)
    try:
        apply_env(monkeypatch, isolated_env(b))
        monkeypatch.chdir(b)
        _build_in_copy(a, b, llama, monkeypatch)
    finally:
        forget_mlflow_uris()
    assert _snapshot(a) == before, "the copy wrote into the original project"


def _build_in_copy(a: Path, b: Path, llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.recommend import recommend
    from slmops.recommend.usecases import UseCase
    from slmops.runtime.registry import connect, registry_reader
    from slmops.settings import get_settings

    versions = _register(b, llama, ("fp32", "wo-int8"), "in-b", monkeypatch)
    assert versions == {"fp32": "1", "wo-int8": "2"}  # fp32 reused, wo-int8 new
    usecase = UseCase(name="chat-copy", task="causal-lm", objective="decode_speed")
    assert recommend({"chat-copy": usecase}).usecases["chat-copy"].chosen

    client = connect(get_settings())
    experiment = client.get_experiment_by_name(names.EXPERIMENT)
    assert experiment.artifact_location == (b / "mlruns" / "artifacts").resolve().as_uri()
    for run in client.search_runs([experiment.experiment_id]):
        assert run.info.artifact_uri.startswith(experiment.artifact_location), run.info.artifact_uri
    for version in ("1", "2"):
        ref = registry_reader(get_settings()).version(f"{names.REGISTERED_MODEL_PREFIX}-causal-lm", version)
        assert ref is not None and str(b.resolve()) in ref.source and str(a.resolve()) not in ref.source, ref
        folder = Path(ref.source.removeprefix("file://"))
        assert folder.is_dir() and any(folder.rglob("model.onnx")), folder


def test_a_moved_store_is_re_rooted_once_and_only_under_its_own_folder(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from slmops.runtime.localstore import relocate
    from tests.support.mlflowserver import forget_mlflow_uris

    old, new = tmp_path / "a" / "mlruns", tmp_path / "b" / "mlruns"
    old.mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{old / 'mlflow.db'}")
    experiment_id = client.create_experiment(names.EXPERIMENT, artifact_location=(old / "artifacts").as_uri())
    run = client.create_run(experiment_id)
    sibling = (tmp_path / "a" / "mlruns-other" / "x").as_uri()  # shares the prefix "…/a/mlruns", not the folder
    other_id = client.create_experiment("other", artifact_location=sibling)
    forget_mlflow_uris()
    del client
    old.parent.rename(tmp_path / "b")

    artifact_root = (new / "artifacts").as_uri()
    db = new / "mlflow.db"
    assert relocate(db, artifact_root, experiment=names.EXPERIMENT) == 2  # the experiment and its run
    assert relocate(db, artifact_root, experiment=names.EXPERIMENT) == 0  # already where it lies
    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_experiment(experiment_id).artifact_location == artifact_root
    assert client.get_run(run.info.run_id).info.artifact_uri.startswith(artifact_root + "/")
    assert client.get_experiment(other_id).artifact_location == sibling
    assert relocate(tmp_path / "none.db", artifact_root, experiment=names.EXPERIMENT) == 0


def test_a_database_copied_without_its_artifacts_keeps_its_paths(tmp_path: Path) -> None:
    """Only mlflow.db copied: re-rooting would point every version at artifacts that are not there."""
    import shutil

    from mlflow import MlflowClient

    from slmops.runtime.localstore import relocate
    from tests.support.mlflowserver import forget_mlflow_uris

    old, new = tmp_path / "a" / "mlruns", tmp_path / "b" / "mlruns"
    (old / "artifacts").mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{old / 'mlflow.db'}")
    experiment_id = client.create_experiment(names.EXPERIMENT, artifact_location=(old / "artifacts").as_uri())
    forget_mlflow_uris()
    del client
    new.mkdir(parents=True)
    shutil.copy(old / "mlflow.db", new / "mlflow.db")
    assert relocate(new / "mlflow.db", (new / "artifacts").as_uri(), experiment=names.EXPERIMENT) == 0
    client = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    assert client.get_experiment(experiment_id).artifact_location == (old / "artifacts").as_uri()
