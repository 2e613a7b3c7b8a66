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
def genai_variant(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    folder, facts = tiny_models["tiny-llama"]
    root = tmp_path_factory.mktemp("memory")
    src = root / "fetch"
    shutil.copytree(folder, src)
    variant = as_fetched(src, "tiny-llama", facts)
    export(variant, src=src, out=root / "genai", exporter="genai")
    return variant, root / "genai"


@pytest.fixture(scope="module")
def genai_folder(genai_variant):
    return genai_variant[1]


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
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "tokenizers"]  # tokenizers: their copies
    data = entry / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 10 * (entry / "model.onnx").stat().st_size
    second = open_folder(genai_folder, optimized_dir=tmp_path)
    options = dict(max_tokens=8, temperature=0.0, ignore_eos=True)
    assert second.generate(PROMPT, **options) == first.generate(PROMPT, **options)
    if Path("/proc/self/maps").is_file():  # Linux: onnxruntime maps the external weights instead of reading them
        assert str(data.resolve()) in Path("/proc/self/maps").read_text()


# What the subprocess runs: open as slmops.load does (through the optimized-graph cache), generate, report VmHWM.
_MEASURE = """
import sys
from pathlib import Path
from slmops.runtime.open import open_folder
model = open_folder(Path(sys.argv[1]), threads=2, optimized_dir=Path(sys.argv[2]))
ids = model.prompt_ids("x " * 200)[: int(sys.argv[3])]
list(model.token_stream(ids, __import__("slmops.runtime.params").runtime.params.GenerationParams(
    max_tokens=int(sys.argv[4]), temperature=0.0, ignore_eos=True)))
print(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")).split()[1])
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from Linux /proc")
def test_estimate_is_near_the_measured_peak_of_a_tiny_model(genai_variant, tmp_path) -> None:
    """The tiny model weighs almost nothing: its peak is the runtime's fixed overhead (about 88 MiB) plus small
    per-vocabulary terms calibrated on SmolLM2, so the tolerance is 20%, wider than the 10% the real models
    are held to in tests/unit/test_estimate.py: an error in the overhead constant still fails it. Not 15%: two
    machines of the same kind ran the same code 14 MiB apart, all of it in the shared libraries' file-backed pages
    (2026-12-01: this peak 88.8 MiB, -15.6% from the estimate, on the second; tests/unit/test_estimate.py's rows)."""
    import subprocess
    import sys

    from slmops.catalog.estimate import estimate_memory

    variant, folder = genai_variant
    prompt, new = 24, 8
    cache = tmp_path / "optimized"
    run = [sys.executable, "-c", _MEASURE, str(folder), str(cache), str(prompt), str(new)]
    subprocess.run(run, check=True, capture_output=True)  # the first open writes the optimized graph
    measured = int(subprocess.run(run, check=True, capture_output=True, text=True).stdout.split()[-1]) * 1024
    est = estimate_memory(variant, precision="fp32", context_length=prompt + new, prompt_tokens=prompt, graph="genai")
    assert abs(est.total - measured) / measured < 0.20, (est, measured)


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="reads Linux /proc/self/smaps")
def test_prepacked_weights_leave_no_resident_pages_and_the_same_logits(genai_variant, tmp_path) -> None:
    """After the open, the mapped weights onnxruntime already prepacked (and MatMulNBits' scales, which it keeps
    but no longer reads) hold no resident pages, and the released session computes what an untouched one does."""
    import onnxruntime as ort

    from slmops.quantize import load_recipes, quantize
    from tests.unit.test_release_pages import _resident_kb

    variant, folder = genai_variant
    recipe = load_recipes(Path(__file__).resolve().parents[2] / "configs" / "recipes.yaml")["wo-int8"]
    cand = tmp_path / "wo-int8"
    quantize(variant, recipe, src=folder, out=cand, fetched=folder)
    model = open_folder(cand, threads=1, optimized_dir=tmp_path / "optimized")
    (entry,) = [p for p in (tmp_path / "optimized").iterdir() if p.is_dir() and p.name != "tokenizers"]
    assert str((entry / "model.onnx.data").resolve()) in Path("/proc/self/maps").read_text()
    assert _resident_kb(entry / "model.onnx.data") == 0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    untouched = ort.InferenceSession(str(entry / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    assert _resident_kb(entry / "model.onnx.data") > 0  # its pages, read while prepacking, stay
    ids = np.asarray([model.tokenizer.encode(PROMPT, add_special_tokens=True)], dtype=np.int64)
    graph = model.graph
    released, _ = graph.forward(ids, graph.empty_cache(capacity=ids.shape[1]))
    graph.session = untouched
    expected, _ = graph.forward(ids, graph.empty_cache(capacity=ids.shape[1]))
    np.testing.assert_array_equal(released, expected)
