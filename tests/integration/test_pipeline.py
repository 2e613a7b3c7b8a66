"""The whole pipeline on tiny random models: Hub server -> Prefect flow -> MLflow registry -> loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmops.artifacts import read_manifest
from slmops.errors import IntegrityError, MemoryBudgetError, NoEligibleModelError
from slmops.runtime.states import LoadingState


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    """Run the real Prefect flow once over both tiny variants fetched from a loopback Hub."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import build
    from slmops.project import Project
    from tests.conftest import apply_env, tiny_env
    from tests.support.hubserver import HubServer

    home = tmp_path_factory.mktemp("built")
    mp = pytest.MonkeyPatch()
    try:
        with HubServer() as hub:
            for vid, (folder, _) in tiny_models.items():
                hub.state.publish_folder(f"tiny/{vid}", folder)
            env = tiny_env(home, tiny_models, hub.endpoint)
            apply_env(mp, env)
            project = Project.load()
            with prefect_test_harness(server_startup_timeout=120):
                decisions = build().model_dump()["usecases"]
        yield project, decisions, env
    finally:
        mp.undo()


@pytest.fixture(autouse=True)
def _built_env(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests in this module use the built project's stores instead of a fresh temp dir."""
    from tests.conftest import apply_env

    apply_env(monkeypatch, built[2])


def test_flow_builds_registers_and_recommends(built) -> None:
    project, decisions, _ = built
    # every stage left a complete, manifested folder / file
    for vid in ("tiny-llama", "tiny-bert"):
        fetch_manifest = json.loads((project.fetch_dir(vid) / "slmops-manifest.json").read_text())
        assert fetch_manifest["source"] == "hub" and len(fetch_manifest["revision"]) == 40
        assert "model.safetensors" in fetch_manifest["files"]
        assert (project.export_dir(vid) / "model.onnx").is_file()
        gates = json.loads(project.gate_file(vid).read_text())
        assert gates["candidates"]["fp32"]["passed"] is True
        for recipe in project.config.selection[vid].recipes:
            bench = json.loads(project.bench_file(vid, recipe).read_text())
            ran = bench["profiles"]["cpu-1t"]
            assert ran["pid"] != os.getpid() and ran["torch_imported"] is False  # a separate, torch-free process
            assert bench["headline_profile"] == "cpu-1t" and bench["context"]["threads"] == 1
            assert bench["context"]["cpu"] and isinstance(bench["context"]["cpu_flags"], list)  # the CPU is named
            assert bench["peak_rss_mb"] >= bench["rss_after_load_mb"] > bench["profiles"]["cpu-1t"]["rss_start_mb"] > 0
            assert bench["size_mb"] > 0 and bench["load_s"] > 0
            if "cuda" not in __import__("onnxruntime").get_available_providers():
                assert (
                    bench["profiles"]["cuda"]["skipped"]
                    and "CUDAExecutionProvider" in bench["profiles"]["cuda"]["reason"]
                )
            if vid == "tiny-llama":
                assert set(ran["by_prompt_tokens"]) == {"8", "16"}
                for row in ran["by_prompt_tokens"].values():
                    assert row["ttft_ms"] > 0 and row["decode_tok_s"] > 0
                    assert row["token_latency_ms"]["p95"] >= row["token_latency_ms"]["p50"] > 0
                assert bench["decode_tok_s"] == ran["by_prompt_tokens"]["16"]["decode_tok_s"]
            else:
                assert (
                    set(ran["by_batch_size"]) == {"1", "8"}
                    and bench["items_per_s"] == ran["by_batch_size"]["8"]["items_per_s"]
                )
                assert ran["latency_ms_batch1"]["p95"] >= ran["latency_ms_batch1"]["p50"] > 0
    llama_gates = json.loads(project.gate_file("tiny-llama").read_text())["candidates"]
    int8, int4 = (abs(llama_gates[r]["metrics"]["ppl_ratio"] - 1) for r in ("wo-int8", "wo-int4"))
    assert int8 < int4  # 8-bit weights stay closer to fp32 than 4-bit ones
    # recommendations: aliases point at eligible versions; the impossible use case gets none, with reasons
    assert decisions["chat-test"]["alias_uri"] == "models:/slmops-causal-lm@chat-test"
    assert decisions["embed-test"]["alias_uri"] == "models:/slmops-sentence-embedding@embed-test"
    assert decisions["tiny-memory"]["chosen"] is None and "peak RSS" in decisions["tiny-memory"]["why"]
    assert json.loads(project.recommendations_file().read_text())["usecases"].keys() == decisions.keys()


def test_registry_contents_and_idempotent_register(built) -> None:
    import mlflow

    from slmops import pipeline
    from slmops.runtime.registry import connect

    project, _, _ = built
    client = connect(project.settings)
    versions = client.search_model_versions("name='slmops-causal-lm'")
    gates = json.loads(project.gate_file("tiny-llama").read_text())["candidates"]
    passed = {r for r, g in gates.items() if g["passed"]}
    assert {v.tags["slmops.recipe"] for v in versions} == passed
    for v in versions:
        assert {"slmops.variant", "slmops.precision", "slmops.device", "slmops.revision"} <= set(v.tags)
        assert len(v.tags["slmops.revision"]) == 40
    runs = mlflow.search_runs(experiment_names=["slmops"])
    candidates = runs[runs["tags.slmops.variant"].notna()]
    assert len(candidates) == 5  # one per candidate, failed gates included
    summary = runs[runs["tags.slmops.kind"] == "recommend"]
    assert len(summary) == 1
    plots = {a.path for a in mlflow.MlflowClient().list_artifacts(summary.iloc[0]["run_id"], "plots")}
    assert plots == {"plots/pareto-causal-lm.png", "plots/pareto-sentence-embedding.png"}
    assert (project.plots_dir() / "pareto-causal-lm.png").stat().st_size > 1000
    assert {
        "metrics.quality.ppl_ratio",
        "metrics.bench.decode_tok_s",
        "metrics.bench.items_per_s",
        "metrics.bench.cpu-1t.ttft_ms.p8",
        "metrics.estimate.error",
    } <= set(runs.columns)
    pipeline.register(project, "tiny-llama")  # same candidates again: new runs, no new versions
    assert len(client.search_model_versions("name='slmops-causal-lm'")) == len(versions)


def test_load_generate_chat_stream_embed(built) -> None:
    from slmops import load

    events = []
    chat = load("chat-test", on_state=events.append)
    assert [e.state for e in events] == [
        LoadingState.NOT_LOADED,
        LoadingState.DOWNLOADING,
        LoadingState.DOWNLOADING,
        LoadingState.LOADING,
        LoadingState.LOADED,
    ]
    # the registered folder is self-describing: recipe, gate result, and a manifest covering them
    gate = json.loads((chat.folder / "slmops-gate.json").read_text())
    manifest = read_manifest(chat.folder, verify=True)
    assert gate["passed"] and {"slmops-gate.json", "recipe.json", "tokenizer.json"} <= set(manifest.files)
    assert manifest.stage == "register" and manifest.info["gate_passed"] is True
    again = []
    load("chat-test", on_state=again.append)  # the verified cached copy is reused, not downloaded again
    assert [e.progress for e in again if e.state == LoadingState.DOWNLOADING] == [1.0]
    options = dict(max_tokens=12, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True)
    text = chat.generate("The sun rises", **options)
    assert text == "".join(chat.stream("The sun rises", **options))
    assert text == chat.generate("The sun rises", **options)  # seeded: reproducible
    greedy = {"max_tokens": 5, "temperature": 0, "ignore_eos": True}
    reply = chat.chat([{"role": "user", "content": "hello"}], **greedy)
    rendered = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"  # the tiny model's ChatML template
    assert reply and reply == chat.generate(rendered, **greedy)
    assert len(chat.generate_batch(["a", "b"], max_tokens=3, temperature=0)) == 2
    enc = load("models:/slmops-sentence-embedding@embed-test")
    vecs = enc.embed(["a man is eating food", "a man is eating bread", "the stock market fell"])
    assert vecs.shape == (3, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    best = load(task="causal-lm", max_memory_mb=4096)
    assert best.folder == chat.folder  # ranked as recommend ranked chat-test: the same version
    with pytest.raises(NoEligibleModelError, match="peak RSS"):
        load(task="causal-lm", max_memory_mb=1)


def test_loader_guards(built) -> None:
    from slmops import load
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    project, _, _ = built
    with pytest.raises(MemoryBudgetError, match="max_memory_mb=1"):
        load(str(project.candidate_dir("tiny-llama", "wo-int8")), max_memory_mb=1)
    load("chat-test")  # fills the cache
    cached = next((get_settings().cache_dir / "models" / "slmops-causal-lm").glob("*/artifacts/*/model.onnx"))
    good = cached.read_bytes()
    _flip(cached)
    load("chat-test")  # a corrupt cached copy is downloaded again
    assert cached.read_bytes() == good
    # corrupt the registry's own copy: the fresh download fails verification, clearly
    client = connect(get_settings())
    version = client.get_model_version_by_alias("slmops-causal-lm", "chat-test")
    # the local store keeps the version's artifacts as plain files under mlruns/artifacts
    root = Path(client.get_model_version_download_uri(version.name, version.version).removeprefix("file://"))
    assert root.is_relative_to(Path(get_settings().mlruns_dir).resolve())
    stored = next(root.glob("artifacts/*/model.onnx"))
    original = stored.read_bytes()
    try:
        _flip(stored)
        _flip(cached)
        events = []
        with pytest.raises(IntegrityError, match="sha256"):
            load("chat-test", on_state=events.append)
        assert events[-1].state == LoadingState.FAILED and "sha256" in events[-1].detail
    finally:
        stored.write_bytes(original)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_unload_and_memory_bounded_pool(built) -> None:
    from slmops import load
    from slmops.errors import ModelLoadError
    from slmops.runtime import ModelPool
    from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES

    project, _, _ = built
    chat = load("chat-test")
    chat.unload()
    assert not chat.is_loaded
    with pytest.raises(ModelLoadError, match="unloaded"):
        chat.generate("hi", max_tokens=2)
    folders = {r: str(project.candidate_dir("tiny-llama", r)) for r in ("fp32", "wo-int8")}
    sizes = {r: load(f).footprint_bytes for r, f in folders.items()}
    overhead = RUNTIME_OVERHEAD_BYTES / 2**20
    pool = ModelPool(max_memory_mb=overhead + (max(sizes.values()) * 1.5) / 2**20)  # room for one, not both
    a = pool.get(folders["fp32"])
    assert pool.get(folders["fp32"]) is a and pool.loaded() == [folders["fp32"]]
    b = pool.get(folders["wo-int8"])
    assert pool.loaded() == [folders["wo-int8"]] and not a.is_loaded and b.is_loaded  # LRU evicted
    assert pool.used_bytes <= pool.max_bytes
    pool.unload(folders["wo-int8"])
    assert pool.loaded() == [] and not b.is_loaded
    with pytest.raises(MemoryBudgetError, match="max_memory_mb"):
        ModelPool(max_memory_mb=overhead + 0.001).get(folders["fp32"])


def test_http_server(built) -> None:
    """The OpenAI-compatible server over the registry the flow built (test_openai_api.py drives it in full)."""
    from fastapi.testclient import TestClient

    from slmops.runtime import ModelPool
    from slmops.serve import ServeConfig, create_app

    config = ServeConfig.from_settings(allowed_hosts=("testserver",))  # TestClient's Host header
    client = TestClient(create_app(ModelPool(max_memory_mb=4096), config))
    body = {"model": "chat-test", "prompt": "The sun", "max_tokens": 6, "temperature": 0.8, "seed": 3}
    plain = client.post("/v1/completions", json=body)
    assert plain.status_code == 200 and plain.json()["system_fingerprint"].startswith("slmops-causal-lm/")
    text = plain.json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == text  # streamed == not streamed
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "chat-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0},
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["finish_reason"] in ("stop", "length")
    emb = client.post("/v1/embeddings", json={"model": "embed-test", "input": ["a", "b"]}).json()
    assert [len(d["embedding"]) for d in emb["data"]] == [32, 32]
    assert len(client.get("/ready").json()["loaded"]) == 2
    # bad input: one OpenAI-shaped error naming the field
    bad = client.post("/v1/completions", json={**body, "top_p": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"
    missing = client.post("/v1/completions", json={**body, "model": "no-such-alias"})
    assert missing.status_code == 404 and "no-such-alias" in missing.json()["error"]["message"]
    typo = client.post("/v1/completions", json={**body, "temprature": 1})
    assert typo.status_code == 400 and typo.json()["error"]["param"] == "temprature"
    wrong_task = client.post("/v1/embeddings", json={"model": "chat-test", "input": ["x"]})
    assert wrong_task.status_code == 400 and "causal-lm" in wrong_task.json()["error"]["message"]
    too_long = client.post("/v1/completions", json={**body, "stream": True, "max_tokens": 10_000})
    assert too_long.status_code == 400 and "context length" in too_long.json()["error"]["message"]


def test_pyfunc_round_trip(built) -> None:
    import mlflow.pyfunc
    import pandas as pd

    from slmops import load
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    connect(get_settings())  # points mlflow at the built store, as MLFLOW_TRACKING_URI would
    model = mlflow.pyfunc.load_model("models:/slmops-causal-lm@chat-test")
    out = model.predict(pd.DataFrame({"prompt": ["The sun", "Water"]}), params={"max_tokens": 4, "temperature": 0.0})
    assert len(out) == 2 and all(out)  # real completions, so the comparison below is not between empty strings
    chat = load("chat-test")  # the pyfunc batches plain prompts: the same texts as one at a time
    assert list(out) == [chat.generate(p, max_tokens=4, temperature=0.0) for p in ("The sun", "Water")]
    enc = mlflow.pyfunc.load_model("models:/slmops-sentence-embedding@embed-test")
    vecs = enc.predict(pd.DataFrame({"text": ["hello", "world"]}))
    assert len(vecs) == 2 and len(vecs[0]) == 32


def test_cli_generate_uses_the_alias(built) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "slmops.cli",
            "generate",
            "chat-test",
            "--prompt",
            "The sun",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    cmd = [sys.executable, "-m", "slmops.cli", "generate", "chat-test", "--prompt", "The sun", "--max-tokens", "4"]
    drafted = subprocess.run(
        [*cmd, "--temperature", "0", "--prompt-lookup-tokens", "3"], capture_output=True, text=True
    )
    # the same greedy text on fp32 graphs (tests/integration/test_prompt_lookup.py); chat-test may be quantized
    assert drafted.returncode == 0, drafted.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "generate", "chat-test", "--prompt", "x", "--top-p", "2"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "top_p=2.0" in bad.stderr and "Traceback" not in bad.stderr
    sampled = subprocess.run([*cmd, "--prompt-lookup-tokens", "3"], capture_output=True, text=True)  # temperature 0.7
    assert sampled.returncode == 1 and "prompt_lookup_tokens=3" in sampled.stderr and "temperature=0" in sampled.stderr
    assert "Traceback" not in sampled.stderr


def test_readme_pyfunc_snippet_runs_as_written(built, tmp_path: Path) -> None:
    """The README's pyfunc block, run in a fresh interpreter from a project folder with no MLflow variables set."""
    import ast
    import re

    from slmops.runtime.registry import connect

    project, _, env = built
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"<!-- readme-test: pyfunc -->\n```python\n(.*?)```", readme, re.S).group(1)
    client = connect(project.settings)
    version = client.get_model_version_by_alias("slmops-causal-lm", "chat-test").version
    client.set_registered_model_alias("slmops-causal-lm", "chat-cpu", version)
    (tmp_path / "mlruns").symlink_to(project.settings.mlruns_dir.resolve(), target_is_directory=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SLMOPS_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ast.literal_eval(line) for line in out.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(len(batch) == 1 and isinstance(batch[0], str) and batch[0] for batch in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns"]  # MLflow left no mlflow.db or mlruns of its own


def test_runs_and_versions_are_readable_in_the_mlflow_ui(built) -> None:
    """Runs grouped by build (build id, flow run, git sha), named recipe first, with the recipe's real bits and
    granularity; registered models and versions carry descriptions."""
    from slmops import names
    from slmops.runtime.registry import connect

    project, _, _ = built
    client = connect(project.settings)
    version = client.get_model_version_by_alias("slmops-causal-lm", "chat-test")
    recipe = version.tags[names.TAG_RECIPE]
    runs = client.search_runs(
        [client.get_experiment_by_name(names.EXPERIMENT).experiment_id],
        filter_string=f"tags.`{names.TAG_VARIANT}` = 'tiny-llama' and tags.`{names.TAG_RECIPE}` = '{recipe}'",
    )
    assert runs and all(names.TAG_BUILD_ID in r.data.tags for r in runs)
    in_flow = [r for r in runs if names.TAG_FLOW_RUN in r.data.tags]  # the flow's; other tests re-register by hand
    assert in_flow and all(r.data.tags[names.TAG_FLOW_RUN] == r.data.tags[names.TAG_BUILD_ID] for r in in_flow)
    run = in_flow[0]
    assert run.info.run_name == f"{recipe} · tiny-llama · cpu"
    assert len(run.data.tags[names.TAG_GIT_SHA].removesuffix("-dirty")) == 40
    assert run.data.params["bits"] == str(project.recipes[recipe].weight_bits)
    assert run.data.params["granularity"] == project.recipes[recipe].granularity
    assert "tiny-llama" in version.description and "Gate passed" in version.description
    assert "causal-lm" in client.get_registered_model("slmops-causal-lm").description
