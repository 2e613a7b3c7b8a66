"""What `slmops stack` is asked for (ports, folder, time limits) and where it keeps each thing under its folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

HOST = "127.0.0.1"  # every service binds loopback only: the stack is for this machine and its tunnels


class StackConfig(BaseModel):
    """One stack: its state folder and the ports of its services (0: a free port, kept across restarts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: Path = Field(description="State folder: state.json, logs/, PostgreSQL data, MLflow artifacts, Prefect home.")
    postgres_port: int = Field(default=0, ge=0, le=65535)
    mlflow_port: int = Field(default=0, ge=0, le=65535)
    prefect_port: int = Field(default=0, ge=0, le=65535)
    build_workers: int = Field(default=1, ge=0, le=64, description="Workers of the build pool on this machine.")
    startup_timeout_s: float = Field(default=180.0, gt=0, description="Per service, until its health check answers.")
    stop_timeout_s: float = Field(default=30.0, gt=0, description="Per service, after SIGTERM before SIGKILL.")

    @field_validator("dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.absolute()  # services run in other working directories (PostgreSQL in its cluster's folder)

    def port(self, service: str) -> int:
        """The configured port of a server (0: any free one); workers always take a free one."""
        return int(getattr(self, f"{service}_port", 0))

    # ------------------------------------------------------------------ layout of the state folder
    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def env_file(self) -> Path:
        return self.dir / "env.sh"

    @property
    def password_file(self) -> Path:
        return self.dir / "postgres.password"

    @property
    def postgres_root(self) -> Path:
        """The cluster's folder (its ``data/`` inside); when it is run as another user, see services.Postgres."""
        return self.dir / "postgres"

    @property
    def artifacts_dir(self) -> Path:
        return self.dir / "mlflow-artifacts"

    @property
    def prefect_home(self) -> Path:
        return self.dir / "prefect"

    def log(self, service: str) -> Path:
        return self.dir / "logs" / f"{service}.log"
