"""Tiny candidates registered through slmops's own register stage, in whatever MLflow store the settings name.

The gate report is real (``slmops.evaluate`` on the candidates); the benchmark numbers are written here
instead of measured (a benchmark subprocess per candidate costs seconds and its numbers are noise): the
register stage only logs them, and fixing them lets a test know which version a ranking must pick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.tiny import CONFIGS

BENCH: dict[str, dict[str, Any]] = {  # BenchReport's headline fields
    "causal-lm": {"decode_tok_s": 100.0, "ttft_ms": 20.0, "peak_rss_mb": 200.0, "size_mb": 1.0},
    "sentence-embedding": {
        "items_per_s": 500.0,
        "peak_rss_mb": 150.0,
        "size_mb": 1.0,
        "latency_ms_batch1": {"p50": 2.0, "p95": 3.0},
    },
}
BENCH["cross-encoder"] = BENCH["fill-mask"] = BENCH["sentence-embedding"]

# registry targets the light readers are compared with mlflow's client on (tests/unit/test_resolve.py,
# tests/integration/test_registry_rest.py): aliases, URIs by alias and version, and every kind of miss
TARGETS = [
    "chat-cpu",
    "embeddings-cpu",
    "no-such-alias",
    "models:/slmops-causal-lm@chat-cpu",
    "models:/slmops-causal-lm@embeddings-cpu",  # the alias is on another model
    "models:/slmops-causal-lm@nope",
    "models:/unknown-model@chat-cpu",
    "models:/slmops-causal-lm/1",
    "models:/slmops-causal-lm/2",
    "models:/slmops-causal-lm/3",
    "models:/slmops-causal-lm/99",
    "models:/unknown-model/1",
    "models:/slmops-sentence-embedding/1",
]


def register_candidates(
    variant: Any,
    root: Path,
    *,
    recipes: tuple[str, ...] = ("fp32",),
    bench: dict[str, dict[str, Any]] | None = None,
    settings: Any = None,
) -> dict[str, str | None]:
    """Gate the candidates under ``root/cand`` against fp32 and register each one; return recipe -> version.

    ``bench`` overrides the task's default benchmark numbers per recipe.
    """
    from slmops.artifacts import read_manifest
    from slmops.evaluate import evaluate, load_gates
    from slmops.quantize import load_recipes
    from slmops.register import register
    from slmops.results import BenchReport

    folders = {name: root / "cand" / name for name in recipes}
    report = evaluate(
        task=variant.task,
        candidates=folders,
        reference="fp32",
        gates=load_gates(CONFIGS / "gates.yaml"),
        out=root / "gates.json",
    )
    known = load_recipes(CONFIGS / "recipes.yaml")
    versions: dict[str, str | None] = {}
    for name, folder in folders.items():
        numbers = {**BENCH[variant.task], **(bench or {}).get(name, {})}
        benchmark = BenchReport(
            candidate_digest=read_manifest(folder).digest(),
            headline_profile="cpu-1t",
            device="cpu",
            config={},
            profiles={"cpu-1t": {}},
            **numbers,
        )
        registered = register(
            variant=variant,
            recipe=known[name],
            folder=folder,
            evaluation=report.candidates[name],
            benchmark=benchmark,
            settings=settings,
        )
        versions[name] = registered.version
    return versions
