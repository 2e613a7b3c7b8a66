"""The FastAPI app: OpenAI-compatible routes over a ModelPool, behind the Host/body guard, CORS and an API key.

Routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/rerank``, ``/v1/models``
(each needing the API key when one is set), ``/health`` (liveness) and ``/ready``. Every 4xx/5xx answers in
OpenAI's error shape (:mod:`slmops.serve.problems`).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from slmops.errors import RequestLimitError, SlmopsError, UnsupportedParameterError
from slmops.runtime.encoder import EmbeddingModel, RerankModel
from slmops.runtime.open import expect
from slmops.runtime.pool import ModelPool
from slmops.runtime.watch import AliasWatcher
from slmops.serve.config import ServeConfig
from slmops.serve.models import LeaseScope, ServedModels, gate_refusal
from slmops.serve.problems import HTTP_CODES, INVALID, documented, error_response, exception_response
from slmops.serve.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, RerankRequest
from slmops.serve.security import ApiKey, RequestGuard
from slmops.serve.text import VERSION_HEADER, chat_completion, text_completion

# every /v1 route may answer these; 404 for an unknown model, 413 for an oversized body
COMMON = documented(400, 401, 404, 413, 500, 503, 507)


def create_app(pool: ModelPool, config: ServeConfig | None = None) -> FastAPI:
    """The app serving ``pool``'s models (loaded on first use) as ``config`` says (default: from the settings)."""
    config = config or ServeConfig.from_settings()
    watcher = AliasWatcher(pool, poll_s=config.alias_poll_s, accept=gate_refusal)
    models = ServedModels(pool, local=dict(config.local_models), watcher=watcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher.start()  # polls every alias_poll_s, and refreshes on watcher.refresh_soon() (SIGHUP)
        try:
            yield
        finally:
            watcher.stop()

    app = FastAPI(
        title="slmops",
        version=__import__("slmops").__version__,
        description="OpenAI-compatible serving of the registered models that passed their quality gate.",
        lifespan=lifespan,
    )
    app.state.watcher = watcher
    _handle_errors(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(ApiKey(config.api_key))], responses=COMMON)

    @v1.post("/chat/completions", summary="Chat completion (JSON or server-sent events)")
    def chat(req: ChatCompletionRequest) -> Any:
        return chat_completion(req, models, config)

    @v1.post("/completions", summary="Text completion, with logprobs and echo (JSON or server-sent events)")
    def completions(req: CompletionRequest) -> Any:
        return text_completion(req, models, config)

    @v1.post("/embeddings", summary="Embeddings of one text or a list")
    def embeddings(req: EmbeddingRequest) -> Any:
        texts = req.texts()
        _check_items(len(texts), config.max_items, param="input")
        _check_chars(max(len(t) for t in texts), config.max_prompt_chars, param="input")
        served = models.resolve(req.model)
        model = expect(models.open(served), EmbeddingModel, target=req.model, doing="embed")
        vectors = model.embed(texts)
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            raise UnsupportedParameterError(
                f"dimensions={req.dimensions} is not supported; this model's embeddings have {vectors.shape[1]}",
                param="dimensions",
            )
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        tokens = sum(len(model.tokenizer.encode(t)) for t in texts)
        body = {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    @v1.post("/rerank", summary="Documents ordered by relevance to a query (Cohere/Jina shape)")
    def rerank(req: RerankRequest) -> Any:
        _check_items(len(req.documents), config.max_items, param="documents")
        _check_chars(len(req.query) + max(len(d) for d in req.documents), config.max_prompt_chars, param="documents")
        served = models.resolve(req.model)
        model = expect(models.open(served), RerankModel, target=req.model, doing="rerank")
        ranked = model.rerank(req.query, req.documents, top_k=req.top_n)
        results = [
            {
                "index": i,
                "relevance_score": float(score),
                **({"document": {"text": req.documents[i]}} if req.return_documents else {}),
            }
            for i, score in ranked
        ]
        body = {"id": f"rerank-{uuid.uuid4().hex}", "model": req.model, "results": results}
        return JSONResponse(body, headers={VERSION_HEADER: served.fingerprint})

    @v1.get("/models", summary="The served models: registry aliases whose version passed its gate, named folders")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": models.listing()}

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
    def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the loaded models and the memory they use")
    def ready() -> dict[str, Any]:
        return {
            "status": "ready",
            "loaded": pool.loaded(),
            "used_mb": round(pool.used_bytes / 2**20, 1),
            "max_memory_mb": round(pool.max_bytes / 2**20, 1),
            "aliases": watcher.status(),  # per served alias: version, and swap_error when it could not follow
            "draining": watcher.draining(),
            "time": int(time.time()),
        }

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
    return app


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
