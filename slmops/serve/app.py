"""The FastAPI app: OpenAI-compatible routes over a ModelPool, behind the Host/body guard, CORS and an API key.

Routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/rerank``, ``/v1/models``
(each needing the API key when one is set), ``/health`` (liveness), ``/ready`` and ``/metrics`` (Prometheus).
Every 4xx/5xx answers in OpenAI's error shape (:mod:`slmops.serve.problems`); every request gets one line on
the ``slmops.serve.access`` logger (:mod:`slmops.serve.observe`).
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from slmops.errors import RequestLimitError, RequestTimeoutError, SlmopsError, UnsupportedParameterError
from slmops.runtime.encoder import EmbeddingModel, RerankModel
from slmops.runtime.pool import ModelPool
from slmops.runtime.watch import AliasWatcher
from slmops.serve.config import ServeConfig
from slmops.serve.lifecycle import ServeContext, on_disconnect
from slmops.serve.models import LeaseScope, Served, ServedModels, gate_refusal
from slmops.serve.observe import AccessLog, Gauges, Metrics
from slmops.serve.problems import HTTP_CODES, INVALID, documented, error_response, exception_response
from slmops.serve.scheduler import RequestCancelled, Schedulers
from slmops.serve.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RerankRequest
from slmops.serve.security import ApiKey, RequestGuard
from slmops.serve.text import VERSION_HEADER, chat_completion, text_completion

# every /v1 route may answer these; 404 for an unknown model, 413 for an oversized body
COMMON = documented(400, 401, 404, 413, 500, 503, 507)


def create_app(pool: ModelPool, config: ServeConfig | None = None) -> FastAPI:
    """The app serving ``pool``'s models (loaded on first use) as ``config`` says (default: from the settings)."""
    config = config or ServeConfig.from_settings()
    watcher = AliasWatcher(pool, poll_s=config.alias_poll_s, accept=gate_refusal)
    metrics = Metrics()
    schedulers = Schedulers(max_batch=config.max_batch, max_queue=config.max_queue, observer=metrics)
    ctx = ServeContext(
        ServedModels(pool, local=dict(config.local_models), watcher=watcher), config, schedulers, metrics
    )
    metrics.watch(_gauges(pool, schedulers))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher.start()  # polls every alias_poll_s, and refreshes on watcher.refresh_soon() (SIGHUP)
        try:
            yield
        finally:
            watcher.stop()
            schedulers.stop()

    app = FastAPI(
        title="slmops",
        version=__import__("slmops").__version__,
        description="OpenAI-compatible serving of the registered models that passed their quality gate.",
        lifespan=lifespan,
    )
    app.state.watcher = watcher
    _handle_errors(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(ApiKey(config.api_key))], responses=COMMON)
    busy = documented(429, 504)

    # the routes are async: they prepare in worker threads, wait in the event loop, and never hold a worker
    # while a model decodes, so /health and /ready answer at once however many requests are queued
    @v1.post("/chat/completions", summary="Chat completion (JSON or server-sent events)", responses=busy)
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        return await chat_completion(req, request, ctx)

    @v1.post(
        "/completions", summary="Text completion, with logprobs and echo (JSON or server-sent events)", responses=busy
    )
    async def completions(req: CompletionRequest, request: Request) -> Any:
        return await text_completion(req, request, ctx)

    @v1.post("/embeddings", summary="Embeddings of one text or a list", responses=busy)
    async def embeddings(req: EmbeddingRequest, request: Request) -> Any:
        texts = req.texts()
        _check_items(len(texts), config.max_items, param="input")
        _check_chars(max(len(t) for t in texts), config.max_prompt_chars, param="input")
        served, model, release = await run_in_threadpool(ctx.hold, req.model, EmbeddingModel, doing="embed")
        _describe(request, served)
        try:
            parts = await _in_chunks(request, config, lambda chunk: model.embed(chunk), texts)
            tokens = await run_in_threadpool(lambda: sum(len(model.tokenizer.encode(t)) for t in texts))
        finally:
            release()
        vectors = np.concatenate(parts)
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            raise UnsupportedParameterError(
                f"dimensions={req.dimensions} is not supported; this model's embeddings have {vectors.shape[1]}",
                param="dimensions",
            )
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        request.state.access["prompt_tokens"] = tokens
        body = {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    @v1.post("/rerank", summary="Documents ordered by relevance to a query (Cohere/Jina shape)", responses=busy)
    async def rerank(req: RerankRequest, request: Request) -> Any:
        _check_items(len(req.documents), config.max_items, param="documents")
        _check_chars(len(req.query) + max(len(d) for d in req.documents), config.max_prompt_chars, param="documents")
        served, model, release = await run_in_threadpool(ctx.hold, req.model, RerankModel, doing="rerank")
        _describe(request, served)
        try:
            parts = await _in_chunks(request, config, lambda chunk: model.scores(req.query, chunk), req.documents)
        finally:
            release()
        scores = np.concatenate(parts)
        order = np.argsort(-scores, kind="stable")[: req.top_n]
        results = [
            {
                "index": int(i),
                "relevance_score": float(scores[i]),
                **({"document": {"text": req.documents[i]}} if req.return_documents else {}),
            }
            for i in order
        ]
        body = {"id": f"rerank-{uuid.uuid4().hex}", "model": req.model, "results": results}
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    @v1.get("/models", summary="The served models: registry aliases whose version passed its gate, named folders")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": ctx.models.listing()}

    app.include_router(v1)

    @app.post(
        "/admin/reload",
        summary="Re-resolve the served aliases now and hot-swap the versions that moved",
        dependencies=[Depends(ApiKey(config.api_key))],
        responses=documented(401, 500, 503),
    )
    def reload() -> dict[str, Any]:
        swaps = watcher.refresh()
        return {
            "swapped": [{"alias": s.spec, "from": s.old, "to": s.new} for s in swaps if s.new],
            "failed": [{"alias": s.spec, "serving": s.old, "swap_error": s.error} for s in swaps if s.error],
            "aliases": watcher.status(),
        }

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        summary="Readiness: the loaded models and the memory they use; 503 while a model is being loaded",
        responses={503: {"description": "A model is being loaded; the body lists it under `loading`"}},
    )
    async def ready() -> JSONResponse:
        loading = ctx.models.loading()
        body = {
            "status": "loading" if loading else "ready",
            "loading": loading,
            "loaded": pool.loaded(),
            "used_mb": round(pool.used_bytes / 2**20, 1),
            "max_memory_mb": round(pool.max_bytes / 2**20, 1),
            "active": sum(s.active for s in schedulers.running()),
            "waiting": sum(s.waiting for s in schedulers.running()),
            "aliases": watcher.status(),  # per served alias: version, and swap_error when it could not follow
            "draining": watcher.draining(),
            "time": int(time.time()),
        }
        return JSONResponse(body, status_code=503 if loading else 200)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=[VERSION_HEADER],
        )
    app.add_middleware(LeaseScope)  # inside the guard: holds a request's leases until its response is sent
    # added last = outermost: a foreign Host or an oversized body is refused before CORS, routing or parsing
    app.add_middleware(RequestGuard, trusted_hosts=config.trusted_hosts(), max_body_bytes=config.max_body_bytes)
    # the paths of the schema (read once it is built): included routers do not show theirs in app.routes
    app.add_middleware(AccessLog, metrics=metrics, routes=lambda: set(app.openapi()["paths"]))  # outermost
    app.state.ctx = ctx
    return app


