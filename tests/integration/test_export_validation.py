"""Every export is checked against PyTorch on fixed inputs; the diffs and tolerances land in the manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slmops.artifacts import read_manifest, write_manifest
from slmops.catalog.schema import Variant
from slmops.errors import ExportError
from slmops.export import export
from slmops.export.config import Tolerance, ValidationConfig
from slmops.export.exporters import EXPORTERS, export_optimum
from slmops.export.validate import validate_export
from slmops.runtime.card import read_model_card


def _fetched(tiny_models, vid: str, root: Path) -> tuple[Variant, Path]:
    folder, facts = tiny_models[vid]
    src = root / f"fetch-{vid}"
    shutil.copytree(folder, src)
    write_manifest(src, stage="fetch", variant=vid, source="test")
    return Variant(id=vid, family="tiny", repo_id=f"tiny/{vid}", revision="main", license="apache-2.0", **facts), src


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Variant, Path, Path]]:
    root = tmp_path_factory.mktemp("validated")
    out = {}
    for vid in ("tiny-llama", "tiny-bert"):
        variant, src = _fetched(tiny_models, vid, root)
        export(variant, src=src, out=root / f"export-{vid}")
        out[vid] = (variant, src, root / f"export-{vid}")
    return out


@pytest.mark.parametrize(
    ("vid", "output", "atol", "rtol"),
    [
        ("tiny-llama", "logits", 1e-4, 1e-3),
        ("tiny-bert", "last_hidden_state", 1e-4, 0.0),
    ],
)
def test_the_manifest_records_small_diffs(exported, vid: str, output: str, atol: float, rtol: float) -> None:
    _, _, folder = exported[vid]
    checked = read_manifest(folder, verify=True).info["validation"]
    assert set(checked) == {output}
    row = checked[output]
    assert 0.0 <= row["max_abs_diff"] < 1e-4
    assert (row["atol"], row["rtol"]) == (atol, rtol)
    assert row["limit"] == pytest.approx(atol + rtol * row["reference_max_abs"]) and row["reference_max_abs"] > 0.1
    assert "tokens" in row["inputs"] and "Water boils" in row["inputs"]


def test_the_tolerance_comes_from_the_config(exported) -> None:
    variant, src, folder = exported["tiny-bert"]
    strict = ValidationConfig(default=Tolerance(atol=1e-12))
    with pytest.raises(
        ExportError, match=r"'last_hidden_state' differs from PyTorch by max abs .* above the tolerance 1e-12"
    ):
        validate_export(variant, src=src, folder=folder, card=read_model_card(folder), config=strict)


def _perturb_largest_weight(folder: Path) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(init)  # noise, not a constant shift, which a following LayerNorm would cancel
    weights = weights + np.random.default_rng(0).normal(0.0, 0.1, weights.shape).astype(weights.dtype)
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(folder / "model.onnx"))


def test_a_corrupted_export_fails_validation(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def corrupt(variant, src, out):
        card = export_optimum(variant, src, out)
        _perturb_largest_weight(out)
        return card

    monkeypatch.setitem(EXPORTERS, "corrupt", corrupt)
    variant, src = _fetched(tiny_models, "tiny-bert", tmp_path)
    with pytest.raises(ExportError) as err:
        export(variant, src=src, out=tmp_path / "out", exporter="corrupt")
    message = str(err.value)
    assert "tiny-bert: ONNX output 'last_hidden_state' differs from PyTorch by max abs" in message
    assert "above the tolerance 0.0001 (atol 0.0001 + rtol 0 x max|ref|" in message
    assert "re-export" in message
    assert not (tmp_path / "out").exists()  # nothing half-validated is published
