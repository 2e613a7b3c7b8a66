"""Every error slmops raises. Each says what was wrong, the offending value, and what to do.

Library code raises these; the CLI and the HTTP server turn them into one line
or a JSON body. Classes mix in the closest built-in so callers can also catch
``ValueError`` / ``LookupError`` / ``FileNotFoundError`` as usual.
"""

from __future__ import annotations


class SlmopsError(Exception):
    """Base class of every slmops error."""


class ConfigError(SlmopsError, ValueError):
    """A config file or option is invalid. Raised when configs are parsed."""


class CatalogError(ConfigError):
    """catalog.yaml is invalid; the message names the file, variant and field."""


class UnknownVariantError(SlmopsError, LookupError):
    """A variant id is not in the catalog; the message suggests close ids."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


class FetchError(SlmopsError, RuntimeError):
    """A model could not be fetched (network, missing repo, gated repo, offline cache miss)."""


class IntegrityError(SlmopsError, ValueError):
    """A file's content does not match its recorded sha256, or a manifest is missing/invalid."""


class ExportError(SlmopsError, RuntimeError):
    """ONNX export failed or produced a graph that does not match PyTorch."""


class QuantizeError(SlmopsError, RuntimeError):
    """A quantization recipe cannot be applied to this model."""


class GateError(SlmopsError, RuntimeError):
    """A quality gate could not be evaluated (not: a candidate failing its gate, which is a result)."""


class BenchmarkError(SlmopsError, RuntimeError):
    """A benchmark subprocess failed or returned no result."""


class RegistryError(SlmopsError, RuntimeError):
    """The MLflow registry has no such model/alias/version, or could not be written."""


class NoEligibleModelError(RegistryError, LookupError):
    """No registered model passes its gate and fits the use case's constraints."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GenerationParamsError(SlmopsError, ValueError):
    """A generation/embedding parameter is out of range; the message names it."""


class ContextLengthError(GenerationParamsError):
    """The prompt plus max_tokens does not fit the model's context length."""


class MemoryBudgetError(SlmopsError, MemoryError):
    """Loading the model would exceed the memory budget."""


class ModelLoadError(SlmopsError, RuntimeError):
    """An artifact folder cannot be opened by the runtime."""