ENCODER_CHUNK = 32  # texts per graph call; the client's connection and the time limit are checked between chunks


async def _in_chunks(
    request: Request, config: ServeConfig, run: Callable[[list[str]], np.ndarray], items: list[str]
) -> list[np.ndarray]:
    """``run`` over ``items`` a chunk at a time in a worker thread; stops when the client goes away or the
    request runs past its time limit (RequestTimeoutError)."""
    gone = threading.Event()
    deadline = time.monotonic() + config.request_timeout_s
    parts: list[np.ndarray] = []
    async with on_disconnect(request, gone.set):
        for start in range(0, len(items), ENCODER_CHUNK):
            if gone.is_set():
                request.state.access["finish_reason"] = "cancelled"
                raise RequestCancelled("the client went away")
            if time.monotonic() > deadline:
                raise RequestTimeoutError("the request ran past the server's time limit")
            parts.append(await run_in_threadpool(run, items[start : start + ENCODER_CHUNK]))
    return parts


def _describe(request: Request, served: Served) -> None:
    request.state.access["model"] = served.registered_model or served.local_name
    request.state.access["version"] = served.fingerprint


def _gauges(pool: ModelPool, schedulers: Schedulers) -> Gauges:
    def loaded() -> list[tuple[list[str], float]]:
        out = []
        for target in pool.loaded():
            name, version = _target_version(target)
            out.append(([target, name, version], float(pool.in_use(target))))
        return out

    return Gauges(
        (
            "slmops_queue_depth",
            "Generation requests waiting for a batch slot",
            [],
            lambda: [([], float(sum(s.waiting for s in schedulers.running())))],
        ),
        (
            "slmops_active_requests",
            "Generation requests decoding now",
            [],
            lambda: [([], float(sum(s.active for s in schedulers.running())))],
        ),
        (
            "slmops_loaded_model_requests",
            "Loaded models (value: requests using each now)",
            ["target", "registered_model", "version"],
            loaded,
        ),
        (
            "slmops_memory_used_bytes",
            "Memory budget used by the loaded models",
            [],
            lambda: [([], float(pool.used_bytes))],
        ),
    )


