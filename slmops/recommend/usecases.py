"""Use cases (configs/usecases.yaml): what an app needs from a model, and what to optimise among those that fit."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from slmops.configfile import load_named
from slmops.runtime.ranking import Constraints, Objective


class UseCase(Constraints):
    """A named use case: constraints plus what to optimise among the models that meet them."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    description: str = ""
    objective: Objective
    margin: float = Field(
        default=0.1,
        ge=0,
        le=10,
        description="Relative win (0.1: 10%) a challenger needs over the alias's current version to move it; "
        "the spread of either one's benchmark repeats raises it when larger.",
    )


def load_usecases(path: Path | None = None) -> dict[str, UseCase]:
    """Use cases by name from ``<config_dir>/usecases.yaml``; raises ConfigError naming the use case and field."""
    return load_named("usecases.yaml", UseCase, key="usecases", path=path)
