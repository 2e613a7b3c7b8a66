"""The whole pipeline on tiny random models: Hub server -> Prefect flow -> MLflow registry -> loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmops.errors import IntegrityError, MemoryBudgetError, NoEligibleModelError
from slmops.runtime.states import LoadingState


@pytest.fixture()
def built(tiny_project):
    """Run the real Prefect flow over both tiny variants."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.build import build

    with prefect_test_harness(server_startup_timeout=120):
        decisions = build()
    return tiny_project, decisions


def test_flow_builds_registers_and_recommends(built) -> None:
    project, decisions = built
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
            assert bench["pid"] != __import__("os").getpid() and bench["torch_imported"] is False
            assert bench["peak_rss_mb"] >= bench["rss_after_load_mb"] > 0 and bench["size_mb"] > 0
    llama_gates = json.loads(project.gate_file("tiny-llama").read_text())["candidates"]
    assert llama_gates["wo-int8"]["metrics"]["ppl_ratio"] < llama_gates["wo-int4"]["metrics"]["ppl_ratio"]
    # recommendations: aliases point at eligible versions; the impossible use case gets none, with reasons
    assert decisions["chat-test"]["alias_uri"] == "models:/slmops-causal-lm@chat-test"
    assert decisions["embed-test"]["alias_uri"] == "models:/slmops-sentence-embedding@embed-test"
    assert decisions["tiny-memory"]["chosen"] is None and "peak RSS" in decisions["tiny-memory"]["why"]
    assert json.loads(project.recommendations_file().read_text()).keys() == decisions.keys()


def test_registry_contents_and_idempotent_register(built) -> None:
    import mlflow

    from slmops import pipeline
    from slmops.register.store import connect

    project, _ = built
    client = connect(project.settings)
    versions = client.search_model_versions("name='slmops-causal-lm'")
    gates = json.loads(project.gate_file("tiny-llama").read_text())["candidates"]
    passed = {r for r, g in gates.items() if g["passed"]}
    assert {v.tags["slmops.recipe"] for v in versions} == passed
    for v in versions:
        assert {"slmops.variant", "slmops.precision", "slmops.device", "slmops.revision"} <= set(v.tags)
        assert len(v.tags["slmops.revision"]) == 40
    runs = mlflow.search_runs(experiment_names=["slmops"])
    assert len(runs) == 5  # one per candidate, failed gates included
    assert {"metrics.quality.ppl_ratio", "metrics.bench.decode_tok_s", "metrics.bench.items_per_s"} <= set(runs.columns)
    pipeline.register(project, "tiny-llama")  # same candidates again: new runs, no new versions
    assert len(client.search_model_versions("name='slmops-causal-lm'")) == len(versions)


def test_load_generate_chat_stream_embed(built) -> None:
    from slmops import load

    events = []
    chat = load("chat-test", on_state=events.append)
    assert [e.state for e in events] == [LoadingState.NOT_LOADED, LoadingState.DOWNLOADING, LoadingState.DOWNLOADING,
                                         LoadingState.LOADING, LoadingState.LOADED]
    options = dict(max_tokens=12, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True)
    text = chat.generate("The sun rises", **options)
    assert text == "".join(chat.stream("The sun rises", **options))
    assert text == chat.generate("The sun rises", **options)  # seeded: reproducible
    assert chat.chat([{"role": "user", "content": "hello"}], max_tokens=5, temperature=0) is not None
    assert len(chat.generate_batch(["a", "b"], max_tokens=3, temperature=0)) == 2
    enc = load("models:/slmops-sentence-embedding@embed-test")
    vecs = enc.embed(["a man is eating food", "a man is eating bread", "the stock market fell"])
    assert vecs.shape == (3, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    best = load(task="causal-lm", max_memory_mb=4096)
    assert best.card.task == "causal-lm"
    with pytest.raises(NoEligibleModelError, match="peak RSS"):
        load(task="causal-lm", max_memory_mb=1)


def test_loader_guards(built, tmp_path: Path) -> None:
    from slmops import load
    from slmops.settings import get_settings

    project, _ = built
    with pytest.raises(MemoryBudgetError, match="max_memory_mb=1"):
        load(str(project.candidate_dir("tiny-llama", "wo-int8")), max_memory_mb=1)
    load("chat-test")  # fills the cache
    cached = next((get_settings().cache_dir / "models" / "slmops-causal-lm").glob("*/artifacts/*/model.onnx"))
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    events = []
    with pytest.raises(IntegrityError, match="sha256"):
        load("chat-test", on_state=events.append)
    assert events[-1].state == LoadingState.FAILED and "sha256" in events[-1].detail


def test_pyfunc_round_trip(built) -> None:
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/slmops-causal-lm@chat-test")
    out = model.predict(pd.DataFrame({"prompt": ["The sun", "Water"]}), params={"max_tokens": 4, "temperature": 0.0})
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    enc = mlflow.pyfunc.load_model("models:/slmops-sentence-embedding@embed-test")
    vecs = enc.predict(pd.DataFrame({"text": ["hello", "world"]}))
    assert len(vecs) == 2 and len(vecs[0]) == 32


def test_cli_generate_uses_the_alias(built) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "generate", "chat-test", "--prompt", "The sun", "--max-tokens", "4",
         "--temperature", "0"], capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    bad = subprocess.run([sys.executable, "-m", "slmops.cli", "generate", "chat-test", "--prompt", "x", "--top-p", "2"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "top_p=2.0" in bad.stderr and "Traceback" not in bad.stderr
