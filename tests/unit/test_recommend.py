from __future__ import annotations

import pytest

from slmops.errors import NoEligibleModelError
from slmops.recommend.pareto import pareto_front
from slmops.recommend.usecases import Constraints
from slmops.runtime.ranking import Candidate, best, rank


def test_pareto_front_keeps_only_undominated_points() -> None:
    # (speed, ppl_ratio): lower ppl is better
    points = [(30.0, 1.00), (45.0, 1.01), (40.0, 1.05), (50.0, 1.27), (20.0, 1.30)]
    assert pareto_front(points, quality_higher=False) == [0, 1, 3]
    assert pareto_front([(1.0, 0.9), (2.0, 0.95)], quality_higher=True) == [1]


def _cand(
    version: str,
    recipe: str,
    *,
    gate: str = "passed",
    device: str = "cpu",
    caps: str = "text_generation,chat",
    **metrics: float,
) -> Candidate:
    """A candidate of variant "v"; metric keywords name bench.<key> metrics, quality_<name> quality.<name> ones."""
    tags = {
        "slmops.variant": "v",
        "slmops.recipe": recipe,
        "slmops.gate": gate,
        "slmops.device": device,
        "slmops.capabilities": caps,
    }
    return Candidate("slmops-causal-lm", version, tags, {_metric(k): v for k, v in metrics.items()})


def _metric(key: str) -> str:
    return key.replace("_", ".", 1) if key.startswith("quality_") else f"bench.{key}"


def test_rank_explains_every_rejection_and_picks_the_fastest_eligible() -> None:
    cands = [
        _cand("1", "fp32", decode_tok_s=30, peak_rss_mb=900, ttft_ms=200, quality_ppl_ratio=1.0),
        _cand("2", "wo-int8", decode_tok_s=45, peak_rss_mb=650, ttft_ms=220, quality_ppl_ratio=1.008),
        _cand("3", "wo-int4", gate="failed", decode_tok_s=50, peak_rss_mb=550, ttft_ms=280, quality_ppl_ratio=1.27),
        _cand("4", "fp16", device="cuda", decode_tok_s=400, peak_rss_mb=500, ttft_ms=10, quality_ppl_ratio=1.0),
    ]
    k = Constraints(task="causal-lm", device="cpu", capabilities=["chat"], max_memory_mb=800, max_latency_ms=1000)
    ranked = rank(cands, k, "decode_speed")
    assert ranked[0].version == "2"
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

    # a later build reproduced v2's artifact (a change reverted): register pointed v2's latest run at that build,
    # so v2 is the newest build now and v6 the superseded one
    cands[0].built_at, cands[1].built_at = 2_000, 1_000
    reasons = {c.version: c.rejected for c in rank(cands, Constraints(task="causal-lm", device="cpu"), "decode_speed")}
    assert reasons["6"] == ["superseded by v2 (a newer build of the same variant, recipe and device)"]
    assert reasons["2"] == []


def test_every_constraint_names_its_reason() -> None:
    cands = [
        _cand("1", "fp32", caps="text_generation", decode_tok_s=30, peak_rss_mb=500, ttft_ms=300, quality_ppl_ratio=1),
        _cand("2", "wo-int4", decode_tok_s=50, peak_rss_mb=400, ttft_ms=100, quality_ppl_ratio=1.27),
        _cand("3", "wo-int8", decode_tok_s=40, quality_ppl_ratio=1.01),  # never measured memory nor latency
        _cand("4", "gguf-q4", decode_tok_s=45, peak_rss_mb=450, ttft_ms=120),  # no quality metric
        _cand("5", "fp16", decode_tok_s=35, peak_rss_mb=450, ttft_ms=120, quality_ppl_ratio=1.001),
    ]
    k = Constraints(task="causal-lm", capabilities=["chat"], max_memory_mb=800, max_latency_ms=250, min_quality=0.97)
    ranked = rank(cands, k, "decode_speed")
    assert {c.version: c.rejected for c in ranked} == {
        "1": ["lacks capabilities ['chat']", "bench.ttft_ms 300 ms > 250 ms"],
        "2": ["quality.ppl_ratio 1.270, needs <= 1.030"],
        "3": ["no memory measurement", "no bench.ttft_ms measurement"],
        "4": ["quality.ppl_ratio not measured, needs <= 1.030"],
        "5": [],
    }
    assert ranked[0].version == "5"


@pytest.mark.parametrize(
    ("task", "quality"),
    [
        ("sentence-embedding", "quality_cosine_mean"),
        ("cross-encoder", "quality_spearman"),
        ("fill-mask", "quality_top1_agreement"),
    ],
)
def test_encoders_are_held_to_batch1_latency_and_their_own_quality_metric(task: str, quality: str) -> None:
    cands = [
        _cand("1", "fp32", items_per_s=100, latency_p95_ms=12, ttft_ms=1, **{quality: 0.99}),
        _cand("2", "dyn-int8", items_per_s=300, latency_p95_ms=5, **{quality: 0.95}),
        _cand("3", "dyn-int8-pc", items_per_s=80, latency_p95_ms=5, **{quality: 0.995}),
    ]
    ranked = rank(cands, Constraints(task=task, max_latency_ms=10, min_quality=0.98), "throughput")
    assert {c.version: c.rejected for c in ranked} == {
        "1": ["bench.latency_p95_ms 12 ms > 10 ms"],  # not TTFT, which only decoders have
        "2": [f"{quality.replace('_', '.', 1)} 0.950, needs >= 0.980"],
        "3": [],
    }


