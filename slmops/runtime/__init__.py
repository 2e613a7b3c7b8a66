"""The runtime apps import: registry-driven loading, generation, chat, embeddings and reranking.

Never imports torch, transformers or optimum.
"""

from slmops.runtime.loader import load
from slmops.runtime.params import GenerationParams
from slmops.runtime.pool import ModelPool
from slmops.runtime.states import LoadingEvent, LoadingState
from slmops.runtime.watch import AliasWatcher

__all__ = ["AliasWatcher", "GenerationParams", "LoadingEvent", "LoadingState", "ModelPool", "load"]
