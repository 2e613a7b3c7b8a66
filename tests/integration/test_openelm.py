"""OpenELM end to end on a tiny random one (openelm-pytorch, per-layer head counts): the openelm exporter matches
PyTorch with a KV cache, the runtime's greedy generation equals PyTorch's, wo-int8 applies and a gate is computed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.artifacts import read_manifest, write_manifest
from slmops.errors import ConfigError, ExportError
from slmops.evaluate import evaluate, load_gates
from slmops.export import export
from slmops.quantize import load_recipes, quantize
from slmops.runtime.open import open_folder
from slmops.runtime.params import GenerationParams
from tests.support.tiny import as_fetched

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROMPT = "The sun rises in the east and sets in the west."


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    from tests.support.tiny import build_tiny_openelm

    root = tmp_path_factory.mktemp("openelm")
    src = root / "fetch"
    facts = build_tiny_openelm(src)
    variant = as_fetched(src, "tiny-openelm", facts, license="apple-sample-code-license")
    export(variant, src=src, out=root / "export")  # no exporter named: the variant's (catalog) exporter routes it
    return variant, root


@pytest.fixture(scope="module")
def reference(built):
    from slmops.export.openelm import load_openelm

    _, root = built
    return load_openelm(root / "fetch")


def _torch_greedy(model, ids: list[int], steps: int) -> list[int]:
    from slmops.export.openelm import torch_step

    logits, cache = torch_step(model, ids, None)
    out = []
    for _ in range(steps):
        out.append(int(logits[-1].argmax()))
        logits, cache = torch_step(model, [out[-1]], cache)
    return out


def test_export_has_per_layer_kv_heads_and_matches_torch(built, reference) -> None:
    from slmops.export.openelm import torch_step

    _, root = built
    assert read_manifest(root / "export").info["exporter"] == "openelm"
    model = open_folder(root / "export")
    assert model.card.graph == "optimum-decoder" and model.card.kv_heads is None and model.card.layers == 3
    config = json.loads((root / "fetch" / "config.json").read_text())
    assert (
        [h for h, _ in model.graph.kv_shapes] == [h for h in config["num_kv_heads"] for _ in "kv"] == [1, 1, 2, 2, 2, 2]
    )

    ids = model.tokenizer.encode(PROMPT)
    assert len(ids) > 4
    graph = model.graph
    logits, cache = graph.forward(np.asarray([ids]), graph.empty_cache())
    step, cache = graph.forward(np.asarray([[ids[0]]]), cache)  # one cached decode step
    step2, _ = graph.forward(np.asarray([ids[1:3]]), cache)  # and a 2-token chunk after it
    ref, ref_cache = torch_step(reference, ids, None)
    ref_step, ref_cache = torch_step(reference, [ids[0]], ref_cache)
    # openelm-pytorch's cached forward masks a multi-token chunk top-left aligned (SDPA is_causal), i.e. wrongly:
    # the chunk's reference is the uncached prefill of the whole sequence
    ref_step2 = torch_step(reference, [*ids, ids[0], *ids[1:3]], None)[0][-2:]
    diffs = [np.abs(a[0] - b).max() for a, b in ((logits, ref), (step, ref_step), (step2, ref_step2))]
    print(f"max abs logit diff (prefill, decode, chunk): {diffs}")
    assert max(diffs) < 1e-4, diffs
    assert np.abs(ref).max() > 0.5  # the comparison is not between two near-zero outputs
    # the decode step really reads the cache: without it the logits differ
    alone, _ = graph.forward(np.asarray([[ids[0]]]), graph.empty_cache())
    assert np.abs(alone[0, -1] - step[0, -1]).max() > 1e-2


def test_runtime_greedy_generation_equals_torch(built, reference) -> None:
    _, root = built
    model = open_folder(root / "export")
    ids = model.tokenizer.encode(PROMPT)
    params = GenerationParams.build(max_tokens=16, temperature=0.0, ignore_eos=True)
    got = list(model.token_stream(ids, params))
    assert got == _torch_greedy(reference, ids, 16)
    assert len(set(got)) > 1  # not a degenerate model repeating one token


def test_wo_int8_applies_and_the_gate_is_computed(built, tmp_path: Path) -> None:
    variant, root = built
    recipes = load_recipes(CONFIGS / "recipes.yaml")
    cands = {name: root / "cand" / name for name in ("fp32", "wo-int8")}
    for name, folder in cands.items():
        quantize(variant, recipes[name], src=root / "export", out=folder)
    import onnx

    ops = {n.op_type for n in onnx.load(str(cands["wo-int8"] / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    report = evaluate(
        task="causal-lm",
        candidates=cands,
        reference="fp32",
        gates=load_gates(CONFIGS / "gates.yaml"),
        out=tmp_path / "gates.json",
    ).model_dump(mode="json")
    fp32, int8 = report["candidates"]["fp32"], report["candidates"]["wo-int8"]
    assert fp32["metrics"]["ppl_ratio"] == pytest.approx(1.0) and fp32["passed"]
    m = int8["metrics"]
    assert m["eval_tokens"] > 100 and np.isfinite(m["ppl"]) and 0.0 <= m["top1_agreement"] <= 1.0
    assert int8["passed"] == (m["ppl_ratio"] <= 1.03 and m["top1_agreement"] >= 0.85)
    assert json.loads((tmp_path / "gates.json").read_text())["candidates"]["wo-int8"]["metrics"] == m


def test_routing_refuses_other_exporters_and_other_models(built, tmp_path: Path) -> None:
    variant, root = built
    with pytest.raises(ConfigError, match="needs exporter 'openelm'.*not 'optimum'"):
        export(variant, src=root / "fetch", out=tmp_path / "a", exporter="optimum")
    src = tmp_path / "llama-ish"
    shutil.copytree(root / "fetch", src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    write_manifest(src, stage="fetch", variant="tiny-openelm", source="test")
    with pytest.raises(ExportError, match="model_type='llama': use optimum"):
        export(variant, src=src, out=tmp_path / "b")
    (src / "config.json").write_text(json.dumps({**config, "share_input_output_layers": False}))
    write_manifest(src, stage="fetch", variant="tiny-openelm", source="test")
    with pytest.raises(ExportError, match="share_input_output_layers=False"):
        export(variant, src=src, out=tmp_path / "c")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_catalog_openelm_variants_route_to_the_openelm_exporter() -> None:
    from slmops.catalog.schema import load_catalog
    from slmops.export.exporters import EXPORTERS
    from slmops.export.stage import resolve_exporter

    catalog = load_catalog(CONFIGS / "catalog.yaml")
    openelm = [v for v in catalog.variants.values() if v.family == "openelm"]
    assert len(openelm) >= 8
    assert {resolve_exporter(v) for v in openelm} == {"openelm"} and "openelm" in EXPORTERS
    assert all(v.task == "causal-lm" for v in openelm)
    assert resolve_exporter(catalog.get("smollm2-135m-instruct")) == "optimum"