@pytest.mark.parametrize(
    ("objective", "order"), [("decode_speed", ["2", "3", "1"]), ("memory", ["1", "3", "2"]), ("ttft", ["3", "1", "2"])]
)
def test_the_objective_orders_the_eligible_and_the_rejected_come_last(objective: str, order: list[str]) -> None:
    cands = [
        _cand("1", "fp32", decode_tok_s=30, peak_rss_mb=500, ttft_ms=200),
        _cand("2", "wo-int8", decode_tok_s=45, peak_rss_mb=700, ttft_ms=250),
        _cand("3", "gguf-q4", decode_tok_s=40, peak_rss_mb=600, ttft_ms=150),
        _cand("4", "wo-int4", gate="failed", decode_tok_s=90, peak_rss_mb=100, ttft_ms=10),  # best numbers, failed
    ]
    ranked = rank(cands, Constraints(task="causal-lm"), objective)
    assert [c.version for c in ranked] == [*order, "4"]
    assert best(cands, Constraints(task="causal-lm"), objective, what="test").version == order[0]


def test_a_candidate_without_the_objective_metric_is_not_eligible() -> None:
    cands = [_cand("1", "fp32", decode_tok_s=30, size_mb=500), _cand("2", "wo-int8", decode_tok_s=45)]
    ranked = rank(cands, Constraints(task="causal-lm"), "size")
    assert [(c.version, c.rejected) for c in ranked] == [("1", []), ("2", ["no bench.size_mb measurement"])]


def test_a_newer_build_that_failed_its_gate_still_supersedes_the_old_one() -> None:
    cands = [_cand("2", "wo-int8", decode_tok_s=45), _cand("5", "wo-int8", gate="failed", decode_tok_s=50)]
    with pytest.raises(NoEligibleModelError) as err:
        best(cands, Constraints(task="causal-lm"), "decode_speed", what="use case 'chat'")
    assert str(err.value) == (
        "no registered causal-lm model fits use case 'chat' (v:wo-int8 v5: failed its quality gate; "
        "v:wo-int8 v2: superseded by v5 (a newer build of the same variant, recipe and device)). "
        "Relax the constraints or run the pipeline (`make run`) for more variants."
    )
    assert isinstance(err.value, LookupError)  # callers may catch it as a failed lookup
    with pytest.raises(NoEligibleModelError, match=r"fits use case 'chat' \(nothing is registered\)\. Relax"):
        best([], Constraints(task="causal-lm"), "decode_speed", what="use case 'chat'")


def _register(client, experiment_id: str, version_tags: dict[str, str], metrics: dict[str, float]) -> str:
    """A model version of slmops-causal-lm whose run logged ``metrics``."""
    run = client.create_run(experiment_id)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    mv = client.create_model_version(
        "slmops-causal-lm",
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={**version_tags, "slmops.capabilities": "chat"},
    )
    return str(mv.version)


