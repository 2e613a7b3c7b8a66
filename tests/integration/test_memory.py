"""What keeps the runtime's memory down: chunked prompt passes and memory-mapped cached graphs, on the tiny Llama."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.export import export
from slmops.runtime import decoder
from slmops.runtime.open import open_folder
from tests.support.tiny import as_fetched

PROMPT = "The sun rises in the east and sets in the west, every single day of the year, as"


@pytest.fixture(scope="module")
def genai_folder(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    folder, facts = tiny_models["tiny-llama"]
    root = tmp_path_factory.mktemp("memory")
    src = root / "fetch"
    shutil.copytree(folder, src)
    export(as_fetched(src, "tiny-llama", facts), src=src, out=root / "genai", exporter="genai")
    return root / "genai"


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_prompt_pass_gives_the_logits_of_one_pass(genai_folder, monkeypatch, chunk: int) -> None:
    model = open_folder(genai_folder)
    ids = np.asarray([model.tokenizer.encode(PROMPT, add_special_tokens=True)], dtype=np.int64)
    assert ids.shape[1] > 2 * chunk  # several chunks, the last one partial for some sizes
    graph = model.graph
    whole, _ = graph.forward(ids, graph.empty_cache(capacity=ids.shape[1] + 4))
    monkeypatch.setattr(decoder, "PREFILL_CHUNK", chunk)
    last, cache = graph.prefill(ids, graph.empty_cache(capacity=ids.shape[1] + 4))
    assert cache.length == ids.shape[1]
    np.testing.assert_allclose(last[0], whole[0, -1], rtol=1e-5, atol=1e-5)


def test_generation_is_the_same_whatever_the_chunk(genai_folder, monkeypatch) -> None:
    model = open_folder(genai_folder)
    options = dict(max_tokens=12, temperature=0.0, ignore_eos=True)
    monkeypatch.setattr(decoder, "PREFILL_CHUNK", 10_000)
    whole = model.generate(PROMPT, **options)
    monkeypatch.setattr(decoder, "PREFILL_CHUNK", 4)
    assert model.generate(PROMPT, **options) == whole
    assert whole  # it did generate


def test_cached_graph_keeps_its_weights_in_a_mapped_file(genai_folder, tmp_path) -> None:
    first = open_folder(genai_folder, optimized_dir=tmp_path)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    data = entry / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 10 * (entry / "model.onnx").stat().st_size
    second = open_folder(genai_folder, optimized_dir=tmp_path)
    options = dict(max_tokens=8, temperature=0.0, ignore_eos=True)
    assert second.generate(PROMPT, **options) == first.generate(PROMPT, **options)
    if Path("/proc/self/maps").is_file():  # Linux: onnxruntime maps the external weights instead of reading them
        assert str(data.resolve()) in Path("/proc/self/maps").read_text()
