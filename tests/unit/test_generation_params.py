from __future__ import annotations

import numpy as np
import pytest

from slmops.errors import GenerationParamsError
from slmops.runtime.params import GenerationParams
from slmops.runtime.sampling import Sampler


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"temperature": -0.5}, "temperature=-0.5"),
        ({"top_p": 0}, "top_p=0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_k": -1}, "top_k=-1"),
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"repetition_penalty": 0}, "repetition_penalty=0"),
        ({"stop": [""]}, "stop"),
        ({"temprature": 1.0}, "unknown option 'temprature'"),
        ({"prompt_lookup_tokens": 17, "temperature": 0}, "prompt_lookup_tokens=17"),
        ({"prompt_lookup_tokens": 3, "temperature": 0.7}, "greedy decoding only: pass temperature=0"),
        ({"prompt_lookup_tokens": 3}, "prompt_lookup_tokens=3"),  # the default temperature samples
    ],
)
def test_invalid_params_name_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(GenerationParamsError) as err:
        GenerationParams.build(**kwargs)
    assert needle in str(err.value)


def test_stop_accepts_one_string() -> None:
    assert GenerationParams.build(stop="\n").stop == ("\n",)


LOGITS = np.array([0.1, 3.0, 2.9, -1.0, 0.5], dtype=np.float32)


def test_greedy_and_top_k_1_pick_the_argmax() -> None:
    assert Sampler(GenerationParams(temperature=0))(LOGITS, np.array([], dtype=np.int64)) == 1
    picks = {Sampler(GenerationParams(temperature=1.5, top_k=1, seed=s))(LOGITS, np.array([])) for s in range(20)}
    assert picks == {1}


def test_top_p_keeps_the_nucleus_only() -> None:
    picks = {Sampler(GenerationParams(temperature=1.0, top_p=0.6, seed=s))(LOGITS, np.array([])) for s in range(50)}
    assert picks <= {1, 2} and len(picks) == 2


def test_seed_makes_sampling_reproducible() -> None:
    def run(seed: int) -> list[int]:
        s = Sampler(GenerationParams(temperature=1.0, seed=seed))
        return [s(LOGITS, np.array([])) for _ in range(30)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_repetition_penalty_demotes_seen_tokens() -> None:
    params = GenerationParams(temperature=0, repetition_penalty=2.0)
    assert Sampler(params)(LOGITS, np.array([1])) == 2


@pytest.mark.parametrize(
    ("seen", "size", "draft"),
    [
        ([5, 1, 2, 3, 9, 9, 1, 2, 3], 3, [9, 9, 1]),  # the longest tail that occurs earlier: [1, 2, 3]
        ([5, 1, 2, 3, 9, 9, 1, 2, 3], 8, [9, 9, 1, 2, 3]),  # up to the end of what was seen
        ([1, 2, 7, 2, 8, 2], 2, [8, 2]),  # the latest occurrence of [2] wins
        ([4, 1, 2, 4, 1, 3, 1, 2], 2, [4, 1]),  # [1, 2] beats the later [2]-less [1]
        ([7, 7, 7, 7], 2, [7]),  # overlapping occurrences
        ([1, 2, 3], 2, []),  # nothing repeats
        ([4], 3, []),
        ([5, 1, 2, 3, 9, 9, 1, 2, 3], 0, []),
    ],
)
def test_lookup_draft_follows_the_latest_longest_match(seen: list[int], size: int, draft: list[int]) -> None:
    from slmops.runtime.decoder import lookup_draft

    assert lookup_draft(np.asarray(seen, dtype=np.int64), size) == draft


def test_draft_sizer_drafts_more_as_drafts_hit_and_stops_when_they_miss() -> None:
    from slmops.runtime.decoder import DRAFT_TOKEN_COST, DraftSizer

    sizer = DraftSizer(8, DRAFT_TOKEN_COST["quantized"])
    sizes = [sizer.size()]
    for _ in range(12):
        sizer.observe(max(sizes[-1], 1), max(sizes[-1], 1))  # every drafted token accepted
        sizes.append(sizer.size())
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] == 8
    for _ in range(12):
        sizer.observe(max(sizer.size(), 1), 0)  # every draft rejected at once
    assert sizer.size() == 0 and sizer.p <= DRAFT_TOKEN_COST["quantized"]
    steps = 0
    while sizer.size() == 0:  # no drafts, no evidence: the estimate drifts back and drafting is tried again
        sizer.observe(0, 0)
        steps += 1
    assert 1 < steps < 200 and sizer.size() == 1


def _reference(params: GenerationParams, logits: np.ndarray, rng: np.random.Generator) -> int:
    """The sampler as first written: a stable sort of the whole row, numpy's own choice()."""
    logits = logits.astype(np.float32) / params.temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]
        mask = np.zeros_like(probs, dtype=bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5, 0.999])
def test_sampling_picks_what_a_full_sort_and_numpys_choice_pick(top_p: float) -> None:
    rng = np.random.default_rng(0)
    for case in range(20):
        # a 49k row like SmolLM2's: peaked, flat, and with many ties (rounded logits) at the nucleus' edge
        logits = rng.normal(size=49152).astype(np.float32) * (0.5 if case % 3 == 0 else 4.0)
        if case % 2:
            logits = np.round(logits)
        params = GenerationParams(temperature=0.8, top_p=top_p, seed=case)
        ours, theirs = Sampler(params), np.random.default_rng(case)
        assert [ours(logits, np.array([])) for _ in range(5)] == [_reference(params, logits, theirs) for _ in range(5)]