def test_recommend_sets_and_drops_aliases_in_a_real_store(tmp_path) -> None:
    import mlflow

    from slmops.recommend import UseCase, recommend
    from slmops.register.store import ensure_experiment
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    settings = get_settings()
    client = connect(settings)
    experiment_id = ensure_experiment(client, settings)
    client.create_registered_model("slmops-causal-lm")
    tags = {"slmops.variant": "v", "slmops.gate": "passed", "slmops.device": "cpu"}
    _register(
        client,
        experiment_id,
        {**tags, "slmops.recipe": "fp32"},
        {"bench.decode_tok_s": 30, "bench.peak_rss_mb": 900, "quality.ppl_ratio": 1.0},
    )
    int8 = _register(
        client,
        experiment_id,
        {**tags, "slmops.recipe": "wo-int8"},
        {"bench.decode_tok_s": 45, "bench.peak_rss_mb": 600, "quality.ppl_ratio": 1.008},
    )
    _register(
        client,
        experiment_id,
        {**tags, "slmops.recipe": "wo-int4", "slmops.gate": "failed"},
        {"bench.decode_tok_s": 60, "bench.peak_rss_mb": 500, "quality.ppl_ratio": 1.27},
    )
    rerun = client.create_run(experiment_id)  # register moved wo-int8's latest_run tag to a newer measurement
    client.log_metric(rerun.info.run_id, "bench.decode_tok_s", 47)
    client.log_metric(rerun.info.run_id, "bench.peak_rss_mb", 610)
    client.log_metric(rerun.info.run_id, "quality.ppl_ratio", 1.008)
    client.set_model_version_tag("slmops-causal-lm", int8, "slmops.latest_run", rerun.info.run_id)
    client.set_registered_model_alias("slmops-causal-lm", "impossible", "1")  # a stale alias from an earlier pass

    usecases = {
        "chat-x": UseCase(
            name="chat-x", task="causal-lm", capabilities=["chat"], max_memory_mb=800, objective="decode_speed"
        ),
        "impossible": UseCase(name="impossible", task="causal-lm", max_memory_mb=1, objective="decode_speed"),
        "embed-x": UseCase(name="embed-x", task="sentence-embedding", objective="throughput"),
    }
    decisions = recommend(usecases, settings=settings, plots_dir=tmp_path / "plots").usecases

    chat = decisions["chat-x"]
    assert (chat.chosen, chat.alias_uri) == (f"models:/slmops-causal-lm/{int8}", "models:/slmops-causal-lm@chat-x")
    assert chat.why == (
        "v:wo-int8 (v2) has the best bench.decode_tok_s = 47.0 among 1 eligible of 3 registered causal-lm versions"
    )
    assert [(row.version, row.value, row.eligible, row.rejected) for row in chat.candidates] == [
        ("2", 47.0, True, []),
        ("3", 60.0, False, ["failed its quality gate"]),
        ("1", 30.0, False, ["peak RSS 900 MB > 800 MB"]),
    ]
    assert decisions["impossible"].chosen is None and "peak RSS 610 MB > 1 MB" in decisions["impossible"].why
    assert decisions["embed-x"].chosen is None and "(nothing is registered)" in decisions["embed-x"].why
    assert client.get_registered_model("slmops-causal-lm").aliases == {"chat-x": int(int8)}  # the stale one is gone
    runs = client.search_runs([experiment_id], filter_string="tags.`slmops.kind` = 'recommend'")
    assert len(runs) == 1
    logged = mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri}/recommendations.json")
    assert logged["usecases"] == {name: d.model_dump(mode="json") for name, d in decisions.items()}
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "plots")] == ["plots/pareto-causal-lm.png"]
    assert (tmp_path / "plots" / "pareto-causal-lm.png").stat().st_size > 1000


def test_a_use_case_with_a_profile_ranks_on_that_devices_own_numbers(tmp_path) -> None:
    """A distributed build's versions carry no build-machine numbers, only what each device's worker logged
    (bench.<profile>.*) and its verdict tag, set last: a half-logged or failed device run never qualifies."""
    from slmops.recommend import UseCase, recommend
    from slmops.register.store import ensure_experiment
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    settings = get_settings()
    client = connect(settings)
    experiment_id = ensure_experiment(client, settings)
    client.create_registered_model("slmops-causal-lm")
    tags = {"slmops.variant": "v", "slmops.gate": "passed", "slmops.device": "cpu"}
    on = "bench.cpu-1t."
    fast_elsewhere = _register(  # fastest on the build machine, never measured on cpu-1t
        client, experiment_id, {**tags, "slmops.recipe": "a"}, {"bench.decode_tok_s": 90, "quality.ppl_ratio": 1.0}
    )
    measured = _register(
        client,
        experiment_id,
        {**tags, "slmops.recipe": "b"},
        {f"{on}decode_tok_s": 40, f"{on}peak_rss_mb": 300, f"{on}machine.busy": 0, "quality.ppl_ratio": 1.0},
    )
    half = _register(  # the worker died after logging part of it: no verdict tag
        client, experiment_id, {**tags, "slmops.recipe": "c"}, {f"{on}decode_tok_s": 70, "quality.ppl_ratio": 1.0}
    )
    failed = _register(
        client, experiment_id, {**tags, "slmops.recipe": "d"}, {f"{on}decode_tok_s": 80, "quality.ppl_ratio": 1.0}
    )
    for version, verdict in ((measured, "measured"), (failed, "not measured: run bench-x ended Crashed")):
        run_id = client.get_model_version("slmops-causal-lm", version).run_id
        client.set_tag(run_id, "slmops.bench.cpu-1t", verdict)
    chat = UseCase(name="chat-1t", task="causal-lm", profile="cpu-1t", max_memory_mb=400, objective="decode_speed")
    decision = recommend({"chat-1t": chat}, settings=settings).usecases["chat-1t"]
    assert decision.chosen == f"models:/slmops-causal-lm/{measured}"
    rows = {row.version: (row.value, row.rejected) for row in decision.candidates}
    assert rows[measured] == (40.0, [])  # bench.cpu-1t.decode_tok_s, read as bench.decode_tok_s
    assert rows[fast_elsewhere][1][0] == "not measured on cpu-1t: no benchmark run logged"
    assert rows[half][1][0] == "not measured on cpu-1t: no benchmark run logged"
    assert rows[failed][1][0] == "not measured on cpu-1t: run bench-x ended Crashed"
    assert rows[fast_elsewhere][1][1] == "no memory measurement"  # its build-machine numbers are not cpu-1t's
