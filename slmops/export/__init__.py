"""Stage 2, export: ONNX graphs from fetched HF folders (registered exporters)."""

from slmops.export.stage import export

__all__ = ["export"]
