"""Quality, speed and size of every recipe that applies to each real model, in one table per model.

    python benchmarks/recipes.py                 # after `make run` (reads artifacts/fetch and artifacts/export)
    python benchmarks/recipes.py --rounds 3      # interleave the speed runs over 3 rounds, report medians

Every recipe of configs/recipes.yaml that supports the model's task on CPU is applied to the
model's fp32 export with the quantize stage (into artifacts/recipes-bench/, reused while the
export and recipe are unchanged), gated against fp32 with the evaluate stage, and benchmarked
with the benchmark harness (fresh subprocess per candidate, cpu-2t profile, 128-token prompt,
64 new tokens). Speed runs are interleaved across recipes in each round, so drift in the
machine's speed hits every recipe alike. Prints the tables and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("smollm2-135m-instruct", "all-minilm-l6-v2")


def build_candidates(project, variant_id: str, out: Path) -> dict[str, Path]:
    """Apply every CPU recipe for the variant's task; reuse candidates built from the same export and recipe."""
    from slmops.artifacts import read_manifest
    from slmops.errors import SlmopsError
    from slmops.quantize import quantize

    variant = project.catalog.get(variant_id)
    export_dir = project.export_dir(variant_id)
    export_digest = read_manifest(export_dir).digest()
    folders = {}
    for name, recipe in project.recipes.items():
        if not recipe.supports(variant.task, "cpu"):
            continue
        folder = out / name
        try:
            done = read_manifest(folder, verify=False)
            fresh = done.info.get("export_digest") == export_digest and json.loads(
                (folder / "recipe.json").read_text()
            ) == recipe.model_dump(mode="json")
        except (SlmopsError, OSError, ValueError):
            fresh = False
        if not fresh:
            print(f"  quantize {variant_id} / {name} ...", flush=True)
            try:
                quantize(
                    variant, recipe, src=export_dir, out=folder, device="cpu", fetched=project.fetch_dir(variant_id)
                )
            except SlmopsError as exc:
                print(f"  {name}: not applicable ({exc})", flush=True)
                continue
        folders[name] = folder
    return folders


def measure(project, variant_id: str, folders: dict[str, Path], *, rounds: int, out: Path) -> list[dict]:
    from slmops.benchmark import run_benchmark
    from slmops.evaluate import evaluate

    variant = project.catalog.get(variant_id)
    print(f"  gates for {variant_id} ...", flush=True)
    gates = evaluate(
        task=variant.task,
        candidates=folders,
        reference=project.config.reference_recipe,
        gates=project.gates,
        out=out / "gates.json",
        threads=project.settings.threads,
    ).model_dump()
    config = project.config.benchmark.model_copy(
        update={"profiles": ["cpu-2t"], "prompt_tokens": [128], "headline_prompt_tokens": 128, "batch_sizes": [32]}
    )
    runs: dict[str, list[dict]] = {name: [] for name in folders}
    for r in range(rounds):
        for name, folder in folders.items():  # interleaved: every recipe once per round
            print(f"  bench round {r + 1}/{rounds}: {name}", flush=True)
            runs[name].append(run_benchmark(folder, config=config, profiles=project.device_profiles).model_dump())
    rows = []
    for name in folders:
        bench, gate = runs[name], gates["candidates"][name]

        def med(key: str, bench: list[dict] = bench) -> float | None:
            values = [b[key] for b in bench if b.get(key) is not None]
            return statistics.median(values) if values else None

        rows.append(
            {
                "recipe": name,
                "method": project.recipes[name].method,
                "precision": project.recipes[name].precision,
                "size_mb": bench[0]["size_mb"],
                "passed": gate["passed"],
                "reasons": gate["reasons"],
                "metrics": gate["metrics"],
                "ttft_ms": med("ttft_ms"),
                "decode_tok_s": med("decode_tok_s"),
                "peak_rss_mb": med("peak_rss_mb"),
                "items_s": med("items_per_s"),
                "decode_tok_s_runs": [b.get("decode_tok_s") for b in bench],
            }
        )
    return rows


def print_table(variant_id: str, task: str, rows: list[dict], rounds: int) -> None:
    from slmops.tasks import get_task

    print(f"\n{variant_id} ({task}): cpu-2t, medians of {rounds} interleaved round(s)")
    if get_task(task).generative:
        head = f"{'recipe':16}{'precision':>10}{'size MB':>9}{'PPL':>8}{'ratio':>8}{'top1':>7}{'greedy':>8}{'gate':>6}{'TTFT ms':>9}{'tok/s':>8}{'vs fp32':>8}{'RSS MB':>8}"
        ref = next((r["decode_tok_s"] for r in rows if r["recipe"] == "fp32"), None)
        print(head + "\n" + "-" * len(head))
        for r in rows:
            m = r["metrics"]
            speed = f"{r['decode_tok_s'] / ref:7.2f}x" if ref and r["decode_tok_s"] else f"{'-':>8}"
            print(
                f"{r['recipe']:16}{r['precision']:>10}{r['size_mb']:9.1f}{m['ppl']:8.2f}{m['ppl_ratio']:8.3f}"
                f"{m['top1_agreement']:7.3f}{m.get('greedy_prefix', float('nan')):8.2f}{'pass' if r['passed'] else 'FAIL':>6}"
                f"{r['ttft_ms']:9.0f}{r['decode_tok_s']:8.1f}{speed}{r['peak_rss_mb']:8.0f}"
            )
    else:
        head = f"{'recipe':16}{'precision':>10}{'size MB':>9}  {'quality':40}{'gate':>6}{'items/s':>9}{'vs fp32':>8}{'RSS MB':>8}"
        ref = next((r["items_s"] for r in rows if r["recipe"] == "fp32"), None)
        print(head + "\n" + "-" * len(head))
        for r in rows:
            quality = ", ".join(f"{k} {v:.3f}" for k, v in list(r["metrics"].items())[:2])
            speed = f"{r['items_s'] / ref:7.2f}x" if ref and r["items_s"] else f"{'-':>8}"
            items = f"{r['items_s']:9.1f}" if r["items_s"] else f"{'-':>9}"
            print(
                f"{r['recipe']:16}{r['precision']:>10}{r['size_mb']:9.1f}  {quality:40}{'pass' if r['passed'] else 'FAIL':>6}"
                f"{items}{speed}{r['peak_rss_mb']:8.0f}"
            )
    for r in rows:
        if not r["passed"]:
            print(f"  {r['recipe']} failed its gate: {'; '.join(r['reasons'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="interleaved benchmark rounds (medians reported)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="variant ids (need `make run` first)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: must be at least 1")
    from slmops.project import Project

    project = Project.load()
    report = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rounds": args.rounds, "models": {}}
    for variant_id in args.models:
        if not (project.export_dir(variant_id) / "slmops-manifest.json").is_file():
            print(f"{variant_id}: no export in {project.export_dir(variant_id)}; run `make run` first", file=sys.stderr)
            return 2
        out = project.settings.artifacts_dir / "recipes-bench" / variant_id
        folders = build_candidates(project, variant_id, out)
        rows = measure(project, variant_id, folders, rounds=args.rounds, out=out)
        report["models"][variant_id] = {"task": project.catalog.get(variant_id).task, "rows": rows}
    for variant_id, entry in report["models"].items():
        print_table(variant_id, entry["task"], entry["rows"], args.rounds)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"recipes-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nJSON: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
