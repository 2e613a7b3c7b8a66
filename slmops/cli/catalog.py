"""`slmops catalog ...` and `slmops estimate`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from slmops.catalog.schema import CAPABILITIES, SizeClass
from slmops.cli.common import cli_errors, console, print_json
from slmops.errors import ConfigError
from slmops.tasks import TASKS

app = typer.Typer(help="Browse the model catalog.", no_args_is_help=True)


def _catalog():
    from slmops.catalog import load_catalog

    return load_catalog()


def _variant_row(v) -> dict:
    return v.model_dump(mode="json")


@app.command("list")
@cli_errors
def list_variants(
    family: Annotated[str | None, typer.Option(help="Family key, e.g. smollm2.")] = None,
    size: Annotated[SizeClass | None, typer.Option(help="Size class.")] = None,
    capability: Annotated[str | None, typer.Option(help=f"One of: {', '.join(CAPABILITIES)}.")] = None,
    task: Annotated[str | None, typer.Option(help=f"One of: {', '.join(TASKS)}.")] = None,
    max_params: Annotated[str | None, typer.Option(help="Upper bound, e.g. 200M or 1.1B.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List catalog variants, smallest first."""
    from slmops.catalog.estimate import format_params, parse_params
    from slmops.catalog.search import VariantFilter, filter_variants

    catalog = _catalog()
    if family is not None and family not in catalog.families:
        raise ConfigError(f"--family {family!r} is unknown; use one of {', '.join(catalog.families)}")
    if capability is not None and capability not in CAPABILITIES:
        raise ConfigError(f"--capability {capability!r} is unknown; use one of {', '.join(CAPABILITIES)}")
    if task is not None and task not in TASKS:
        raise ConfigError(f"--task {task!r} is unknown; use one of {', '.join(TASKS)}")
    criteria = VariantFilter(
        family=family,
        size_class=size,
        capability=capability,
        task=task,
        max_params=parse_params(max_params) if max_params else None,
    )
    variants = filter_variants(catalog, criteria)
    if as_json:
        print_json([_variant_row(v) for v in variants])
        return
    table = Table(title=f"{len(variants)} variants")
    table.add_column("id", no_wrap=True)
    for col in ("params", "size", "task", "ctx", "capabilities", "revision"):
        table.add_column(col, overflow="fold")
    for v in variants:
        rev = v.revision[:10] if v.revision_is_pinned else f"[yellow]{v.revision}[/]"
        table.add_row(
            v.id,
            format_params(v.params),
            v.size_class.value,
            v.task,
            str(v.context_length),
            " ".join(c.split("_")[0] for c in v.capabilities),
            rev,
        )
    console.print(table)


@app.command("show")
@cli_errors
def show(variant: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every field of one variant."""
    v = _catalog().get(variant)
    if as_json:
        print_json(_variant_row(v))
        return
    table = Table(show_header=False, title=v.id)
    for key, value in _variant_row(v).items():
        table.add_row(key, str(value))
    console.print(table)


@app.command("search")
@cli_errors
def search_cmd(text: str, limit: int = 10, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Ranked text search over ids, repos, families, tasks and capabilities."""
    from slmops.catalog.search import search, suggest

    catalog = _catalog()
    hits = search(catalog, text, limit=limit)
    if as_json:
        print_json([{"id": v.id, "score": s} for v, s in hits])
        return
    if not hits:
        close = suggest(catalog, text)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        console.print(f"no variant matches {text!r}.{hint}")
        raise typer.Exit(1)
    for v, score in hits:
        console.print(f"{score:6.1f}  {v.id}  [dim]{v.repo_id}[/]")


def estimate(
    variant: str,
    precision: Annotated[str, typer.Option(help="fp32, fp16, int8 or int4.")] = "fp32",
    context: Annotated[int | None, typer.Option(help="Context length (default: the model's).")] = None,
    batch: Annotated[int, typer.Option(help="Concurrent sequences.")] = 1,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Estimate memory (weights + KV cache + runtime) and device compatibility."""
    from slmops.catalog.estimate import device_compatibility, estimate_memory, format_bytes

    v = _catalog().get(variant)
    est = estimate_memory(v, precision=precision, context_length=context, batch=batch)
    compat = device_compatibility(v, precision=precision, context_length=context)
    data = {
        "variant": v.id,
        "precision": precision,
        "context_length": context or v.context_length,
        "batch": batch,
        "weights": est.weights,
        "kv_cache": est.kv_cache,
        "activations": est.activations,
        "overhead": est.overhead,
        "total": est.total,
        "devices": compat,
    }
    if as_json:
        print_json(data)
        return
    table = Table(title=f"{v.id} at {precision}, context {data['context_length']}, batch {batch}", show_header=False)
    for key in ("weights", "kv_cache", "activations", "overhead", "total"):
        table.add_row(key, format_bytes(data[key]))
    table.add_row("fits", ", ".join(d for d, ok in compat.items() if ok) or "none of the device classes")
    console.print(table)
