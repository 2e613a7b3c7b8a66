"""``/v1/chat/completions`` and ``/v1/completions``: requests checked in full (limits, options, context) before
any token is generated (in a worker thread), then decoded by the model's scheduler with the other requests and
answered as JSON or as server-sent events in OpenAI's chunk format. A client that goes away cancels its work."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from slmops.errors import ContextLengthError, GenerationParamsError, RequestLimitError
from slmops.runtime.decoder import TextModel
from slmops.runtime.params import GenerationParams
from slmops.serve.lifecycle import EventStream, ServeContext, on_disconnect
from slmops.serve.models import Served
from slmops.serve.problems import exception_body
from slmops.serve.scheduler import GenerationRequest, Step
from slmops.serve.schemas import ChatCompletionRequest, CompletionRequest
from slmops.serve.scoring import logprobs

VERSION_HEADER = "x-slmops-model-version"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


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


async def _events(chunks: AsyncIterator[dict[str, Any]], record: dict[str, Any]) -> AsyncIterator[str]:
    """Server-sent events of ``chunks``, then ``[DONE]``; a failure mid-stream becomes one error event."""
    try:
        async for chunk in chunks:
            yield _sse(chunk)
    except Exception as exc:  # the status line is sent already: the error goes in the stream
        status, body = exception_body(exc)
        record["finish_reason"] = f"error {status}"
        yield _sse(body)
        return
    yield "data: [DONE]\n\n"


class Generating:
    """The scheduler requests of one HTTP request, cancelled together when it ends early."""

    def __init__(self, ctx: ServeContext, model: TextModel, record: dict[str, Any]) -> None:
        self.scheduler = ctx.schedulers.for_model(model)
        self.timeout_s = ctx.config.request_timeout_s
        self.started = time.monotonic()
        self.record = record
        self.requests: list[GenerationRequest] = []

    def submit(self, ids: list[int], params: GenerationParams) -> GenerationRequest:
        """Queue one prompt (the time limit counts from the HTTP request's start). Raises QueueFullError."""
        left = self.timeout_s - (time.monotonic() - self.started)
        request = self.scheduler.submit(ids, params, timeout_s=left, loop=asyncio.get_running_loop())
        self.requests.append(request)
        return request

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()
        if any(r.finish_reason is None for r in self.requests) and self.record["finish_reason"] is None:
            self.record["finish_reason"] = "cancelled"

    def count(self) -> None:
        self.record["prompt_tokens"] = sum(r.prompt_tokens for r in self.requests)
        self.record["completion_tokens"] = sum(r.completion_tokens for r in self.requests)


async def _steps(request: GenerationRequest) -> AsyncIterator[Step]:
    """The request's token steps; its error (a time limit, a failed graph call) raised."""
    async for step in request.aevents():
        if step.error is not None:
            raise step.error
        yield step


async def _text(request: GenerationRequest) -> str:
    return "".join([step.text async for step in _steps(request)])


def _describe(record: dict[str, Any], served: Served) -> None:
    record["model"] = served.registered_model or served.local_name
    record["version"] = served.fingerprint


async def chat_completion(req: ChatCompletionRequest, http: Request, ctx: ServeContext) -> Any:
    record = http.state.access

    def prepare() -> tuple[Served, TextModel, Callable[[], None], list[int], GenerationParams]:
        req.refuse_unsupported()
        messages = req.conversation()
        _check_chars(sum(len(m["content"]) for m in messages), ctx.config.max_prompt_chars, param="messages")
        served, model, release = ctx.hold(req.model, TextModel, doing="generate text")
        try:
            ids = model.prompt_ids(messages=messages)
            requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            max_tokens = fit_max_tokens(requested, len(ids), model.card.context_length, param="messages")
            return (
                served,
                model,
                release,
                ids,
                GenerationParams.build(max_tokens=max_tokens, **req.generation_options()),
            )
        except BaseException:
            release()
            raise

    served, model, release, ids, params = await run_in_threadpool(prepare)
    _describe(record, served)
    gen = Generating(ctx, model, record)
    try:
        request = gen.submit(ids, params)
    except BaseException:
        release()
        raise
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": served.fingerprint,
    }
    if not req.stream:
        try:
            async with on_disconnect(http, gen.cancel):
                text = await _text(request)
        finally:
            gen.cancel()
            gen.count()
            release()
        record["finish_reason"] = request.finish_reason
        body = {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": request.finish_reason,
                }
            ],
            "usage": _usage(request.prompt_tokens, request.completion_tokens),
        }
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    usage: dict[str, Any] = {"usage": None} if req.include_usage else {}

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice], **usage}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        yield chunk({"role": "assistant", "content": ""})
        async for step in _steps(request):
            if step.text:
                yield chunk({"content": step.text})
        record["finish_reason"] = request.finish_reason
        gen.count()  # before the last event: the access line is written as it leaves
        yield chunk({}, request.finish_reason)
        if req.include_usage:
            total = _usage(request.prompt_tokens, request.completion_tokens)
            yield {**head, "object": "chat.completion.chunk", "choices": [], "usage": total}

    return _stream(chunks(), served, gen, release)


