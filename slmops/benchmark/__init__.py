"""Stage 5, benchmark: each candidate measured in a fresh subprocess (speed, memory, size)."""

from slmops.benchmark.config import BenchmarkConfig
from slmops.benchmark.harness import run_benchmark

__all__ = ["BenchmarkConfig", "run_benchmark"]
