"""What the stages hand each other: typed, schema-versioned results, each written and read by one function.

The evaluate stage writes a :class:`GateReport`, the benchmark stage a :class:`BenchReport` per
candidate, the register stage a :class:`RegistryRecord`, the recommend stage
:class:`Recommendations`. :func:`read_result` refuses a missing file, one from another schema
version or a malformed one with an error naming the command that makes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.artifacts import write_json_atomic
from slmops.errors import MissingResultError

R = TypeVar("R", bound="StageResult")


class StageResult(BaseModel):
    """Base of every stage result: a schema version and the command that makes it."""

    model_config = ConfigDict(extra="forbid")

    SCHEMA_VERSION: ClassVar[int] = 1
    MADE_BY: ClassVar[str] = ""  # the command that writes it, with {variant} filled in
    schema_version: int = 1


# -- evaluate ------------------------------------------------------------------------------------------------
class CandidateGate(BaseModel):
    """One candidate's quality against the reference and the gate's verdict."""

    model_config = ConfigDict(extra="forbid")

    metrics: dict[str, float]
    passed: bool
    reasons: list[str]
    candidate_digest: str


class GateReport(StageResult):
    MADE_BY: ClassVar[str] = "slmops evaluate {variant}"

    task: str
    reference: str
    gates: dict[str, dict[str, Any]]
    candidates: dict[str, CandidateGate]

    def candidate(self, recipe: str, *, variant: str) -> CandidateGate:
        try:
            return self.candidates[recipe]
        except KeyError:
            raise MissingResultError(
                f"the gate report of {variant} has no candidate {recipe!r} (it has {', '.join(self.candidates)}); "
                f"run `slmops quantize {variant}` and `slmops evaluate {variant}`"
            ) from None


# -- benchmark -----------------------------------------------------------------------------------------------
class Percentiles(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p50: float
    p95: float


class MachineState(BaseModel):
    """How busy the machine was while one benchmark subprocess ran (slmops.benchmark.machine)."""

    model_config = ConfigDict(extra="forbid")

    load_before: float | None = Field(description="1-minute load average just before the worker started.")
    load_after: float | None = Field(description="1-minute load average just after it ended.")
    steal_pct: float | None = Field(description="% of the machine's CPU time stolen by the hypervisor; None: unknown.")
    other_cpu_pct: float | None = Field(description="% of the machine's CPU time used by other processes.")
    worker_cpu_s: float = Field(description="CPU seconds the benchmark worker itself used.")
    cpu_count: int
    threads: int = Field(description="onnxruntime intra-op threads of the profile.")
    process_threads: int | None = Field(default=None, description="OS threads of the worker after loading.")
    busy: bool = False
    busy_reasons: list[str] = Field(default_factory=list)
    attempts: int = Field(default=1, description="Runs made; a busy machine is measured again (busy_retries).")


# what BenchReport.metrics flattens: headline numbers, and the machine's state while it measured
_FLAT_KEYS = (
    "load_s",
    "ttft_ms",
    "decode_tok_s",
    "items_per_s",
    "peak_rss_mb",
    "peak_rss_sampled_mb",
    "rss_after_load_mb",
    "size_mb",
)
_MACHINE_KEYS = ("load_before", "load_after", "steal_pct", "other_cpu_pct", "cpu_count", "threads", "process_threads")


class BenchReport(StageResult):
    """One candidate measured on every configured device profile; the headline numbers are the first profile's."""

    MADE_BY: ClassVar[str] = "slmops bench {variant}"

    headline_profile: str | None
    device: str | None
    candidate_digest: str
    size_mb: float
    config: dict[str, Any]
    context: dict[str, Any] | None = None
    profiles: dict[str, dict[str, Any]] = Field(description="profile -> its full result, or {skipped, reason}.")
    load_s: float | None = None
    ttft_ms: float | None = None
    decode_tok_s: float | None = None
    token_latency_ms: Percentiles | None = None
    items_per_s: float | None = None
    latency_ms_batch1: Percentiles | None = None
    peak_rss_mb: float | None = None
    peak_rss_sampled_mb: float | None = None
    rss_after_load_mb: float | None = None
    providers: list[str] | None = None
    max_prompt_tokens: int | None = None
    max_context: int | None = None
    max_seq_tokens: int | None = None
    batch_size: int | None = None
    machine: MachineState | None = Field(default=None, description="The headline profile's machine state.")
    spread: dict[str, float] = Field(
        default_factory=dict,
        description="headline metric -> (max - min) / median over the timed repeats of the headline profile.",
    )

    HEADLINE: ClassVar[tuple[str, ...]] = (
        "load_s",
        "ttft_ms",
        "decode_tok_s",
        "token_latency_ms",
        "items_per_s",
        "latency_ms_batch1",
        "peak_rss_mb",
        "peak_rss_sampled_mb",
        "rss_after_load_mb",
        "providers",
        "max_prompt_tokens",
        "max_context",
        "max_seq_tokens",
        "batch_size",
    )

    def skipped(self) -> dict[str, str]:
        """profile -> why it was not measured."""
        return {name: r.get("reason", "") for name, r in self.profiles.items() if r.get("skipped")}

    def metrics(self, prefix: str = "bench.", machine_prefix: str = "machine.") -> dict[str, float]:
        """The numbers MLflow gets, flat: headline values, per-prompt-length and per-batch rows of each profile,
        latency percentiles, repeat spreads (``<metric>.spread``) and the machine's state while it measured.

        The build logs them as ``bench.*``/``machine.*``; a device's benchmark worker as ``bench.<profile>.*``
        for both, so ranking reads either through the same names (slmops.names.profile_metrics).
        """
        bench = self.model_dump(exclude_none=True)
        out: dict[str, float] = {}
        for key in _FLAT_KEYS:
            if key in bench:
                out[f"{prefix}{key}"] = float(bench[key])
        for profile, result in bench.get("profiles", {}).items():  # rows always under their own profile's name
            for length, row in result.get("by_prompt_tokens", {}).items():
                out[f"bench.{profile}.ttft_ms.p{length}"] = float(row["ttft_ms"])
                out[f"bench.{profile}.decode_tok_s.p{length}"] = float(row["decode_tok_s"])
            for batch, row in result.get("by_batch_size", {}).items():
                out[f"bench.{profile}.items_per_s.b{batch}"] = float(row["items_per_s"])
        for src, dst in (("token_latency_ms", "token_latency"), ("latency_ms_batch1", "latency")):
            if src in bench:
                out[f"{prefix}{dst}_p50_ms"] = float(bench[src]["p50"])
                out[f"{prefix}{dst}_p95_ms"] = float(bench[src]["p95"])
        for key, value in self.spread.items():
            out[f"{prefix}{key}.spread"] = value
        if self.machine is not None:
            state = self.machine.model_dump()
            for key in _MACHINE_KEYS:
                if state.get(key) is not None:
                    out[f"{machine_prefix}{key}"] = float(state[key])
            out[f"{machine_prefix}busy"] = 1.0 if state.get("busy") else 0.0
            out[f"{machine_prefix}attempts"] = float(state.get("attempts", 1))
        return out


