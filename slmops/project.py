"""The pipeline's configuration (configs/pipeline.yaml) and its artifact layout.

A :class:`Project` bundles the settings and every parsed config file; the stage
functions in :mod:`slmops.pipeline` take one. Parsing happens when a Project is
built, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmops.benchmark.config import BenchmarkConfig, DeviceProfile, load_device_profiles
from slmops.catalog.schema import Catalog, Variant, load_catalog
from slmops.configfile import load_config
from slmops.errors import ConfigError
from slmops.evaluate.gates import Gates, load_gates
from slmops.export.config import ValidationConfig
from slmops.quantize.recipes import Recipe, load_recipes
from slmops.recommend.usecases import UseCase, load_usecases
from slmops.settings import Settings, get_settings


class Selection(BaseModel):
    """One variant the pipeline builds: where its weights come from and which recipes to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = "hub"
    revision: str | None = None
    recipes: list[str] = Field(min_length=1)
    exporter: str | None = None  # None: the catalog's exporter for the variant, else optimum


class DeployConfig(BaseModel):
    """``deploy:`` in configs/pipeline.yaml: when the build deployment runs and what an overlapping run does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = Field(
        default="0 3 * * *", description="Schedule of the build deployment (cron, UTC); null: none."
    )
    on_overlap: Literal["enqueue", "cancel"] = Field(
        default="enqueue", description="A run that overlaps another waits for it (enqueue) or is cancelled."
    )
    heartbeat_s: int = Field(
        default=30,
        ge=30,
        le=3600,
        description="Distributed builds: seconds between the heartbeats of each flow run on a worker (Prefect's "
        "minimum is 30).",
    )
    crashed_after_s: int = Field(
        default=90,
        ge=45,
        le=86400,
        description="Distributed builds: a running flow run without a heartbeat for this long is marked Crashed "
        "(its worker died); more than one heartbeat interval.",
    )
    bench_attempts: int = Field(
        default=2,
        ge=1,
        le=10,
        description="Distributed builds: runs of a device benchmark before its device is reported not measured "
        "(a crashed or failed run is started again).",
    )
    bench_wait_s: float = Field(
        default=3600,
        gt=0,
        description="Distributed builds: how long a variant run waits for one device benchmark run to end, its "
        "time in the queue included, before it reports the device as not measured.",
    )

    @model_validator(mode="after")
    def _heartbeats_fit(self) -> DeployConfig:
        if self.crashed_after_s <= self.heartbeat_s:
            raise ValueError(
                f"crashed_after_s ({self.crashed_after_s}) must exceed heartbeat_s ({self.heartbeat_s}): "
                "a live run would be marked Crashed between two heartbeats"
            )
        return self


class PipelineConfig(BaseModel):
    """configs/pipeline.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = "cpu"
    reference_recipe: str = "fp32"
    selection: dict[str, Selection] = Field(min_length=1)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    export_validation: ValidationConfig = Field(default_factory=ValidationConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)


