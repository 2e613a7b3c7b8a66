"""Generation parameters, validated with messages that name the bad value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slmops.errors import GenerationParamsError, RecordError, describe_validation
from slmops.records import Record, invalid, spec


@dataclass(frozen=True, kw_only=True)
class GenerationParams(Record):
    """Sampling and stopping options for :meth:`slmops.runtime.TextModel.generate`.

    ``temperature=0`` is greedy decoding. ``top_k=0`` and ``top_p=1`` disable those filters. Building one with
    a bad value raises :class:`~slmops.errors.RecordError`; :meth:`build` raises GenerationParamsError instead.
    """

    max_tokens: int = spec(256, ge=1, le=1_000_000)
    temperature: float = spec(0.7, ge=0.0, le=100.0)
    top_k: int = spec(0, ge=0)
    top_p: float = spec(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = spec(1.0, gt=0.0, le=10.0)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = spec(None, ge=0, lt=2**64)  # numpy's generators take no negative seed
    truncate: bool = spec(False, description="Drop the start of a too-long prompt instead of raising.")
    ignore_eos: bool = spec(False, description="Keep generating past end tokens (benchmarks).")
    prompt_lookup_tokens: int = spec(
        0,
        ge=0,
        le=16,
        description="Greedy only: draft up to this many tokens per step by finding the last few tokens earlier in the "
        "prompt or output, and check the drafts in one graph call (prompt-lookup decoding). The output is the greedy "
        "one; it is faster when the output copies from the prompt. One prompt at a time: generate_batch and "
        "`slmops serve` decode plainly. 0: off.",
    )

    @classmethod
    def _before(cls, values: dict[str, Any]) -> dict[str, Any]:
        stop = values["stop"]
        if isinstance(stop, str):
            values["stop"] = stop = (stop,)
        if isinstance(stop, list | tuple) and any((not isinstance(s, str)) or s == "" for s in stop):
            raise invalid(cls, ("stop",), stop, "stop strings must be non-empty strings")
        return values

    def _after(self) -> list[tuple[str, str]]:
        if self.prompt_lookup_tokens and self.temperature != 0.0:
            return [
                (
                    "prompt_lookup_tokens",
                    "drafts are checked against greedy decoding only: pass temperature=0, or leave this at 0",
                )
            ]
        return []

    @classmethod
    def build(cls, **kwargs: Any) -> GenerationParams:
        """Validate keyword options; raises GenerationParamsError naming each bad option and its value."""
        try:
            return cls.from_dict({k: v for k, v in kwargs.items() if v is not None})
        except RecordError as exc:
            detail = describe_validation(exc, known=cls.field_names(), root="params")
            raise GenerationParamsError(f"invalid generation parameters: {detail}") from None
