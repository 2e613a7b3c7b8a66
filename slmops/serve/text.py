"""``/v1/chat/completions`` and ``/v1/completions``: requests checked in full (limits, options, context) before
any token is generated, then answered as JSON or as server-sent events in OpenAI's chunk format."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from slmops.errors import ContextLengthError, GenerationParamsError, RequestLimitError
from slmops.runtime.decoder import Completion, TextModel
from slmops.runtime.open import expect
from slmops.runtime.params import GenerationParams
from slmops.serve.config import ServeConfig
from slmops.serve.models import Served, ServedModels
from slmops.serve.problems import exception_body
from slmops.serve.schemas import ChatCompletionRequest, CompletionRequest
from slmops.serve.scoring import logprobs

VERSION_HEADER = "x-slmops-model-version"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def open_text_model(models: ServedModels, name: str) -> tuple[Served, TextModel]:
    served = models.resolve(name)
    return served, expect(models.open(served), TextModel, target=name, doing="generate text")


def fit_max_tokens(requested: int | None, prompt_tokens: int, context: int, *, param: str) -> int:
    """``requested`` (default: the rest of the context) once checked against the model's context length."""
    max_tokens = context - prompt_tokens if requested is None else requested
    if prompt_tokens + max_tokens > context or max_tokens >= context or (requested is None and max_tokens < 1):
        exc = ContextLengthError(
            f"this model's context length is {context} tokens, and the request needs "
            f"{prompt_tokens + max(max_tokens, 1)} ({prompt_tokens} in the {param}, "
            f"{max(max_tokens, 1)} for the completion); shorten the {param} or lower max_tokens"
        )
        exc.param = param if requested is None or prompt_tokens >= context else "max_tokens"
        raise exc
    return max_tokens


def _check_chars(chars: int, limit: int, *, param: str) -> None:
    if chars > limit:
        raise RequestLimitError(
            f"the {param} has {chars} characters, more than this server's limit of {limit}", param=param
        )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _events(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Server-sent events of ``chunks``, then ``[DONE]``; a failure mid-stream becomes one error event."""
    try:
        for chunk in chunks:
            yield _sse(chunk)
    except Exception as exc:  # the status line is sent already: the error goes in the stream
        yield _sse(exception_body(exc)[1])
        return
    yield "data: [DONE]\n\n"


def _stream(chunks: Iterator[dict[str, Any]], served: Served) -> StreamingResponse:
    headers = {VERSION_HEADER: served.fingerprint, "cache-control": "no-cache"}
    return StreamingResponse(_events(chunks), media_type="text/event-stream", headers=headers)


def chat_completion(req: ChatCompletionRequest, models: ServedModels, config: ServeConfig) -> Any:
    req.refuse_unsupported()
    messages = req.conversation()
    _check_chars(sum(len(m["content"]) for m in messages), config.max_prompt_chars, param="messages")
    served, model = open_text_model(models, req.model)
    ids = model.prompt_ids(messages=messages)
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = fit_max_tokens(requested, len(ids), model.card.context_length, param="messages")
    completion = model.completion(ids, max_tokens=max_tokens, **req.generation_options())
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": served.fingerprint,
    }
    if not req.stream:
        text = "".join(completion)
        body = {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": _usage(completion.prompt_tokens, completion.completion_tokens),
        }
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    usage: dict[str, Any] = {"usage": None} if req.include_usage else {}

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice], **usage}

    def chunks() -> Iterator[dict[str, Any]]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            for delta in completion:
                yield chunk({"content": delta})
            yield chunk({}, completion.finish_reason)
            if req.include_usage:
                total = _usage(completion.prompt_tokens, completion.completion_tokens)
                yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": total}
        finally:
            completion.close()

    return _stream(chunks(), served)


def text_completion(req: CompletionRequest, models: ServedModels, config: ServeConfig) -> Any:
    req.refuse_unsupported()
    prompts = req.prompts()
    if len(prompts) > config.max_items:
        raise RequestLimitError(
            f"prompt has {len(prompts)} prompts, more than this server's limit of {config.max_items}", param="prompt"
        )
    for p in prompts:
        _check_chars(len(p), config.max_prompt_chars, param="prompt")  # a token list: its length in tokens
    served, model = open_text_model(models, req.model)
    max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    options = req.generation_options()
    GenerationParams.build(max_tokens=max(max_tokens, 1), **options)  # every option checked before any work
    vocab = model.tokenizer.vocab_size
    rows: list[tuple[str, list[int]]] = []
    for p in prompts:
        if isinstance(p, str):
            ids = model.prompt_ids(p)
            text = p
        else:
            if max(p) >= vocab:
                exc = GenerationParamsError(f"prompt holds token id {max(p)}, beyond the vocabulary of {vocab}")
                exc.param = "prompt"
                raise exc
            ids, text = list(p), model.tokenizer.decode(list(p))
        fit_max_tokens(max_tokens, len(ids), model.card.context_length, param="prompt")
        rows.append((text, ids))
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": served.fingerprint,
    }

    def run(ids: list[int]) -> Completion | None:
        return model.completion(ids, max_tokens=max_tokens, **options) if max_tokens else None

    if not req.stream:
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, (text, ids) in enumerate(rows):
            completion = run(ids)
            generated = "".join(completion) if completion is not None else ""
            gen_ids = completion.token_ids if completion is not None else []
            scored = None
            if req.logprobs is not None:
                scored = logprobs(model, ids, gen_ids, generated, top=req.logprobs, echo=req.echo)
            choices.append(
                {
                    "index": index,
                    "text": (text if req.echo else "") + generated,
                    "logprobs": scored,
                    "finish_reason": completion.finish_reason if completion is not None else "length",
                }
            )
            prompt_tokens += len(ids)
            completion_tokens += len(gen_ids)
        body = {**head, "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    usage: dict[str, Any] = {"usage": None} if req.include_usage else {}

    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}], **usage}

    def chunks() -> Iterator[dict[str, Any]]:
        prompt_tokens = completion_tokens = 0
        for index, (text, ids) in enumerate(rows):
            if req.echo:
                yield chunk(index, text)
            completion = run(ids)
            if completion is not None:
                try:
                    for delta in completion:
                        yield chunk(index, delta)
                finally:
                    completion.close()
            yield chunk(index, "", completion.finish_reason if completion is not None else "length")
            prompt_tokens += len(ids)
            completion_tokens += completion.completion_tokens if completion is not None else 0
        if req.include_usage:
            yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}

    return _stream(chunks(), served)
