"""Every config file parses from configs/ and rejects bad values with a message naming them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from slmops.errors import ConfigError
from slmops.evaluate.gates import load_gates
from slmops.project import Project
from slmops.quantize.recipes import Recipe, load_recipes
from slmops.recommend.usecases import load_usecases
from slmops.settings import Settings

REAL = Path(__file__).resolve().parents[2] / "configs"


def test_real_configs_load_and_cross_check() -> None:
    project = Project.load(Settings(config_dir=REAL))
    assert set(project.config.selection) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    assert {"chat-cpu", "embeddings-cpu"} <= set(project.usecases)
    assert project.recipes["wo-int8"].bits == 8 and project.recipes["wo-int8"].method == "matmul_nbits"
    assert project.gates.gate("causal-lm").max_ppl_ratio == pytest.approx(1.03)
    assert project.gates.gate("fill-mask").min_top5_overlap == pytest.approx(0.80)
    assert project.remote_code == {}
    checks = project.config.export_validation
    assert checks.tolerance("causal-lm").rtol == pytest.approx(1e-3) and checks.tolerance(
        "fill-mask"
    ).atol == pytest.approx(1e-4)


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "configs"
    shutil.copytree(REAL, dst)
    return dst


def _edit(path: Path, fn) -> None:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("file", "mutate", "needles"),
    [
        ("recipes.yaml", lambda d: d["recipes"]["wo-int8"].update(bits=3), ["wo-int8", "bits"]),
        ("recipes.yaml", lambda d: d["recipes"]["wo-int8"].update(block_size=48), ["wo-int8", "block_size=48"]),
        ("recipes.yaml", lambda d: d["recipes"]["fp32"].update(speed="fast"), ["fp32", "speed"]),
        (
            "recipes.yaml",
            lambda d: d["recipes"]["dyn-int8-pc"].update(embedding=True),
            ["dyn-int8-pc", "embedding", "gguf_blocks"],
        ),
        (
            "recipes.yaml",
            lambda d: d["recipes"]["wo-int8"].update(embedding=True, lm_head=False),
            ["wo-int8", "lm_head: true"],
        ),
        (
            "recipes.yaml",
            lambda d: d["recipes"]["wo-int8"].update(algorithm="k_quant"),
            ["wo-int8", "k_quant", "bits=8"],
        ),
        ("recipes.yaml", lambda d: d["recipes"]["gguf-q4"].update(remainder="approx"), ["gguf-q4", "remainder"]),
        ("gates.yaml", lambda d: d["causal-lm"].update(max_ppl_ratio=0.5), ["max_ppl_ratio", "0.5"]),
        ("usecases.yaml", lambda d: d["usecases"]["chat-cpu"].update(max_memory_mb=-1), ["chat-cpu", "max_memory_mb"]),
        ("usecases.yaml", lambda d: d["usecases"]["chat-cpu"].update(objective="vibes"), ["chat-cpu", "objective"]),
        ("usecases.yaml", lambda d: d["usecases"]["chat-cpu"].update(profile="tpu-1"), ["chat-cpu", "'tpu-1'"]),
        (
            "usecases.yaml",
            lambda d: d["usecases"]["chat-cpu"].update(profile="cuda"),
            ["chat-cpu", "profile 'cuda' runs on cuda", "device 'cpu'"],
        ),
        (
            "pipeline.yaml",
            lambda d: d.update(deploy={"heartbeat_s": 60, "crashed_after_s": 60}),
            ["crashed_after_s (60) must exceed heartbeat_s (60)"],
        ),
        ("pipeline.yaml", lambda d: d.update(deploy={"heartbeat_s": 5}), ["deploy.heartbeat_s", "5"]),
        ("pipeline.yaml", lambda d: d["benchmark"].update(new_tokens=0), ["benchmark.new_tokens", "0"]),
        ("pipeline.yaml", lambda d: d["benchmark"].update(headline_prompt_tokens=100), ["headline_prompt_tokens=100"]),
        ("pipeline.yaml", lambda d: d["benchmark"].update(profiles=["tpu"]), ["benchmark.profiles", "tpu"]),
        ("pipeline.yaml", lambda d: d["benchmark"].update(batch_sizes=[0, 32]), ["batch_sizes", "[0]"]),
        ("devices.yaml", lambda d: d["profiles"]["cpu-2t"].update(device="npu"), ["cpu-2t", "device", "npu"]),
        ("devices.yaml", lambda d: d["profiles"]["cpu-2t"].update(threads=0), ["cpu-2t", "threads"]),
        (
            "pipeline.yaml",
            lambda d: d["selection"]["all-minilm-l6-v2"].update(recipes=["fp32", "wo-int8"]),
            ["wo-int8", "sentence-embedding"],
        ),
        (
            "pipeline.yaml",
            lambda d: d["selection"]["all-minilm-l6-v2"].update(recipes=["dyn-int8-pc"]),
            ["reference recipe"],
        ),
        ("pipeline.yaml", lambda d: d["selection"]["all-minilm-l6-v2"].update(source="ftp"), ["source='ftp'"]),
        ("pipeline.yaml", lambda d: d["selection"].update({"no-such-model": {"recipes": ["fp32"]}}), ["no-such-model"]),
        (
            "pipeline.yaml",
            lambda d: d["selection"].update({"openelm-270m": {"exporter": "optimum", "recipes": ["fp32"]}}),
            ["selection.openelm-270m.exporter", "needs exporter 'openelm'", "not 'optimum'"],
        ),
        ("pipeline.yaml", lambda d: d["selection"]["all-minilm-l6-v2"].update(exporter="magic"), ["exporter='magic'"]),
        (
            "pipeline.yaml",
            lambda d: d["export_validation"]["default"].update(atl=1e-3),
            ["export_validation.default.atl"],
        ),
        (
            "pipeline.yaml",
            lambda d: d["export_validation"]["tasks"].update({"causal-lm": {"atol": 0}}),
            ["export_validation.tasks.causal-lm.atol", "0"],
        ),
        (
            "gates.yaml",
            lambda d: d["fill-mask"].update(min_top1_agreement=1.5),
            ["fill-mask.min_top1_agreement", "1.5"],
        ),
    ],
)
def test_bad_config_is_rejected_clearly(tmp_path: Path, file: str, mutate, needles: list[str]) -> None:
    config_dir = _copy(tmp_path)
    _edit(config_dir / file, mutate)
    with pytest.raises(Exception) as err:
        Project.load(Settings(config_dir=config_dir))
    assert isinstance(err.value, (ConfigError, LookupError))
    for needle in needles:
        assert needle in str(err.value), str(err.value)


CONFIG_FILES = (
    "catalog.yaml",
    "recipes.yaml",
    "gates.yaml",
    "usecases.yaml",
    "pipeline.yaml",
    "devices.yaml",
    "remote_code.yaml",
)


@pytest.mark.parametrize("file", CONFIG_FILES)
def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, file: str) -> None:
    config_dir = _copy(tmp_path)
    path = config_dir / file
    lines = path.read_text().splitlines()
    lines.insert(3, "  broken: [unclosed")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        Project.load(Settings(config_dir=config_dir))
    message = str(err.value)
    assert str(path) in message and "not valid YAML at line" in message and "fix the syntax" in message, message


@pytest.mark.parametrize(
    ("file", "mutate", "needles"),
    [
        ("catalog.yaml", lambda d: d.update(extras={}), ["catalog.yaml", "top level"]),
        (
            "catalog.yaml",
            lambda d: d["variants"]["smollm2-135m-instruct"].update(colour="red"),
            ["variants.smollm2-135m-instruct.colour", "remove it or correct its spelling"],
        ),
        ("recipes.yaml", lambda d: d.update(extra_recipes={}), ["unknown top-level keys ['extra_recipes']"]),
        ("recipes.yaml", lambda d: d.update(recipes=["fp32"]), ["top-level 'recipes:' mapping"]),
        ("gates.yaml", lambda d: d.update(translation={"min_bleu": 0.5}), ["translation", "unknown task"]),
        ("gates.yaml", lambda d: d["causal-lm"].update(max_ppl=1.1), ["causal-lm.max_ppl", "remove it"]),
        ("gates.yaml", lambda d: d["causal-lm"].pop("max_ppl_ratio"), ["causal-lm.max_ppl_ratio", "add it"]),
        ("usecases.yaml", lambda d: d["usecases"].update({"chat-cpu": "fast"}), ["usecases.chat-cpu", "mapping"]),
        ("usecases.yaml", lambda d: d["usecases"]["chat-cpu"].update(task="translation"), ["usecases.chat-cpu.task"]),
        ("pipeline.yaml", lambda d: d.update(devices=["cpu"]), ["devices", "remove it or correct its spelling"]),
        (
            "pipeline.yaml",
            lambda d: d["export_validation"]["tasks"].update({"ocr": {"atol": 1}}),
            ["ocr", "unknown tasks"],
        ),
        ("devices.yaml", lambda d: d.update(profiles=None), ["'profiles:' mapping"]),
        ("remote_code.yaml", lambda d: d.update(allow=["some/repo"]), ["allow", "dictionary"]),
        ("remote_code.yaml", lambda d: d.update(allow={"some/repo": "main"}), ["allow.some/repo", "main"]),
        ("remote_code.yaml", lambda d: d.update(trust=True), ["trust", "remove it"]),
    ],
)
def test_wrong_shape_or_unknown_key_names_the_key_path(tmp_path: Path, file: str, mutate, needles: list[str]) -> None:
    config_dir = _copy(tmp_path)
    _edit(config_dir / file, mutate)
    with pytest.raises(ConfigError) as err:
        Project.load(Settings(config_dir=config_dir))
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_missing_config_file_says_what_to_set(tmp_path: Path) -> None:
    for loader in (load_recipes, load_gates, load_usecases):
        with pytest.raises(ConfigError, match="SLMOPS_CONFIG_DIR"):
            loader(tmp_path / "nope.yaml")


def test_openelm_selection_without_exporter_routes_through_the_catalog(tmp_path: Path) -> None:
    from slmops.export.stage import resolve_exporter

    config_dir = _copy(tmp_path)
    _edit(
        config_dir / "pipeline.yaml",
        lambda d: d["selection"].update({"openelm-270m": {"source": "hub", "recipes": ["fp32", "wo-int8"]}}),
    )
    project = Project.load(Settings(config_dir=config_dir))
    variant, sel = project.selected("openelm-270m")
    assert sel.exporter is None and resolve_exporter(variant, sel.exporter) == "openelm"


def test_every_recipe_says_its_bits_and_granularity() -> None:
    recipes = load_recipes(REAL / "recipes.yaml")
    expected = {
        "fp32": (32, "none"),
        "wo-int8": (8, "block-128, lm_head block-64"),
        "wo-int4": (4, "block-32"),
        "gguf-q4": (4, "block-32"),
        "fp16": (16, "none"),
        "dyn-int8-pc": (8, "per-channel"),
        "wo-int8-gptq4": (
            8,
            "block-128, lm_head block-64; 4-bit block-32 gptq: mlp/gate_proj, attn/(qkv|q|k|v)_proj/, attn/o_proj/",
        ),
    }
    for name, (bits, granularity) in expected.items():
        assert (recipes[name].weight_bits, recipes[name].granularity) == (bits, granularity), name


def test_a_separate_lm_head_block_size_is_a_power_of_two_for_matmul_nbits_only() -> None:
    base = load_recipes(REAL / "recipes.yaml")["wo-int8"].model_dump()
    with pytest.raises(ValueError, match="lm_head_block_size=48 must be a power of two"):
        Recipe.model_validate({**base, "lm_head_block_size": 48})
    gguf = load_recipes(REAL / "recipes.yaml")["gguf-q4"].model_dump()
    with pytest.raises(ValueError, match="only apply to method matmul_nbits"):
        Recipe.model_validate({**gguf, "lm_head_block_size": 64})


def test_low_bits_apply_to_a_wider_matmul_nbits_recipe_with_a_valid_pattern() -> None:
    recipes = load_recipes(REAL / "recipes.yaml")
    mixed = recipes["wo-int8-gptq4"].model_dump()
    low = mixed["low_bits"][0]
    with pytest.raises(ValueError, match="low_bits applies to method matmul_nbits with bits above 4"):
        Recipe.model_validate({**mixed, "bits": 4, "precision": "int4"})
    with pytest.raises(ValueError, match="not 'dynamic_int8'"):
        Recipe.model_validate({**recipes["dyn-int8-pc"].model_dump(), "low_bits": mixed["low_bits"]})
    with pytest.raises(ValueError, match=r"low_bits.nodes 'mlp/\(gate' is not a regular expression"):
        Recipe.model_validate({**mixed, "low_bits": {**low, "nodes": "mlp/(gate"}})
    with pytest.raises(ValueError, match="low_bits.block_size=48 must be a power of two"):
        Recipe.model_validate({**mixed, "low_bits": [low, {**low, "block_size": 48}]})
    with pytest.raises(ValueError, match="first_token_weight"):
        Recipe.model_validate({**mixed, "low_bits": {**low, "first_token_weight": 0.5}})
    with pytest.raises(ValueError, match=r"one calibration_tokens, not \[32768, 1024\]"):
        Recipe.model_validate({**mixed, "low_bits": [low, {**low, "nodes": "o_proj", "calibration_tokens": 1024}]})
    # one mapping is a list of one; none is an empty list
    assert Recipe.model_validate({**mixed, "low_bits": low}).low_bits == recipes["wo-int8-gptq4"].low_bits[:1]
    assert Recipe.model_validate({**mixed, "low_bits": None}).low_bits == []
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        Recipe.model_validate({**mixed, "low_bits": {**low, "group": 32}})


def test_awq_alphas_need_low_bits_and_distinct_exponents_between_0_and_1() -> None:
    mixed = {**load_recipes(REAL / "recipes.yaml")["wo-int8-gptq4"].model_dump(), "awq_alphas": [0, 0.25, 0.5]}
    with pytest.raises(ValueError, match="awq_alphas scales the inputs of low_bits MatMuls: give low_bits too"):
        Recipe.model_validate({**mixed, "low_bits": []})
    with pytest.raises(ValueError, match=r"awq_alphas \[0.0, 1.5\]: give distinct exponents between 0 and 1"):
        Recipe.model_validate({**mixed, "awq_alphas": [0, 1.5]})
    with pytest.raises(ValueError, match=r"awq_alphas \[0.25, 0.25\]"):
        Recipe.model_validate({**mixed, "awq_alphas": [0.25, 0.25]})
    granularity = Recipe.model_validate(mixed).granularity
    assert "gptq+awq" in granularity
    assert "gptq+awq" not in Recipe.model_validate({**mixed, "awq_alphas": []}).granularity
