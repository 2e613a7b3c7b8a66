"""A real ``slmops serve`` on a free loopback port, in its own process group, stopped (group and all) at exit."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.process import ServerProcess


class SlmopsServer(ServerProcess):
    """``python -m slmops.cli serve --port <free> ARGS`` with ``env``, logging to ``root/serve.log``."""

    name = "slmops serve"
    log_name = "serve.log"

    def __init__(self, root: Path, *, env: dict[str, str], args: list[str], startup_timeout_s: float = 90.0) -> None:
        super().__init__(root, env=env, startup_timeout_s=startup_timeout_s)
        self.args = args

    def command(self) -> list[str]:
        return [sys.executable, "-m", "slmops.cli", "serve", "--port", str(self.port), *self.args]
