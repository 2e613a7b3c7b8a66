"""`slmops stack`: a local PostgreSQL, MLflow tracking server and Prefect server, started and stopped as one.

The embedded default (a SQLite MLflow store, an in-process flow) needs none of this; the stack is what
several workers or machines share. Clients need only the two URLs it prints (``MLFLOW_TRACKING_URI``,
``PREFECT_API_URL``). Nothing here starts at import: call :func:`up`, :func:`down` or :func:`status`.
"""

from slmops.stack.config import StackConfig
from slmops.stack.stack import ServiceStatus, StackStatus, down, status, up

__all__ = ["ServiceStatus", "StackConfig", "StackStatus", "down", "status", "up"]