def _target_version(target: str) -> tuple[str, str]:
    """(registered model, version) of a pool target ``models:/name/version``; a named folder is ("", "local")."""
    if target.startswith("models:/"):
        name, _, version = target.removeprefix("models:/").partition("/")
        return name, version
    return "", "local"


def _check_items(count: int, limit: int, *, param: str) -> None:
    if count > limit:
        raise RequestLimitError(f"{param} has {count} items, more than this server's limit of {limit}", param=param)


def _check_chars(chars: int, limit: int, *, param: str) -> None:
    if chars > limit:
        raise RequestLimitError(
            f"{param} has a text of {chars} characters, more than this server's limit of {limit}", param=param
        )


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the openai client asks for by default: little-endian float32
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict"}


def _field_path(loc: tuple[Any, ...]) -> str | None:
    """``messages.0.content`` from pydantic's location, without "body" and the names of union members."""
    parts = [str(p) for p in loc[1:] if isinstance(p, int) or (str(p).isidentifier() and str(p) not in TYPE_NAMES)]
    return ".".join(parts) or None


def _handle_errors(app: FastAPI) -> None:
    # SlmopsError: answered by the routing layer. Exception: by Starlette's outermost layer, which logs it too
    @app.exception_handler(SlmopsError)
    async def slmops_error(request: Request, exc: SlmopsError) -> JSONResponse:
        return exception_response(exc)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        return exception_response(exc)

    @app.exception_handler(RequestCancelled)
    async def cancelled(request: Request, exc: RequestCancelled) -> JSONResponse:
        request.state.access["finish_reason"] = "cancelled"
        return error_response(499, INVALID, "the client closed the request", code="client_closed")  # nginx's 499

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # a union field (stop, prompt, input) fails once per member: report the most telling failure
        errors = sorted(
            exc.errors(), key=lambda e: (e["type"] != "value_error", e["type"].endswith("_type"), -len(e["loc"]))
        )
        err = errors[0]
        param = _field_path(err["loc"])
        if err["type"] == "json_invalid":
            return error_response(400, INVALID, "the request body is not valid JSON", code="invalid_json")
        if err["type"] == "missing":
            return error_response(400, INVALID, f"{param} is required", param=param, code="missing_required_parameter")
        if err["type"] == "extra_forbidden":
            return error_response(
                400, INVALID, f"unknown field {param!r}; /docs lists the fields", param=param, code="unknown_parameter"
            )
        value = err.get("input")
        shown = f" (got {value!r})" if isinstance(value, bool | int | float) or value is None else ""
        message = f"{param or 'body'}: {err['msg']}{shown}"
        return error_response(400, INVALID, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such route", 405: "method not allowed on this route"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, INVALID, message, code=HTTP_CODES.get(exc.status_code))
