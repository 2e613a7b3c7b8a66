"""The catalog's data model: families and variants, validated from configs/catalog.yaml."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from slmops.errors import CatalogError, ConfigError, UnknownVariantError
from slmops.tasks import TaskName

Capability = Literal["text_generation", "instruction_following", "chat", "code_generation", "reasoning", "multilingual"]
CAPABILITIES: tuple[str, ...] = (
    "text_generation",
    "instruction_following",
    "chat",
    "code_generation",
    "reasoning",
    "multilingual",
)
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


class SizeClass(str, Enum):
    """Size classes by parameter count (derived, never typed by hand)."""

    TINY = "tiny"  # < 50M
    SMALL = "small"  # 50M - 200M
    MEDIUM = "medium"  # 200M - 500M
    LARGE = "large"  # >= 500M

    @classmethod
    def of(cls, params: int) -> SizeClass:
        if params < 50_000_000:
            return cls.TINY
        if params < 200_000_000:
            return cls.SMALL
        if params < 500_000_000:
            return cls.MEDIUM
        return cls.LARGE


class OfflineSource(BaseModel):
    """Weights that ship inside an installed Python package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["gguf", "package"]
    package: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    path: str


class Variant(BaseModel):
    """One model variant: a Hub repo at a revision, with the facts later stages rely on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    family: str
    repo_id: Annotated[str, Field(pattern=r"^[\w.\-]+/[\w.\-]+$")]
    revision: Annotated[str, Field(min_length=1)]
    task: TaskName
    architecture: str
    params: Annotated[int, Field(gt=0)]
    layers: Annotated[int, Field(gt=0)]
    hidden_size: Annotated[int, Field(gt=0)]
    attention_heads: Annotated[int, Field(gt=0)]
    kv_heads: Annotated[int, Field(gt=0)]
    head_dim: Annotated[int, Field(gt=0)]
    vocab_size: Annotated[int, Field(gt=0)]
    context_length: Annotated[int, Field(gt=0)]
    tie_word_embeddings: bool | None = None
    license: str
    capabilities: list[Capability] = Field(default_factory=list)
    remote_code: bool = False
    # the export route this variant needs (a registered exporter); None: the pipeline selection's, else optimum
    exporter: str | None = None
    training_tokens: Annotated[float, Field(gt=0)] | None = None
    languages: list[str] = Field(default_factory=lambda: ["en"])
    offline_source: OfflineSource | None = None
    allow_pickle: bool = False
    unverified: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id_format(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(f"variant id {value!r} must be lower-case kebab-case (a-z, 0-9, '.', '-')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Variant:
        if self.kv_heads > self.attention_heads:
            raise ValueError(f"kv_heads={self.kv_heads} exceeds attention_heads={self.attention_heads}")
        known = set(type(self).model_fields)
        bad = [name for name in self.unverified if name not in known]
        if bad:
            raise ValueError(f"unverified names unknown fields {bad}")
        return self

    @computed_field  # type: ignore[prop-decorator]  # mypy cannot type a decorator stacked on @property
    @property
    def size_class(self) -> SizeClass:
        return SizeClass.of(self.params)

    @property
    def revision_is_pinned(self) -> bool:
        """True when the revision is a full commit sha, not a branch or tag."""
        return bool(_SHA_RE.match(self.revision))


class Family(BaseModel):
    """A model family; ``defaults`` fill any variant field the variant leaves out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    display_name: str
    publisher: str
    homepage: str | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)

    @field_validator("defaults")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = sorted((set(value) - set(Variant.model_fields)) | ({"id", "family"} & set(value)))
        if bad:
            raise ValueError(f"defaults may only hold variant fields other than id/family; got {bad}")
        return value


class Catalog(BaseModel):
    """All families and variants. Build with :func:`load_catalog`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    families: dict[str, Family]
    variants: dict[str, Variant]

    def get(self, variant_id: str) -> Variant:
        """The variant with this id; raises UnknownVariantError with did-you-mean suggestions."""
        try:
            return self.variants[variant_id]
        except KeyError:
            from slmops.catalog.search import suggest

            hint = suggest(self, variant_id)
            extra = f" Did you mean: {', '.join(hint)}?" if hint else " Run `slmops catalog list` to see the ids."
            raise UnknownVariantError(f"unknown variant {variant_id!r}.{extra}") from None


def parse_catalog(data: Any, *, source: Path) -> Catalog:
    """Validate raw YAML data into a Catalog; errors name the file, the key path (variant, field) and the fix."""
    from slmops.configfile import validate

    if not isinstance(data, dict) or set(data) - {"families", "variants"} or "variants" not in data:
        raise CatalogError(f"{source}: top level must be a mapping with 'families' and 'variants' (and nothing else)")
    families: dict[str, Family] = {}
    for key, raw in (data.get("families") or {}).items():
        families[key] = validate(raw, Family, path=source, loc=("families", key), error=CatalogError)
    variants: dict[str, Variant] = {}
    for key, raw in (data.get("variants") or {}).items():
        if not isinstance(raw, dict):
            raise CatalogError(f"{source}: variants.{key}: expected a mapping of fields, got {raw!r}")
        family_key = raw.get("family")
        if family_key not in families:
            raise CatalogError(
                f"{source}: variants.{key}.family: {family_key!r} is not defined under 'families' "
                f"(known: {', '.join(sorted(families))}); add it there or fix the name"
            )
        merged = {**families[family_key].defaults, **raw, "id": key}
        variants[key] = validate(merged, Variant, path=source, loc=("variants", key), error=CatalogError)
    return Catalog(families=families, variants=variants)


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate the catalog (default: ``<config_dir>/catalog.yaml``). Raises CatalogError."""
    from slmops.configfile import config_path, read_yaml

    path = Path(path or config_path("catalog.yaml"))
    try:
        data = read_yaml(path)
    except CatalogError:
        raise
    except ConfigError as exc:
        raise CatalogError(str(exc)) from None
    return parse_catalog(data, source=path)
