"""The default build's route (GGUF -> HF folder -> genai graph -> gguf-q4 / wo-int8 / wo-int8-gptq4) twice, in two places:
byte-identical stage folders, so DVC sees a rebuild with the same inputs as no change (test_dvc.py covers the
Hub source, the optimum exporter and the gate/metrics files)."""

from __future__ import annotations

from pathlib import Path

from slmops.artifacts import MANIFEST_NAME
from slmops.export import export
from slmops.fetch.sources import gguf_to_hf
from slmops.quantize import load_recipes, quantize
from tests.support.tiny import as_fetched

RECIPES = load_recipes(Path(__file__).resolve().parents[2] / "configs" / "recipes.yaml")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_gguf_genai_route_builds_byte_identical_folders(tiny_models, tmp_path: Path) -> None:
    from tests.support.tiny import build_tiny_gguf

    folder, facts = tiny_models["tiny-llama"]
    gguf = tmp_path / "tiny.gguf"
    build_tiny_gguf(folder, gguf)
    built = []
    for run in ("a", "b"):
        root = tmp_path / run
        gguf_to_hf(gguf, root / "fetch")
        variant = as_fetched(root / "fetch", "tiny-llama", facts, source="gguf")
        export(variant, src=root / "fetch", out=root / "export", exporter="genai")
        for name in ("gguf-q4", "wo-int8", "wo-int8-gptq4"):  # the last calibrates: same text, same codes
            quantize(variant, RECIPES[name], src=root / "export", out=root / "cand" / name, fetched=root / "fetch")
        built.append(root)
    a, b = built
    for stage in ("fetch", "export", "cand/gguf-q4", "cand/wo-int8", "cand/wo-int8-gptq4"):
        assert (a / stage / MANIFEST_NAME).is_file()
        first, second = _files(a / stage), _files(b / stage)
        assert first.keys() == second.keys(), stage
        assert [name for name in first if first[name] != second[name]] == [], stage
