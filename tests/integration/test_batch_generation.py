"""A batch of prompts, one graph call per step: each row as if generated alone, on both decoder graphs."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.errors import ContextLengthError, GenerationParamsError
from slmops.runtime.open import open_folder

PROMPTS = [
    "The sun",
    "Water boils at one hundred degrees and the kettle",
    "a",
    "The sun rises in the east and sets in the west, every single day of the year, as",
]


@pytest.fixture(scope="module", params=["optimum", "genai"])
def model(request, tiny_llama_export):
    return open_folder(tiny_llama_export(request.param))


def test_greedy_batch_equals_each_prompt_alone(model) -> None:
    options = dict(max_tokens=16, temperature=0.0, ignore_eos=True)
    alone = [model.generate(p, **options) for p in PROMPTS]
    assert model.generate_batch(PROMPTS, **options) == alone
    assert model.generate_batch(PROMPTS, batch_size=3, **options) == alone  # a full and a partial batch
    assert len(set(alone)) > 1  # the prompts do lead to different texts


def test_prefill_logits_match_the_unpadded_run(model) -> None:
    from slmops.runtime.batch import PADDING

    rows = [model.prompt_ids(p) for p in PROMPTS]
    runner = PADDING[model.card.graph](model.graph, rows, pad_id=0, capacity=max(map(len, rows)) + 1)
    for b, row in enumerate(rows):
        np.testing.assert_allclose(runner.logits[b], model.logits(row)[-1], atol=1e-4)


def test_rows_stop_independently(model) -> None:
    options = dict(max_tokens=16, temperature=0.0, ignore_eos=True)
    full = model.generate_batch(PROMPTS, **options)
    stop = full[1][3:6]  # a stop string that cuts the second row early
    ids = model.prompt_ids(PROMPTS[0])
    stop_token = next(iter(model.token_stream(ids, model_params(options))))  # the first row's first token
    for extra in (dict(stop=[stop]), dict(stop_token_ids=[stop_token]), dict(max_tokens=5)):
        merged = {**options, **extra}
        assert model.generate_batch(PROMPTS, **merged) == [model.generate(p, **merged) for p in PROMPTS], extra
    cut = model.generate_batch(PROMPTS, **options, stop=[stop])
    assert cut[1] == full[1][: full[1].index(stop)] and cut[2] == model.generate(PROMPTS[2], **options, stop=[stop])


def model_params(options: dict):
    from slmops.runtime.params import GenerationParams

    return GenerationParams.build(**options)


def test_eos_ends_a_row_without_ending_the_others(model) -> None:
    options = dict(max_tokens=12, temperature=0.0)
    ids = model.prompt_ids(PROMPTS[2])
    first = next(iter(model.token_stream(ids, model_params({**options, "ignore_eos": True}))))
    model.card.eos_token_ids.append(first)  # make row 2 end at once, as an end token would
    try:
        out = model.generate_batch(PROMPTS, **options)
        assert out[2] == "" and out == [model.generate(p, **options) for p in PROMPTS]
    finally:
        model.card.eos_token_ids.remove(first)


def test_seeded_sampling_is_reproducible_and_matches_alone(model) -> None:
    options = dict(max_tokens=12, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    batch = model.generate_batch(PROMPTS, **options)
    assert batch == model.generate_batch(PROMPTS, **options)
    assert batch == [model.generate(p, **options) for p in PROMPTS]
    assert batch != model.generate_batch(PROMPTS, **{**options, "seed": 8})


def test_batch_errors_name_the_value(model) -> None:
    with pytest.raises(GenerationParamsError, match=r"prompts=\[\] must be a non-empty list"):
        model.generate_batch([])
    with pytest.raises(GenerationParamsError, match=r"prompts='hi' must be a non-empty list"):
        model.generate_batch("hi")
    with pytest.raises(GenerationParamsError, match=r"batch_size=0 must be a positive integer"):
        model.generate_batch(["hi"], batch_size=0)
    with pytest.raises(GenerationParamsError, match=r"prompt='' must be a non-empty string"):
        model.generate_batch(["hi", ""], max_tokens=4)
    with pytest.raises(ContextLengthError, match="max_tokens=300"):
        model.generate_batch(["hi"], max_tokens=300)


def test_optimized_graph_cache_reopens_the_same_model(model, tmp_path) -> None:
    ids = model.prompt_ids(PROMPTS[3])
    first = open_folder(model.folder, optimized_dir=tmp_path)  # optimizes and saves the graph
    entries = [p for p in tmp_path.iterdir() if p.name != "tokenizers"]
    assert len(entries) == 1 and (entries[0] / "model.onnx").is_file()
    assert [p.suffix for p in (tmp_path / "tokenizers").iterdir()] == [".json"]  # its quicker-to-parse copy
    written = (entries[0] / "model.onnx").stat().st_mtime_ns
    second = open_folder(model.folder, optimized_dir=tmp_path)  # opens the saved graph
    assert (entries[0] / "model.onnx").stat().st_mtime_ns == written
    for reopened in (first, second):
        np.testing.assert_allclose(reopened.logits(ids), model.logits(ids), atol=1e-5)
    (entries[0] / "model.onnx").write_bytes(b"garbage")  # a damaged entry is rebuilt, not used
    third = open_folder(model.folder, optimized_dir=tmp_path)
    np.testing.assert_allclose(third.logits(ids), model.logits(ids), atol=1e-5)
    assert (entries[0] / "model.onnx").stat().st_size > 1000


def test_text_no_tokenizer_can_encode_is_a_clear_error(model) -> None:
    for call in (
        lambda: model.generate("a\ud800b", max_tokens=2),
        lambda: model.generate_batch(["fine", "a\ud800b"], max_tokens=2),
        lambda: model.chat([{"role": "user", "content": "\udfff"}], max_tokens=2),
        lambda: model.tokenizer.encode_batch([("query", "doc \ud800")], max_length=8),
    ):
        with pytest.raises(GenerationParamsError, match=r"unpaired surrogate .* at character \d+; pass valid Unicode"):
            call()
