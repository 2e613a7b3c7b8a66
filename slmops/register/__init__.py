"""Stage 6, register: MLflow runs and model versions (a pyfunc flavour) for the candidates.

The stage (and with it mlflow, the catalog and the recipes) is imported on first use, so the
runtime can read the registry through :mod:`slmops.runtime.registry` without paying for it
(importing the stage eagerly cost about 0.19 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Registered", "register"]

if TYPE_CHECKING:
    from slmops.register.stage import Registered, register


def __getattr__(name: str) -> Any:
    if name in __all__:
        from slmops.register import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'slmops.register' has no attribute {name!r}")
