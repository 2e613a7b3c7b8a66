"""Stage 4, evaluate: quality gates of each candidate against the unquantized export."""

from slmops.evaluate.gates import Gates, load_gates
from slmops.evaluate.stage import evaluate

__all__ = ["Gates", "evaluate", "load_gates"]
