"""What DVC hashes and shows: deterministic manifests, compact per-candidate metrics, Pareto plot rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.artifacts import MANIFEST_NAME, read_manifest, write_manifest
from slmops.recommend.pareto import pareto_points, write_pareto
from slmops.recommend.usecases import UseCase
from slmops.register.metrics import candidate_metrics, write_metrics
from slmops.results import BenchReport, CandidateGate, Decision, GateReport, Percentiles, write_result
from slmops.runtime.ranking import Candidate, rank


def test_a_manifest_is_the_same_bytes_every_time_and_old_ones_still_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    write_manifest(tmp_path, stage="fetch", variant="v", source="hub", revision="abc", info={"z": 1, "a": [2]})
    first = (tmp_path / MANIFEST_NAME).read_bytes()
    write_manifest(tmp_path, stage="fetch", variant="v", source="hub", revision="abc", info={"a": [2], "z": 1})
    assert (tmp_path / MANIFEST_NAME).read_bytes() == first
    assert b"created" not in first
    legacy = json.loads(first) | {"created": 1764500000.5}  # written by an older slmops
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(legacy))
    assert read_manifest(tmp_path, verify=True).revision == "abc"


def _bench(**fields: object) -> BenchReport:
    base = {"headline_profile": "cpu-2t", "device": "cpu", "candidate_digest": "d", "size_mb": 154.2, "config": {}}
    return BenchReport(**base, profiles={"cpu-2t": {}}, peak_rss_mb=400.0, **fields)  # type: ignore[arg-type]


def test_candidate_metrics_are_the_tasks_headline_numbers_and_the_gate() -> None:
    gate = CandidateGate(metrics={"ppl": 12.6, "ppl_ratio": 1.004}, passed=True, reasons=[], candidate_digest="d")
    decoder = candidate_metrics("causal-lm", gate, _bench(decode_tok_s=115.4, ttft_ms=373.0))
    assert decoder == {
        "decode_tok_s": 115.4,
        "ttft_ms": 373.0,
        "peak_rss_mb": 400.0,
        "size_mb": 154.2,
        "ppl_ratio": 1.004,
        "gate": "passed",
    }
    failed = CandidateGate(metrics={"cosine_mean": 0.93}, passed=False, reasons=["cosine"], candidate_digest="d")
    encoder = candidate_metrics(
        "sentence-embedding", failed, _bench(items_per_s=381.0, latency_ms_batch1=Percentiles(p50=4.0, p95=5.5))
    )
    assert encoder == {
        "items_per_s": 381.0,
        "latency_p95_ms": 5.5,
        "peak_rss_mb": 400.0,
        "size_mb": 154.2,
        "cosine_mean": 0.93,
        "gate": "failed",
    }


def test_write_metrics_replaces_the_folder_and_leaves_out_what_was_not_measured(tmp_path: Path) -> None:
    folder = tmp_path / "metrics" / "v"
    write_metrics(folder, {"fp32": {"items_per_s": 1.0, "gate": "passed"}, "old": {"gate": "passed"}})
    write_metrics(folder, {"fp32": {"items_per_s": 2.0, "latency_p95_ms": None, "gate": "passed"}})
    assert sorted(p.name for p in folder.iterdir()) == ["fp32.json"]  # a dropped recipe leaves no row behind
    assert json.loads((folder / "fp32.json").read_text()) == {"items_per_s": 2.0, "gate": "passed"}


def _cand(version: str, recipe: str, speed: float, ppl: float, rss: float, *, gate: str = "passed") -> Candidate:
    tags = {
        "slmops.variant": "v",
        "slmops.recipe": recipe,
        "slmops.gate": gate,
        "slmops.device": "cpu",
        "slmops.capabilities": "chat",
    }
    metrics = {"bench.decode_tok_s": speed, "quality.ppl_ratio": ppl, "bench.peak_rss_mb": rss}
    return Candidate("slmops-causal-lm", version, tags, metrics)


def _versions() -> list[Candidate]:
    return [
        _cand("1", "fp32", 30.0, 1.0, 900.0),
        _cand("2", "wo-int8", 45.0, 1.008, 600.0),
        _cand("3", "gguf-q4", 40.0, 1.05, 500.0),
        _cand("4", "wo-int4-old", 20.0, 1.3, 450.0, gate="failed"),
    ]


def test_pareto_points_mark_the_chosen_version_and_say_why_each_other_lost() -> None:
    chat = UseCase(name="chat", task="causal-lm", max_memory_mb=800, objective="decode_speed")
    tight = UseCase(name="tight", task="causal-lm", max_memory_mb=100, objective="decode_speed")
    rankings = {uc.name: rank(_versions(), uc, uc.objective) for uc in (chat, tight)}
    failed = Candidate(
        "slmops-causal-lm",
        "",
        {"slmops.variant": "v", "slmops.recipe": "wo-int4"},
        {"bench.decode_tok_s": 60.0, "quality.ppl_ratio": 1.27},
        ["failed its quality gate: ppl_ratio 1.27 > 1.1"],
    )
    chosen = {"chat": "models:/slmops-causal-lm/2", "tight": None}
    points = {p.candidate: p for p in pareto_points("causal-lm", rankings, chosen, [failed])}
    status = {name: (p.status, p.reason) for name, p in points.items()}
    assert status == {
        "v:wo-int8": ("chosen", "chosen for chat"),
        "v:gguf-q4": ("eligible", "eligible for chat, where another version was chosen"),
        "v:fp32": ("excluded", "chat: peak RSS 900 MB > 800 MB; tight: peak RSS 900 MB > 100 MB"),
        "v:wo-int4-old": ("failed-gate", "failed its quality gate"),
        "v:wo-int4": ("failed-gate", "failed its quality gate: ppl_ratio 1.27 > 1.1"),
    }
    # the front is drawn through registered versions that passed their gate: fp32 (best quality) and wo-int8
    # (fastest of them); gguf-q4 is slower and worse than wo-int8; failed candidates never define it
    assert {name for name, p in points.items() if p.front} == {"v:fp32", "v:wo-int8"}
    # the reason shows beside the point, shortened
    assert points["v:fp32"].label == "v:fp32 v1: chat: peak RSS 900 MB > 800 MB; tight: peak RSS 900 MB > 100 MB"
    assert points["v:wo-int4"].label == "v:wo-int4: gate failed: ppl_ratio 1.27 > 1.1"
    assert points["v:wo-int8"].label == "v:wo-int8 v2"
    assert points["v:wo-int8"].version == "2" and points["v:wo-int4"].version is None
    assert points["v:wo-int8"].peak_rss_mb == 600.0 and points["v:wo-int4"].peak_rss_mb is None


def test_write_pareto_reads_failed_gates_from_the_artifacts(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    gate = GateReport(
        task="causal-lm",
        reference="fp32",
        gates={},
        candidates={
            "fp32": CandidateGate(metrics={"ppl_ratio": 1.0}, passed=True, reasons=[], candidate_digest="a"),
            "wo-int4": CandidateGate(
                metrics={"ppl_ratio": 1.4}, passed=False, reasons=["ppl_ratio 1.4 > 1.1"], candidate_digest="b"
            ),
        },
    )
    write_result(artifacts / "gates" / "v.json", gate)
    write_result(artifacts / "bench" / "v" / "wo-int4.json", _bench(decode_tok_s=70.0, ttft_ms=100.0))
    (artifacts / "gates" / "broken.json").write_text("{}")  # another slmops' file: skipped, not fatal
    chat = UseCase(name="chat", task="causal-lm", objective="decode_speed")
    embed = UseCase(name="embed", task="sentence-embedding", objective="throughput")
    rankings = {"chat": rank(_versions()[:2], chat, chat.objective), "embed": []}
    decisions = {
        "chat": Decision(chosen="models:/slmops-causal-lm/2", why="", candidates=[]),
        "embed": Decision(chosen=None, why="nothing", candidates=[]),
    }
    plots = tmp_path / "plots"
    pngs = write_pareto({"chat": chat, "embed": embed}, rankings, decisions, plots_dir=plots, artifacts=artifacts)
    assert pngs == {"causal-lm": plots / "pareto-causal-lm.png"} and pngs["causal-lm"].stat().st_size > 1000
    rows = json.loads((plots / "pareto.json").read_text())
    assert [(r["candidate"], r["status"], r["speed"], r["quality"]) for r in rows] == [
        ("v:wo-int8", "chosen", 45.0, 1.008),
        ("v:fp32", "eligible", 30.0, 1.0),
        ("v:wo-int4", "failed-gate", 70.0, 1.4),
    ]
    assert rows[2]["reason"] == "failed its quality gate: ppl_ratio 1.4 > 1.1" and rows[2]["peak_rss_mb"] == 400.0


@pytest.mark.parametrize("where", ["no dvc.yaml", "artifacts elsewhere"])
def test_a_build_outside_the_dvc_project_is_not_recorded(tmp_path: Path, where: str, monkeypatch) -> None:
    from slmops import dvcsync
    from slmops.project import Project
    from slmops.settings import Settings

    root = tmp_path / "proj"
    (root / ".dvc").mkdir(parents=True)
    if where != "no dvc.yaml":
        (root / "dvc.yaml").write_text("stages: {}\n")
    artifacts = tmp_path / "elsewhere" if where == "artifacts elsewhere" else root / "artifacts"
    project = Project(Settings(artifacts_dir=artifacts, config_dir=root / "configs"))
    assert dvcsync.dvc_root(project, cwd=root) is None
    assert dvcsync.record_build(project, ["v"], recommend=True, cwd=root) is None
    assert not (root / "dvc.lock").exists()
    good = Project(Settings(artifacts_dir=root / "artifacts", config_dir=root / "configs"))
    if where != "no dvc.yaml":
        assert dvcsync.dvc_root(good, cwd=root) == root.resolve()
