from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slmops.catalog.schema import SizeClass, load_catalog, parse_catalog
from slmops.catalog.search import VariantFilter, filter_variants, search, suggest
from slmops.errors import CatalogError, UnknownVariantError

REAL = Path(__file__).resolve().parents[2] / "configs" / "catalog.yaml"
SEED_FAMILIES = {"smollm", "smollm2", "tinyllama", "openelm", "minilm"}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(REAL)


def test_real_catalog_has_every_seed_family_and_variant(catalog) -> None:
    assert set(catalog.families) == SEED_FAMILIES
    ids = set(catalog.variants)
    for size in ("135m", "360m", "1.7b"):
        for fam in ("smollm", "smollm2"):
            assert {f"{fam}-{size}", f"{fam}-{size}-instruct"} <= ids
    for size in ("270m", "450m", "1.1b", "3b"):
        assert {f"openelm-{size}", f"openelm-{size}-instruct"} <= ids
    assert {"tinyllama-1.1b-3t", "tinyllama-1.1b-chat-v1.0"} <= ids
    assert {"all-minilm-l6-v2", "all-minilm-l12-v2", "minilm-l12-h384-uncased", "multilingual-minilm-l12-h384"} <= ids
    assert {f"ms-marco-minilm-l{n}-v2" for n in (2, 4, 6, 12)} <= ids
    assert sum(v.id.startswith("tinyllama-1.1b-step") for v in catalog.variants.values()) >= 3


def test_real_catalog_facts_are_consistent(catalog) -> None:
    for v in catalog.variants.values():
        assert v.kv_heads <= v.attention_heads
        assert v.remote_code == (v.family == "openelm"), v.id
        if v.task == "causal-lm":
            assert "text_generation" in v.capabilities
    smol = catalog.get("smollm2-135m-instruct")
    assert (smol.params, smol.layers, smol.hidden_size, smol.kv_heads, smol.vocab_size) == (
        134515008,
        30,
        576,
        3,
        49152,
    )
    assert smol.offline_source is not None and smol.offline_source.kind == "gguf"
    assert catalog.get("all-minilm-l6-v2").offline_source.kind == "package"


@pytest.mark.parametrize(
    ("params", "size"),
    [
        (1, SizeClass.TINY),
        (49_999_999, SizeClass.TINY),
        (50_000_000, SizeClass.SMALL),
        (199_999_999, SizeClass.SMALL),
        (200_000_000, SizeClass.MEDIUM),
        (500_000_000, SizeClass.LARGE),
        (3_000_000_000, SizeClass.LARGE),
    ],
)
def test_size_class_is_derived(params: int, size: SizeClass) -> None:
    assert SizeClass.of(params) == size


def _raw() -> dict:
    return yaml.safe_load(REAL.read_text())


def _variant(data: dict, vid: str = "smollm2-135m") -> dict:
    return data["variants"][vid]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _variant(d).update(colour="red"), "colour"),
        (lambda d: _variant(d).update(task="chatbot"), "task"),
        (lambda d: _variant(d).update(params=-5), "params"),
        (lambda d: _variant(d).update(kv_heads=99), "kv_heads"),
        (lambda d: _variant(d).update(capabilities=["telepathy"]), "capabilities"),
        (lambda d: _variant(d).update(family="nope"), "family: 'nope'"),
        (lambda d: _variant(d).update(unverified=["colour"]), "unverified"),
    ],
)
def test_bad_entry_names_file_variant_and_field(mutate, expected: str) -> None:
    data = _raw()
    mutate(data)
    with pytest.raises(CatalogError) as err:
        parse_catalog(data, source=Path("configs/catalog.yaml"))
    message = str(err.value)
    assert "configs/catalog.yaml" in message and "smollm2-135m" in message and expected in message


def test_unreadable_catalog_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(bad)


def test_unknown_variant_suggests_close_ids(catalog) -> None:
    with pytest.raises(UnknownVariantError) as err:
        catalog.get("smolm2-135m-instruct")
    assert "smollm2-135m-instruct" in str(err.value)
    assert "smollm2-135m" in suggest(catalog, "smollm2-135")


def test_search_ranks_exact_and_relevant_first(catalog) -> None:
    hits = [v.id for v, _ in search(catalog, "smollm2-360m-instruct")]
    assert hits[0] == "smollm2-360m-instruct"
    chat = [v.id for v, _ in search(catalog, "tinyllama chat")]
    assert chat and all(v.startswith("tinyllama-1.1b-chat") for v in chat[:3])
    assert [v.id for v, _ in search(catalog, "cross-encoder")][:1][0].startswith("ms-marco")
    assert search(catalog, "zzzz-no-such-model") == []


def test_filter_by_every_criterion(catalog) -> None:
    small_chat = filter_variants(catalog, VariantFilter(capability="chat", max_params=200_000_000))
    assert small_chat and all("chat" in v.capabilities and v.params <= 200_000_000 for v in small_chat)
    enc = filter_variants(catalog, VariantFilter(task="sentence-embedding"))
    assert {v.id for v in enc} == {"all-minilm-l6-v2", "all-minilm-l12-v2"}
    tiny = filter_variants(catalog, VariantFilter(size_class=SizeClass.TINY, family="minilm"))
    assert tiny and all(v.size_class == SizeClass.TINY for v in tiny)
    params = [v.params for v in filter_variants(catalog, VariantFilter())]
    assert params == sorted(params)
