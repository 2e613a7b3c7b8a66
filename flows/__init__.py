"""Prefect flows: orchestration only; every step is an slmops.pipeline function."""
