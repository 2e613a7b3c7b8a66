"""Rebuilding identical candidates never moves an alias on timing noise; a real win does, and says why.

Candidates are tiny models exported and quantized by slmops, registered by slmops's own register
stage in a real SQLite registry, again and again as a nightly build would (same digests, so the
versions are reused and only their latest measurement changes). The benchmark numbers are set per
build, as tests/support/registry.py does, so each build can carry exactly the noise under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from slmops.names import alias_moved_tag, alias_run_tag

QUIET = {"load_before": 0.2, "load_after": 0.3, "steal_pct": 0.0, "other_cpu_pct": 2.0, "worker_cpu_s": 3.0}
BUSY = {
    **QUIET,
    "load_before": 4.1,
    "other_cpu_pct": 48.0,
    "busy": True,
    "busy_reasons": ["other processes used 48.0% of the CPU time > 25%"],
    "attempts": 2,
}


@pytest.fixture(scope="module")
def candidates(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """The tiny Llama exported and quantized as fp32 and wo-int8 (built once; each test registers them)."""
    from tests.support.tiny import build_candidates, from_folder

    root = tmp_path_factory.mktemp("stability")
    variant = build_candidates(root, "tiny-llama", from_folder(*tiny_models["tiny-llama"]), recipes=("fp32", "wo-int8"))
    return variant, root


def _bench(tok_s: float, *, ttft_ms: float = 20.0, spread: float = 0.05, machine: dict | None = None) -> dict:
    return {
        "decode_tok_s": tok_s,
        "ttft_ms": ttft_ms,
        "peak_rss_mb": 200.0,
        "spread": {"decode_tok_s": spread, "ttft_ms": spread},
        "machine": {**(machine or QUIET), "cpu_count": 2, "threads": 2},
    }


def _build(candidates, fp32: dict, int8: dict) -> dict[str, str | None]:
    """One build: register both candidates (versions reused after the first) with these benchmark numbers."""
    from tests.support.registry import register_candidates

    variant, root = candidates
    return register_candidates(variant, root, recipes=("fp32", "wo-int8"), bench={"fp32": fp32, "wo-int8": int8})


def _chat(margin: float = 0.1):
    from slmops.recommend import UseCase

    return {"chat": UseCase(name="chat", task="causal-lm", max_latency_ms=50, margin=margin, objective="decode_speed")}


def _alias(name: str = "chat") -> str:
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    return str(connect(get_settings()).get_model_version_by_alias("slmops-causal-lm", name).version)


def _moved_tags(version: str) -> dict[str, str]:
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    tags = connect(get_settings()).get_model_version("slmops-causal-lm", version).tags
    return {k: v for k, v in tags.items() if k.startswith("slmops.alias_moved.")}


def test_rebuilding_identical_candidates_with_timing_noise_never_moves_the_alias(candidates) -> None:
    from slmops.recommend import history, recommend

    versions = _build(candidates, fp32=_bench(80), int8=_bench(100))
    fp32, int8 = versions["fp32"], versions["wo-int8"]
    assert fp32 and int8
    first = recommend(_chat()).usecases["chat"]
    assert (first.moved, first.chosen, _alias()) == (True, f"models:/slmops-causal-lm/{int8}", int8)
    assert first.reason.startswith(f"set to v{int8} tiny-llama:wo-int8 (100.0 tok/s)")

    noisy_builds = [
        # fp32 ahead by 7%: inside the 10% margin
        (_bench(107), _bench(100), "within the margin 10%"),
        # ahead by 12%, over the margin, but the repeats of fp32 spread by 20%
        (_bench(112, spread=0.2), _bench(100), "within the repeat spread 20%"),
        # the incumbent measured on a busy machine: 19 tok/s and a TTFT over the 50 ms limit
        (_bench(80), _bench(19, ttft_ms=80, machine=BUSY), "a busy machine's number moves no alias"),
        # a busy challenger
        (_bench(300, machine=BUSY), _bench(100), "a busy machine's number moves no alias"),
        # the incumbent's TTFT 52 ms is over the limit, but within its 10% repeat spread
        (_bench(80), _bench(100, ttft_ms=52, spread=0.1), "tolerated for the incumbent: within its repeat spread"),
    ]
    for fp32_bench, int8_bench, why in noisy_builds:
        assert _build(candidates, fp32=fp32_bench, int8=int8_bench) == versions  # identical digests: reused
        decision = recommend(_chat()).usecases["chat"]
        assert (decision.moved, decision.chosen, _alias()) == (False, f"models:/slmops-causal-lm/{int8}", int8), why
        assert decision.previous == f"models:/slmops-causal-lm/{int8}"
        assert why in decision.reason, decision.reason
    assert _moved_tags(fp32) == {}
    assert [row["alias"] for row in history()] == ["chat"]  # only the first pass set it


def test_a_win_beyond_the_margin_moves_the_alias_and_records_why(candidates) -> None:
    import mlflow

    from slmops.recommend import history, recommend
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    versions = _build(candidates, fp32=_bench(80), int8=_bench(100))
    fp32, int8 = versions["fp32"], versions["wo-int8"]
    recommend(_chat())
    _build(candidates, fp32=_bench(130), int8=_bench(100))
    decision = recommend(_chat()).usecases["chat"]

    reason = (
        f"from v{int8} tiny-llama:wo-int8 (100.0 tok/s) to v{fp32} tiny-llama:fp32 (130.0 tok/s): +30% > margin 10%"
    )
    assert (decision.moved, decision.reason, _alias()) == (True, reason, fp32)
    assert decision.previous == f"models:/slmops-causal-lm/{int8}"
    assert _moved_tags(fp32) == {alias_moved_tag("chat"): reason}
    # the version names the run whose numbers moved the alias: the second build's fp32 run (130 tok/s)
    client = connect(get_settings())
    tags = client.get_model_version("slmops-causal-lm", fp32).tags
    deciding = client.get_run(tags[alias_run_tag("chat")])
    assert deciding.info.run_id == tags["slmops.latest_run"] and deciding.data.metrics["bench.decode_tok_s"] == 130
    moves = history()
    assert [m["reason"] for m in moves] == [reason, moves[1]["reason"]] and moves[1]["reason"].startswith("set to")

    # the recommend run holds its inputs and decisions, and lists the chosen model as its output
    run = client.get_run(moves[0]["run_id"])
    assert run.data.tags[alias_moved_tag("chat")] == reason
    assert run.data.params["chat.margin"] == "0.1" and run.data.params["chat.incumbent"] == int8
    assert run.data.params["chat.max_latency_ms"] == "50.0"
    assert run.data.metrics["recommend.chat.value"] == 130.0 and run.data.metrics["recommend.chat.moved"] == 1.0
    inputs = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/recommend_inputs.json")["chat"]
    assert inputs["incumbent"] == int8
    assert {c["version"]: c["metrics"]["bench.decode_tok_s"] for c in inputs["candidates"]} == {fp32: 130, int8: 100}
    chosen = client.get_model_version("slmops-causal-lm", fp32).source  # models:/m-<logged model id>
    assert [f"models:/{o.model_id}" for o in run.outputs.model_outputs] == [chosen]

    from slmops.cli import app

    result = CliRunner().invoke(app, ["recommend", "--history", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == moves
    table = CliRunner().invoke(app, ["recommend", "--history"])
    assert table.exit_code == 0 and "alias moves, newest first (2)" in table.output


def test_the_benchmark_numbers_of_the_machine_reach_mlflow(candidates) -> None:
    from slmops.runtime.registry import connect
    from slmops.settings import get_settings

    versions = _build(candidates, fp32=_bench(80), int8=_bench(19, machine=BUSY))
    client = connect(get_settings())
    runs = {
        v: client.get_run(client.get_model_version("slmops-causal-lm", v).tags["slmops.latest_run"])
        for v in versions.values()
        if v
    }
    busy = runs[versions["wo-int8"]].data
    assert busy.metrics["machine.busy"] == 1.0 and busy.metrics["machine.other_cpu_pct"] == 48.0
    assert busy.metrics["machine.load_before"] == 4.1 and busy.metrics["machine.attempts"] == 2.0
    assert busy.tags["slmops.busy"] == "other processes used 48.0% of the CPU time > 25%"
    assert busy.metrics["bench.decode_tok_s.spread"] == 0.05
    quiet = runs[versions["fp32"]].data
    assert quiet.metrics["machine.busy"] == 0.0 and "slmops.busy" not in quiet.tags


def test_a_real_benchmark_records_the_machine_state_and_the_spread_of_its_repeats(candidates) -> None:
    from slmops.benchmark import BenchmarkConfig, run_benchmark
    from slmops.benchmark.config import load_device_profiles
    from slmops.results import BenchReport, read_result

    _, root = candidates
    config = BenchmarkConfig(
        profiles=["cpu-1t"], prompt_tokens=[8], headline_prompt_tokens=8, new_tokens=4, repeats=3, busy_retries=0
    )
    out = root / "bench.json"
    report = run_benchmark(root / "cand" / "wo-int8", config=config, profiles=load_device_profiles(), out=out)
    machine = report.machine
    assert machine is not None and machine.threads == 1 and machine.attempts == 1
    assert machine.load_before is not None and machine.load_after is not None and machine.worker_cpu_s > 0
    assert machine.process_threads is not None and machine.process_threads >= 1
    assert machine.busy == bool(machine.busy_reasons)  # this shared machine may be busy; the verdict says why
    assert set(report.spread) == {"decode_tok_s", "ttft_ms"} and all(v >= 0 for v in report.spread.values())
    runs = report.profiles["cpu-1t"]["by_prompt_tokens"]["8"]["decode_tok_s_runs"]
    assert len(runs) == 3 and min(runs) <= report.decode_tok_s <= max(runs)
    assert read_result(out, BenchReport).machine == machine


def test_a_rebuild_that_reverts_an_artifact_makes_its_earlier_version_current_again(candidates, tmp_path: Path) -> None:
    """A change ships a new wo-int8 version; reverting it rebuilds the earlier artifact, which register finds as
    the earlier version (same digest): that version is then the newest build, and the alias goes back to it."""
    import shutil

    from slmops.quantize import load_recipes, quantize
    from slmops.recommend import recommend
    from tests.support.tiny import CONFIGS

    variant, root = candidates
    folder = root / "cand" / "wo-int8"
    first = _build(candidates, fp32=_bench(80), int8=_bench(100))["wo-int8"]
    kept = tmp_path / "wo-int8"
    shutil.copytree(folder, kept)
    try:
        changed = load_recipes(CONFIGS / "recipes.yaml")["wo-int8"].model_copy(update={"block_size": 16})
        shutil.rmtree(folder)
        quantize(variant, changed, src=root / "export", out=folder)
        second = _build(candidates, fp32=_bench(80), int8=_bench(120))["wo-int8"]
        assert second not in (None, first)
        assert recommend(_chat()).usecases["chat"].chosen == f"models:/slmops-causal-lm/{second}"
    finally:  # the revert: the earlier artifact again
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(kept, folder)
    assert _build(candidates, fp32=_bench(80), int8=_bench(100))["wo-int8"] == first  # found, not registered again
    decision = recommend(_chat()).usecases["chat"]
    assert (decision.chosen, _alias()) == (f"models:/slmops-causal-lm/{first}", first)
    assert decision.moved and f"superseded by v{first}" in decision.reason, decision.reason
