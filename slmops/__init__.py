"""slmops: small language models from the Hub to production (fetch, export, quantize, gate, benchmark, register, serve).

``from slmops import load`` is the entry point for apps. Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from slmops.runtime.loader import load


def __getattr__(name: str) -> Any:
    if name == "load":
        from slmops.runtime.loader import load

        return load
    raise AttributeError(f"module 'slmops' has no attribute {name!r}")