def _stream(
    chunks: AsyncIterator[dict[str, Any]], served: Served, gen: Generating, release: Callable[[], None]
) -> EventStream:
    def close() -> None:
        gen.cancel()
        gen.count()
        release()

    headers = {VERSION_HEADER: served.fingerprint, "cache-control": "no-cache"}
    return EventStream(_events(chunks, gen.record), on_close=close, headers=headers)


async def text_completion(req: CompletionRequest, http: Request, ctx: ServeContext) -> Any:
    record = http.state.access
    max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens

    def prepare() -> tuple[Served, TextModel, Callable[[], None], list[tuple[str, list[int]]], GenerationParams]:
        req.refuse_unsupported()
        prompts = req.prompts()
        if len(prompts) > ctx.config.max_items:
            raise RequestLimitError(
                f"prompt has {len(prompts)} prompts, more than this server's limit of {ctx.config.max_items}",
                param="prompt",
            )
        for p in prompts:
            _check_chars(len(p), ctx.config.max_prompt_chars, param="prompt")  # a token list: its length in tokens
        params = GenerationParams.build(max_tokens=max(max_tokens, 1), **req.generation_options())  # checked first
        served, model, release = ctx.hold(req.model, TextModel, doing="generate text")
        try:
            return served, model, release, _completion_rows(prompts, model, max_tokens), params
        except BaseException:
            release()
            raise

    served, model, release, rows, params = await run_in_threadpool(prepare)
    _describe(record, served)
    gen = Generating(ctx, model, record)
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": served.fingerprint,
    }
    if not req.stream:
        try:
            async with on_disconnect(http, gen.cancel):
                choices = await _complete_all(req, model, rows, params, max_tokens, gen)
        finally:
            gen.cancel()
            gen.count()
            release()
        record["finish_reason"] = ",".join(sorted({c["finish_reason"] for c in choices}))
        prompt_tokens = sum(len(ids) for _, ids in rows)
        completion_tokens = record["completion_tokens"]
        body = {**head, "choices": choices, "usage": _usage(prompt_tokens, completion_tokens)}
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    usage: dict[str, Any] = {"usage": None} if req.include_usage else {}

    def chunk(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}], **usage}

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        prompt_tokens = completion_tokens = 0
        for index, (text, ids) in enumerate(rows):
            if req.echo:
                yield chunk(index, text)
            finish = "length"
            if max_tokens:
                request = gen.submit(ids, params)
                async for step in _steps(request):
                    if step.text:
                        yield chunk(index, step.text)
                finish = request.finish_reason or "length"
                completion_tokens += request.completion_tokens
            record["finish_reason"] = finish
            gen.count()
            yield chunk(index, "", finish)
            prompt_tokens += len(ids)
        if req.include_usage:
            yield {**head, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}

    return _stream(chunks(), served, gen, release)


def _completion_rows(prompts: list[Any], model: TextModel, max_tokens: int) -> list[tuple[str, list[int]]]:
    """(text, token ids) of each prompt, each checked against the vocabulary and the context."""
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
    return rows


async def _complete_all(
    req: CompletionRequest,
    model: TextModel,
    rows: list[tuple[str, list[int]]],
    params: GenerationParams,
    max_tokens: int,
    gen: Generating,
) -> list[dict[str, Any]]:
    """The choices of a JSON completion: the prompts decode together, at most a batch of them at a time."""
    texts: list[tuple[str, list[int], str | None]] = []
    window = gen.scheduler.max_batch
    for start in range(0, len(rows), window):
        part = rows[start : start + window]
        if not max_tokens:
            texts += [("", [], "length") for _ in part]
            continue
        requests = [gen.submit(ids, params) for _, ids in part]
        for request in requests:
            texts.append((await _text(request), request.token_ids, request.finish_reason))
    choices = []
    for index, ((text, ids), (generated, gen_ids, finish)) in enumerate(zip(rows, texts, strict=True)):
        scored = None
        if req.logprobs is not None:
            scored = await run_in_threadpool(logprobs, model, ids, gen_ids, generated, top=req.logprobs, echo=req.echo)
        choices.append(
            {
                "index": index,
                "text": (text if req.echo else "") + generated,
                "logprobs": scored,
                "finish_reason": finish,
            }
        )
    return choices
