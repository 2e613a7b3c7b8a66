"""Generation parameters, validated with messages that name the bad value."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from slmops.errors import GenerationParamsError, describe_validation


class GenerationParams(BaseModel):
    """Sampling and stopping options for :meth:`slmops.runtime.TextModel.generate`.

    ``temperature=0`` is greedy decoding. ``top_k=0`` and ``top_p=1`` disable those filters.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    temperature: float = Field(default=0.7, ge=0.0, le=100.0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # numpy's generators take no negative seed
    truncate: bool = Field(default=False, description="Drop the start of a too-long prompt instead of raising.")
    ignore_eos: bool = Field(default=False, description="Keep generating past end tokens (benchmarks).")
    prompt_lookup_tokens: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Greedy only: draft up to this many tokens per step by finding the last few tokens earlier in the "
        "prompt or output, and check the drafts in one graph call (prompt-lookup decoding). The output is the greedy "
        "one; it is faster when the output copies from the prompt. One prompt at a time: generate_batch and "
        "`slmops serve` decode plainly. 0: off.",
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = (value,)
        if value is not None and any((not isinstance(s, str)) or s == "" for s in value):
            raise ValueError("stop strings must be non-empty strings")
        return value

    @field_validator("prompt_lookup_tokens")
    @classmethod
    def _greedy_drafts(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("temperature", 0.0) != 0.0:
            raise ValueError("drafts are checked against greedy decoding only: pass temperature=0, or leave this at 0")
        return value

    @classmethod
    def build(cls, **kwargs: Any) -> GenerationParams:
        """Validate keyword options; raises GenerationParamsError naming each bad option and its value."""
        try:
            return cls(**{k: v for k, v in kwargs.items() if v is not None})
        except ValidationError as exc:
            detail = describe_validation(exc, known=cls.model_fields, root="params")
            raise GenerationParamsError(f"invalid generation parameters: {detail}") from None
