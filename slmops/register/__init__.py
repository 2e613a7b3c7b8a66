"""Stage 6, register: MLflow runs and model versions (a pyfunc flavour) for the candidates."""

from slmops.register.stage import Registered, register

__all__ = ["Registered", "register"]