class RemoteCode(BaseModel):
    """configs/remote_code.yaml: repos whose remote code may run, each pinned to the commit that was reviewed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]] = Field(
        default_factory=dict, description="repo_id -> the 40-hex commit sha whose remote code was reviewed."
    )


def load_pipeline_config(path: Path | None = None) -> PipelineConfig:
    return load_config("pipeline.yaml", PipelineConfig, path=path)


@dataclass
class Project:
    """Settings + configs + artifact layout for one pipeline run."""

    settings: Settings

    @classmethod
    def load(cls, settings: Settings | None = None) -> Project:
        """Parse and cross-check every config file; raises ConfigError naming the offending entry."""
        project = cls(settings or get_settings())
        project.validate()
        return project

    # -- configs -------------------------------------------------------------------------------
    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.config_dir / "catalog.yaml")

    @cached_property
    def recipes(self) -> dict[str, Recipe]:
        return load_recipes(self.settings.config_dir / "recipes.yaml")

    @cached_property
    def gates(self) -> Gates:
        return load_gates(self.settings.config_dir / "gates.yaml")

    @cached_property
    def usecases(self) -> dict[str, UseCase]:
        return load_usecases(self.settings.config_dir / "usecases.yaml")

    @cached_property
    def device_profiles(self) -> dict[str, DeviceProfile]:
        return load_device_profiles(self.settings.config_dir / "devices.yaml")

    @cached_property
    def remote_code(self) -> dict[str, str]:
        """repo_id -> the commit sha whose remote code was reviewed (configs/remote_code.yaml)."""
        path = self.settings.config_dir / "remote_code.yaml"
        if not path.is_file():
            return {}
        return dict(load_config("remote_code.yaml", RemoteCode, path=path).allow)

    @cached_property
    def config(self) -> PipelineConfig:
        return load_pipeline_config(self.settings.config_dir / "pipeline.yaml")

    def validate(self) -> None:
        from slmops.catalog.schema import CAPABILITIES
        from slmops.export.exporters import EXPORTERS
        from slmops.export.stage import resolve_exporter
        from slmops.fetch.sources import SOURCES

        _ = self.gates, self.remote_code  # parsed (and so validated) now, not at first use
        for name, uc in self.usecases.items():
            bad = [c for c in uc.capabilities if c not in CAPABILITIES]
            if bad:
                raise ConfigError(
                    f"{self.settings.config_dir / 'usecases.yaml'}: use case {name!r}: unknown capabilities {bad}; "
                    f"use {', '.join(CAPABILITIES)}"
                )
            if uc.profile is not None:
                where = f"{self.settings.config_dir / 'usecases.yaml'}: use case {name!r}: profile {uc.profile!r}"
                known = self.device_profiles
                if uc.profile not in known:
                    raise ConfigError(f"{where} is not in devices.yaml; known: {', '.join(known)}")
                if known[uc.profile].device != uc.device:
                    raise ConfigError(
                        f"{where} runs on {known[uc.profile].device}, but the use case asks for device {uc.device!r}; "
                        "pick a profile of that device"
                    )
        path = self.settings.config_dir / "pipeline.yaml"
        cfg = self.config
        unknown = [p for p in cfg.benchmark.profiles if p not in self.device_profiles]
        if unknown:
            raise ConfigError(
                f"{path}: benchmark.profiles: unknown {unknown}; defined in devices.yaml: "
                f"{', '.join(self.device_profiles)}"
            )
        for variant_id, sel in cfg.selection.items():
            variant = self.catalog.get(variant_id)
            where = f"{path}: selection.{variant_id}"
            if sel.source not in SOURCES:
                raise ConfigError(f"{where}.source={sel.source!r}; use one of {', '.join(SOURCES)}")
            try:
                exporter = resolve_exporter(variant, sel.exporter)
            except ConfigError as exc:
                raise ConfigError(f"{where}.exporter: {exc}") from None
            if exporter not in EXPORTERS:
                raise ConfigError(f"{where}.exporter={exporter!r}; use one of {', '.join(EXPORTERS)}")
            if cfg.reference_recipe not in sel.recipes:
                raise ConfigError(f"{where}.recipes must include the reference recipe {cfg.reference_recipe!r}")
            for name in sel.recipes:
                recipe = self.recipes.get(name)
                if recipe is None:
                    raise ConfigError(f"{where}.recipes: unknown recipe {name!r}; defined: {', '.join(self.recipes)}")
                if not recipe.supports(variant.task, cfg.device):
                    raise ConfigError(
                        f"{where}.recipes: {name!r} does not support {variant.task} on {cfg.device} "
                        f"(it supports {recipe.tasks} on {recipe.devices})"
                    )

    def selected(self, variant_id: str) -> tuple[Variant, Selection]:
        """The catalog variant and its selection entry; raises ConfigError if it is not selected."""
        variant = self.catalog.get(variant_id)
        try:
            return variant, self.config.selection[variant_id]
        except KeyError:
            raise ConfigError(
                f"variant {variant_id!r} is not in the pipeline selection ({', '.join(self.config.selection)}); "
                f"add it to {self.settings.config_dir / 'pipeline.yaml'}"
            ) from None

    def narrowed(self, *, variants: Sequence[str] | None = None, recipes: Sequence[str] | None = None) -> Project:
        """This project building only ``variants`` with only ``recipes`` (a one-off build: pipeline.yaml unchanged).

        A variant outside the selection is fetched from the Hub. ``recipes`` replaces each variant's recipes
        (the reference recipe is always kept; a recipe is used for the variants whose task it supports).
        Raises ConfigError naming an unknown variant or recipe and the known ones.
        """
        cfg = self.config
        selection = dict(cfg.selection)
        chosen = list(dict.fromkeys(variants or selection))
        for vid in chosen:
            if vid not in selection and vid not in self.catalog.variants:
                raise ConfigError(
                    f"unknown variant {vid!r}: it is neither selected in {self.settings.config_dir / 'pipeline.yaml'} "
                    f"({', '.join(selection)}) nor in the catalog; run `slmops catalog list` for the ids"
                )
        unknown = [r for r in recipes or () if r not in self.recipes]
        if unknown:
            raise ConfigError(
                f"unknown recipe {unknown[0]!r}; defined in {self.settings.config_dir / 'recipes.yaml'}: "
                f"{', '.join(self.recipes)}"
            )
        narrowed: dict[str, Selection] = {}
        for vid in chosen:
            sel = selection.get(vid) or Selection(recipes=[cfg.reference_recipe])
            if recipes:
                task = self.catalog.get(vid).task
                fits = [r for r in recipes if self.recipes[r].supports(task, cfg.device)]
                sel = sel.model_copy(update={"recipes": list(dict.fromkeys([cfg.reference_recipe, *fits]))})
            narrowed[vid] = sel
        if recipes:
            used = {r for sel in narrowed.values() for r in sel.recipes}
            unused = [r for r in recipes if r not in used]
            if unused:
                recipe = self.recipes[unused[0]]
                raise ConfigError(
                    f"recipe {recipe.name!r} supports {recipe.tasks} on {recipe.devices}, which none of the variants "
                    f"{', '.join(chosen)} is; pick other recipes or variants"
                )
        project = Project(self.settings)
        project.__dict__.update({k: v for k, v in self.__dict__.items() if k != "config"})  # the parsed configs
        project.__dict__["config"] = cfg.model_copy(update={"selection": narrowed})
        project.validate()
        return project

    # -- artifact layout -----------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.settings.artifacts_dir

    def fetch_dir(self, variant_id: str) -> Path:
        return self.root / "fetch" / variant_id

    def export_dir(self, variant_id: str) -> Path:
        return self.root / "export" / variant_id

    def candidate_dir(self, variant_id: str, recipe: str) -> Path:
        return self.root / "candidates" / variant_id / recipe

    def gate_file(self, variant_id: str) -> Path:
        return self.root / "gates" / f"{variant_id}.json"

    def bench_file(self, variant_id: str, recipe: str) -> Path:
        return self.root / "bench" / variant_id / f"{recipe}.json"

    def registry_file(self, variant_id: str) -> Path:
        return self.root / "registry" / f"{variant_id}.json"

    def recommendations_file(self) -> Path:
        return self.root / "recommendations.json"

    def plots_dir(self) -> Path:
        return self.root / "plots"
