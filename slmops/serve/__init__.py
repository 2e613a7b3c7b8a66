"""The HTTP server: OpenAI-compatible chat, completions, embeddings, rerank and models routes over a ModelPool."""

from slmops.serve.app import create_app
from slmops.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
