"""Prompt-lookup drafts (``prompt_lookup_tokens``) on both decoder graphs of the tiny Llama (fp32): the greedy tokens
of plain decoding, in fewer graph calls when the drafts hit."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.runtime.open import open_folder
from slmops.runtime.params import GenerationParams

PROMPTS = [
    "The sun rises in the east and sets in the west. The sun rises in the east and sets in the",
    "Water boils at one hundred degrees and the kettle",
    "a",
]


@pytest.fixture(scope="module", params=["optimum", "genai"])
def model(request, tiny_llama_export):
    return open_folder(tiny_llama_export(request.param))


def _tokens(model, prompt: str, **options) -> list[int]:
    return list(model.token_stream(model.prompt_ids(prompt), GenerationParams(temperature=0.0, **options)))


@pytest.mark.parametrize("drafts", [1, 3, 16])
@pytest.mark.parametrize("max_tokens", [1, 2, 5, 40])
def test_drafted_tokens_are_the_greedy_ones(model, drafts: int, max_tokens: int) -> None:
    for prompt in PROMPTS:
        plain = _tokens(model, prompt, max_tokens=max_tokens, ignore_eos=True)
        assert len(plain) == max_tokens
        assert _tokens(model, prompt, max_tokens=max_tokens, ignore_eos=True, prompt_lookup_tokens=drafts) == plain


@pytest.mark.parametrize("kind", ["oracle", "last-wrong", "wrong"])
def test_accepted_drafts_cut_the_graph_calls(model, monkeypatch, kind: str) -> None:
    """Drafts taken from the greedy output itself (all accepted), with their last token wrong (all but one), or all
    wrong: the tokens stay the greedy ones, and the graph calls fall with the accepted drafts."""
    from slmops.runtime import decoder

    ids = model.prompt_ids(PROMPTS[1])
    plain = _tokens(model, PROMPTS[1], max_tokens=30, ignore_eos=True)
    greedy = ids + plain

    def draft(seen: np.ndarray, size: int, **_) -> list[int]:
        assert seen.tolist() == greedy[: len(seen)]  # the drafted run saw the greedy tokens so far
        truth = greedy[len(seen) : len(seen) + size]
        if kind == "wrong":
            return [(t + 1) % 400 for t in truth]
        return truth[:-1] + [(truth[-1] + 1) % 400] if kind == "last-wrong" and truth else truth

    calls: list[int] = []
    forward = model.graph.forward

    def counted(fed, cache, **kwargs):
        calls.append(fed.shape[1])
        return forward(fed, cache, **kwargs)

    monkeypatch.setattr(decoder, "lookup_draft", draft)
    monkeypatch.setattr(model.graph, "forward", counted)
    if kind == "oracle":  # the sizer's own choice: it grows the drafts as they keep being accepted
        assert _tokens(model, PROMPTS[1], max_tokens=30, ignore_eos=True, prompt_lookup_tokens=4) == plain
        assert max(calls[1:]) == 5 and len(calls) - 1 < 30 // 2
        calls.clear()
    monkeypatch.setattr(decoder.DraftSizer, "size", lambda self: self.limit)  # a fixed draft size from here
    assert _tokens(model, PROMPTS[1], max_tokens=30, ignore_eos=True, prompt_lookup_tokens=4) == plain
    steps = len(calls) - 1  # the prompt pass made the first call
    if kind == "oracle":  # each call yields its token and 4 accepted drafts
        assert max(calls[1:]) == 5 and steps == -(-(30 - 1) // 5)
    elif kind == "last-wrong":  # 3 of 4 accepted, the 4th replaced by the sampled token
        assert steps == -(-(30 - 1) // 4)
    else:
        assert steps == 30 - 1


def test_end_and_stop_tokens_end_a_drafted_generation_where_they_end_a_plain_one(model) -> None:
    plain = _tokens(model, PROMPTS[0], max_tokens=40, ignore_eos=True)
    stop = plain[len(plain) // 2]  # a token the greedy output reaches, perhaps also drafted before it
    for options in ({"stop_token_ids": (stop,)}, {"repetition_penalty": 1.3}):
        expected = _tokens(model, PROMPTS[0], max_tokens=40, ignore_eos=True, **options)
        assert _tokens(model, PROMPTS[0], max_tokens=40, ignore_eos=True, prompt_lookup_tokens=3, **options) == expected
    assert stop not in _tokens(model, PROMPTS[0], max_tokens=40, ignore_eos=True, stop_token_ids=(stop,))


def test_text_streams_the_same_with_drafts(model) -> None:
    options = dict(max_tokens=24, temperature=0.0, ignore_eos=True)
    plain = model.generate(PROMPTS[0], **options)
    assert model.generate(PROMPTS[0], prompt_lookup_tokens=5, **options) == plain
    chunks = list(model.stream(PROMPTS[0], prompt_lookup_tokens=5, **options))
    assert "".join(chunks) == plain and len(chunks) > 1


def test_a_draft_never_outgrows_the_cache(model) -> None:
    """Drafts are cut to what max_tokens can still yield: the cache holds prompt + max_tokens positions exactly."""
    ids = model.prompt_ids(PROMPTS[0])
    repeated = ids + ids  # every suffix occurs earlier: a full draft is on offer at each step
    for max_tokens in (1, 2, 3, 9):
        params = GenerationParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, prompt_lookup_tokens=16)
        plain = GenerationParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        assert list(model.token_stream(repeated, params)) == list(model.token_stream(repeated, plain))
    assert np.asarray(repeated).size == 2 * len(ids)
