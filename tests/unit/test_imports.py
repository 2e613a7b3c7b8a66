"""Apps import the loader; it must stay free of torch, transformers and optimum, and import must do no work."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "optimum", "prefect", "dvc")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {m.split(".")[0] for m in out.split()}


def test_loader_imports_no_heavy_frameworks() -> None:
    loaded = _modules_after("import slmops\nfrom slmops import load\nimport slmops.runtime, slmops.runtime.open")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_import_slmops_is_lazy() -> None:
    loaded = _modules_after("import slmops")
    assert "onnxruntime" not in loaded and "mlflow" not in loaded


def test_import_creates_nothing(tmp_path) -> None:
    subprocess.run(
        [sys.executable, "-c", "import slmops, slmops.cli, slmops.pipeline, slmops.runtime"], cwd=tmp_path, check=True
    )
    assert list(tmp_path.iterdir()) == []


def test_the_loader_path_runs_without_pydantic() -> None:
    """Settings, manifests, model cards and generation parameters are records (slmops.records): the loader and a
    generation step must not pull in pydantic (14-16 MB and 0.13-0.25 s of cold start, measured)."""
    loaded = _modules_after(
        "import slmops.runtime.loader, slmops.runtime.decoder, slmops.runtime.encoder, slmops.runtime.registry\n"
        "from slmops.settings import get_settings\nfrom slmops.runtime.params import GenerationParams\n"
        "get_settings(); GenerationParams.build(max_tokens=4, temperature=0, stop='x')"
    )
    assert "pydantic" not in loaded and "pydantic_core" not in loaded
