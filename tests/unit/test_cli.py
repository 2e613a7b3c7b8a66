from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slmops.cli import app

runner = CliRunner()


def test_catalog_list_json_has_every_variant_with_fields() -> None:
    result = runner.invoke(app, ["catalog", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) >= 35
    for row in rows:
        for key in (
            "id",
            "repo_id",
            "revision",
            "task",
            "params",
            "layers",
            "hidden_size",
            "attention_heads",
            "kv_heads",
            "vocab_size",
            "context_length",
            "license",
            "capabilities",
            "remote_code",
            "size_class",
        ):
            assert key in row, (row["id"], key)


def test_catalog_filters() -> None:
    result = runner.invoke(app, ["catalog", "list", "--json", "--family", "smollm2", "--max-params", "400M"])
    assert sorted(r["id"] for r in json.loads(result.output)) == [
        "smollm2-135m",
        "smollm2-135m-instruct",
        "smollm2-360m",
        "smollm2-360m-instruct",
    ]


def test_unknown_variant_is_one_line_with_suggestion() -> None:
    result = runner.invoke(app, ["catalog", "show", "smollm2-135m-instrct"])
    assert result.exit_code == 1
    assert "unknown variant 'smollm2-135m-instrct'" in result.output and "smollm2-135m-instruct" in result.output
    assert "Traceback" not in result.output


def test_bad_cli_values_are_named() -> None:
    for args, needle in [
        (["catalog", "list", "--capability", "telepathy"], "telepathy"),
        (["catalog", "list", "--max-params", "lots"], "lots"),
        (["estimate", "smollm2-135m", "--precision", "int3"], "int3"),
        (["estimate", "smollm2-135m", "--context", "999999"], "999999"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and needle in result.output, (args, result.output)


def test_estimate_json() -> None:
    result = runner.invoke(
        app, ["estimate", "smollm2-135m-instruct", "--precision", "int8", "--context", "2048", "--json"]
    )
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["total"] == data["weights"] + data["kv_cache"] + data["activations"] + data["overhead"]
    assert data["devices"]["laptop-16gb"] is True


def test_search_and_typo() -> None:
    result = runner.invoke(app, ["catalog", "search", "smol2 instruct", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)[0]["id"].startswith("smollm2-")
    result = runner.invoke(app, ["catalog", "search", "qqqqqq"])
    assert result.exit_code == 1 and "no variant matches" in result.output


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        (["export", "all-minilm-l6-v2"], "run `slmops fetch all-minilm-l6-v2` first"),
        (["quantize", "all-minilm-l6-v2"], "run `slmops export all-minilm-l6-v2` first"),
        (["evaluate", "all-minilm-l6-v2"], "run `slmops quantize all-minilm-l6-v2` first"),
        (["bench", "all-minilm-l6-v2"], "run `slmops quantize all-minilm-l6-v2` first"),
        (["register", "all-minilm-l6-v2"], "run `slmops evaluate all-minilm-l6-v2` first"),
    ],
)
def test_stage_before_its_input_names_the_command_that_makes_it(command: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1
    assert needle in result.output and "Traceback" not in result.output
