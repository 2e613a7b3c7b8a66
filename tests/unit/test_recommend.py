from __future__ import annotations

import pytest

from slmops.errors import NoEligibleModelError
from slmops.recommend.pareto import pareto_front
from slmops.runtime.ranking import Candidate, best, rank
from slmops.recommend.usecases import Constraints


def test_pareto_front_keeps_only_undominated_points() -> None:
    # (speed, ppl_ratio): lower ppl is better
    points = [(30.0, 1.00), (45.0, 1.01), (40.0, 1.05), (50.0, 1.27), (20.0, 1.30)]
    assert pareto_front(points, quality_higher=False) == [0, 1, 3]
    assert pareto_front([(1.0, 0.9), (2.0, 0.95)], quality_higher=True) == [1]


def _cand(version: str, recipe: str, *, gate: str = "passed", device: str = "cpu", **metrics: float) -> Candidate:
    tags = {"slmops.variant": "v", "slmops.recipe": recipe, "slmops.gate": gate, "slmops.device": device,
            "slmops.capabilities": "text_generation,chat"}
    return Candidate("slmops-causal-lm", version, tags, {f"bench.{k}" if not k.startswith("quality") else k.replace("_", ".", 1): v
                                                         for k, v in metrics.items()})


def test_rank_explains_every_rejection_and_picks_the_fastest_eligible() -> None:
    cands = [
        _cand("1", "fp32", decode_tok_s=30, peak_rss_mb=900, ttft_ms=200, quality_ppl_ratio=1.0),
        _cand("2", "wo-int8", decode_tok_s=45, peak_rss_mb=650, ttft_ms=220, quality_ppl_ratio=1.008),
        _cand("3", "wo-int4", gate="failed", decode_tok_s=50, peak_rss_mb=550, ttft_ms=280, quality_ppl_ratio=1.27),
        _cand("4", "fp16", device="cuda", decode_tok_s=400, peak_rss_mb=500, ttft_ms=10, quality_ppl_ratio=1.0),
    ]
    k = Constraints(task="causal-lm", device="cpu", capabilities=["chat"], max_memory_mb=800, max_latency_ms=1000)
    ranked = rank(cands, k, "decode_speed")
    assert [c.version for c in ranked][0] == "2"
    reasons = {c.version: c.rejected for c in ranked}
    assert reasons["1"] == ["peak RSS 900 MB > 800 MB"]
    assert reasons["3"] == ["failed its quality gate"]
    assert reasons["4"] == ["benchmarked on cuda, not cpu"]
    assert best(cands, k, "decode_speed", what="test").version == "2"
    strict = Constraints(task="causal-lm", max_memory_mb=600, min_quality=0.999)
    with pytest.raises(NoEligibleModelError) as err:
        best(cands, strict, "decode_speed", what="the strict use case")
    assert "wo-int8 v2" in str(err.value) and "ppl_ratio 1.008" in str(err.value)


def test_older_builds_of_the_same_candidate_are_superseded() -> None:
    cands = [
        _cand("2", "wo-int8", decode_tok_s=88, peak_rss_mb=600, ttft_ms=200, quality_ppl_ratio=1.005),  # old build
        _cand("6", "wo-int8", decode_tok_s=60, peak_rss_mb=600, ttft_ms=200, quality_ppl_ratio=1.005),
        _cand("7", "gguf-q4", decode_tok_s=70, peak_rss_mb=560, ttft_ms=200, quality_ppl_ratio=1.003),
        _cand("3", "wo-int8", device="cuda", decode_tok_s=300, peak_rss_mb=600, ttft_ms=20, quality_ppl_ratio=1.0),
    ]
    ranked = rank(cands, Constraints(task="causal-lm", device="cpu"), "decode_speed")
    reasons = {c.version: c.rejected for c in ranked}
    assert reasons["2"] == ["superseded by v6 (a newer build of the same variant, recipe and device)"]
    assert reasons["3"] == ["benchmarked on cuda, not cpu"]  # another device is another build
    assert [c.version for c in ranked][:2] == ["7", "6"]
