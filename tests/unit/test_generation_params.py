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
