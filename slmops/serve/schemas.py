"""Request bodies in OpenAI's shapes (and Cohere/Jina's for rerank), validated before any model is touched.

Fields OpenAI defines that do not change the answer when left at their neutral value (``user``, ``n=1``,
``frequency_penalty=0``, an empty ``logit_bias``...) are accepted; set to anything else they are refused by
name (:meth:`OpenAIRequest.refuse_unsupported`). Any other unknown field is refused: a typo such as
``temprature`` would otherwise be ignored silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from slmops.errors import UnsupportedParameterError
from slmops.runtime.tokenizer import unpaired_surrogate


def _valid_unicode(text: str) -> str:
    at = unpaired_surrogate(text)
    if at is not None:
        raise ValueError(f"has an unpaired surrogate at character {at}; send valid Unicode text")
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
ModelName = Annotated[
    str,
    # the length first: after Text's validator pydantic checks it as a sequence ("at least 1 item")
    StringConstraints(min_length=1, max_length=512),
    AfterValidator(_valid_unicode),
    Field(
        description="A use case (alias), a models:/ URI of a version that passed its gate, or a name the operator "
        "gave a folder at start-up. GET /v1/models lists them.",
    ),
]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class OpenAIRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName
    max_tokens: int | None = Field(default=None, ge=0, description="Tokens to generate at most.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0: greedy. Default 0.7.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: Text | Annotated[list[Annotated[Text, Field(min_length=1)]], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(default=None, ge=0, description="Extra field: sample among the k likeliest tokens.")
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0, description="Extra field.")
    # OpenAI fields accepted at their neutral value only
    n: int | None = Field(default=None, description="1 only.")
    frequency_penalty: float | None = Field(default=None, description="0 only.")
    presence_penalty: float | None = Field(default=None, description="0 only.")
    logit_bias: dict[str, float] | None = Field(default=None, description="Empty only.")
    # OpenAI fields with no effect on the answer: accepted, ignored
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    def refuse_unsupported(self) -> None:
        """Raise UnsupportedParameterError naming the first field set to something this server does not honour."""
        checks: list[tuple[str, bool, str]] = [
            ("n", self.n not in (None, 1), "n={} is not supported; this server returns one choice (n=1)"),
            ("frequency_penalty", bool(self.frequency_penalty), "frequency_penalty={} is not supported; use 0"),
            ("presence_penalty", bool(self.presence_penalty), "presence_penalty={} is not supported; use 0"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported; send it empty"),
            *self._unsupported(),
        ]
        for name, refused, message in checks:
            if refused:
                raise UnsupportedParameterError(message.format(getattr(self, name, None)), param=name)

    def _unsupported(self) -> list[tuple[str, bool, str]]:
        return []

    def generation_options(self) -> dict[str, Any]:
        """The runtime's GenerationParams options this request sets (max_tokens is the caller's to decide)."""
        options = self.model_dump(include={"temperature", "top_p", "seed", "top_k", "repetition_penalty"})
        options = {k: v for k, v in options.items() if v is not None}
        if self.stop:
            options["stop"] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return options

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: str | None = Field(default=None, description="Accepted, not passed to the template.")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(OpenAIRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, description="Tokens to generate at most; default: the context.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Same as max_tokens; wins over it.")
    tools: list[Any] | None = Field(default=None, description="Empty only: no tool calling.")
    tool_choice: Any = Field(default=None, description="'none' or 'auto' only.")
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = Field(default=None, description="Empty only.")
    function_call: Any = Field(default=None, description="'none' only.")
    response_format: dict[str, Any] | None = Field(default=None, description='{"type": "text"} only.')
    logprobs: bool | None = Field(default=None, description="false only.")
    top_logprobs: int | None = Field(default=None, description="0 only.")
    modalities: list[str] | None = Field(default=None, description='["text"] only.')
    reasoning_effort: str | None = None

    def _unsupported(self) -> list[tuple[str, bool, str]]:
        fmt = (self.response_format or {}).get("type", "text")
        return [
            ("tools", bool(self.tools), "tools are not supported: this server does no tool calling"),
            ("tool_choice", self.tool_choice not in (None, "none", "auto"), "tool_choice is not supported"),
            ("functions", bool(self.functions), "functions are not supported: this server does no function calling"),
            ("function_call", self.function_call not in (None, "none"), "function_call is not supported"),
            ("response_format", fmt != "text", f"response_format type {fmt!r} is not supported; only 'text'"),
            ("logprobs", bool(self.logprobs), "logprobs are not supported by chat completions; use /v1/completions"),
            ("top_logprobs", bool(self.top_logprobs), "top_logprobs is not supported by chat completions"),
            ("modalities", self.modalities not in (None, ["text"]), "modalities other than ['text'] are not supported"),
        ]

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the chat template takes them (``developer`` is OpenAI's newer name for ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(OpenAIRequest):
    """``POST /v1/completions``: a prompt (text or token ids) or a list of them, one choice per prompt."""

    prompt: (
        Annotated[Text, Field(min_length=1)]
        | Annotated[list[Annotated[Text, Field(min_length=1)]], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    logprobs: int | None = Field(default=None, ge=0, le=20, description="Log-probabilities of this many top tokens.")
    echo: bool = Field(default=False, description="Return the prompt before the completion (and its logprobs).")
    best_of: int | None = Field(default=None, description="1 only.")
    suffix: str | None = Field(default=None, description="Empty only.")

    def _unsupported(self) -> list[tuple[str, bool, str]]:
        return [
            ("best_of", self.best_of not in (None, 1), "best_of={} is not supported; use 1"),
            ("suffix", bool(self.suffix), "suffix (insertion) is not supported"),
            ("logprobs", self.stream and self.logprobs is not None, "logprobs are not supported with stream=true"),
        ]

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts, one per choice: texts or token id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]  # one list of token ids
        return p  # type: ignore[return-value]  # a list of texts or of token id lists


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName
    input: (
        Annotated[Text, Field(min_length=1)]
        | Annotated[list[Annotated[Text, Field(min_length=1)]], Field(min_length=1)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, description="The model's own dimension only.")
    user: str | None = None

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class RerankRequest(BaseModel):
    """``POST /v1/rerank`` in the Cohere/Jina shape that vLLM and TEI serve."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName
    query: Annotated[Text, Field(min_length=1)]
    documents: list[Annotated[Text, Field(min_length=1)]] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1, description="Return the best n documents; default all.")
    return_documents: bool = Field(default=True, description="Include each document's text in the results.")
