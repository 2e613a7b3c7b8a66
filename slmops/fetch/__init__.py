"""Stage 1, fetch: put a variant's HF folder, with a manifest, under artifacts/fetch/<variant>."""

from slmops.fetch.config import FetchConfig
from slmops.fetch.stage import fetch

__all__ = ["FetchConfig", "fetch"]
