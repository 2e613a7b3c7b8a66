"""The HTTP server: generation (JSON or server-sent events), chat, embeddings and reranking over a ModelPool."""

from slmops.serve.app import create_app

__all__ = ["create_app"]