# -- register ------------------------------------------------------------------------------------------------
class RegisteredCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    model: str | None
    version: str | None
    reused: bool
    gate: str


class RegistryRecord(StageResult):
    MADE_BY: ClassVar[str] = "slmops register {variant}"

    variant: str
    candidates: dict[str, RegisteredCandidate]


# -- recommend -----------------------------------------------------------------------------------------------
class RankedRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidate: str
    version: str
    metric: str
    value: float | None
    eligible: bool
    rejected: list[str]
    spread: float | None = Field(default=None, description="Relative spread of the metric over the repeats.")
    busy: bool = Field(default=False, description="Measured on a busy machine: never moves an alias.")


class Decision(BaseModel):
    """One use case's outcome: the version the alias points at now, and whether and why it moved."""

    model_config = ConfigDict(extra="forbid")

    chosen: str | None
    alias_uri: str | None = None
    why: str
    candidates: list[RankedRow]
    previous: str | None = Field(default=None, description="The version the alias pointed at before this pass.")
    moved: bool = Field(default=False, description="True when this pass moved, set or dropped the alias.")
    reason: str = Field(default="", description="Why the alias moved or stayed (margins, spreads, busy runs).")


class Recommendations(StageResult):
    MADE_BY: ClassVar[str] = "slmops recommend"

    usecases: dict[str, Decision]


# -- one way in, one way out -----------------------------------------------------------------------------------
def write_result(path: Path, result: StageResult) -> None:
    """Write ``result`` to ``path`` atomically (temp file, then rename)."""
    write_json_atomic(path, result.model_dump(mode="json"))


def read_result(path: Path, kind: type[R], *, variant: str = "") -> R:
    """The result of type ``kind`` at ``path``; raises MissingResultError naming the command that makes it."""
    made_by = kind.MADE_BY.format(variant=variant or "VARIANT")
    what = kind.__name__
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise MissingResultError(f"no {what} at {path}; run `{made_by}` first") from None
    try:
        result = kind.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise MissingResultError(
            f"{path} is not a valid {what} ({where}: {err['msg']}); it was written by another slmops version "
            f"or edited by hand: run `{made_by}` again"
        ) from None
    if result.schema_version != kind.SCHEMA_VERSION:
        raise MissingResultError(
            f"{path} has schema version {result.schema_version}, this slmops reads {kind.SCHEMA_VERSION}; "
            f"run `{made_by}` again"
        )
    return result
