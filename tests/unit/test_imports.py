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
