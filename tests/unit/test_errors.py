"""Misuse of the public API raises an slmops error that names the bad value, never a bare built-in error."""

from __future__ import annotations

from pathlib import Path

import pytest

import slmops
from slmops.errors import (
    PyfuncInputError,
    SlmopsError,
    UnknownPluginError,
    UnknownTaskError,
    UnknownVariantError,
    UsageError,
)
from slmops.runtime import GenerationParams, ModelPool


@pytest.mark.parametrize(
    ("call", "error", "needle"),
    [
        (lambda: slmops.load(), UsageError, "needs a target"),
        (lambda: slmops.load(42), UsageError, "target=42"),
        (lambda: slmops.load("chat-cpu", device="tpu"), UsageError, "device='tpu'"),
        (lambda: slmops.load(task="translation"), UnknownTaskError, "unknown task 'translation'"),
        (lambda: slmops.load(task="causal-lm", max_memory_mb=-1), UsageError, "max_memory_mb=-1"),
        (lambda: ModelPool(max_memory_mb=0), UsageError, "max_memory_mb=0"),
        (lambda: GenerationParams.build(temprature=0.5), SlmopsError, "unknown option 'temprature'"),
        (lambda: GenerationParams.build(top_p=2), SlmopsError, "top_p=2"),
    ],
)
def test_public_api_misuse_raises_slmops_errors(call, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as err:
        call()
    assert isinstance(err.value, SlmopsError) and needle in str(err.value), str(err.value)


def test_registries_and_tables_name_what_they_know() -> None:
    from slmops.catalog import load_catalog
    from slmops.export.exporters import EXPORTERS
    from slmops.fetch.sources import SOURCES
    from slmops.quantize.ort import QUANTIZERS

    for registry, known in ((EXPORTERS, "optimum"), (SOURCES, "hub"), (QUANTIZERS, "matmul_nbits")):
        with pytest.raises(UnknownPluginError, match=known):
            registry["nope"]
    with pytest.raises(UnknownVariantError, match="smollm2-135m-instruct"):
        load_catalog(Path(__file__).resolve().parents[2] / "configs" / "catalog.yaml").get("smollm2-135m-instrct")


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ([], "empty"),
        ({"prompt": ["a", "b"], "messages": ["[]"]}, "different lengths"),
        ([3.5], "cannot read float"),
    ],
)
def test_pyfunc_rows_refuse_what_they_cannot_read(given, needle: str) -> None:
    from slmops.register.pyfunc import rows

    with pytest.raises(PyfuncInputError, match=needle):
        rows(given, "prompt")
