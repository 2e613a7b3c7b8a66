"""Stage 7, recommend: use-case aliases in the MLflow registry, chosen under constraints."""

from slmops.recommend.stage import history, recommend
from slmops.recommend.usecases import UseCase, load_usecases

__all__ = ["UseCase", "history", "load_usecases", "recommend"]
