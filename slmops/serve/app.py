"""FastAPI app serving registered models. Every slmops error becomes a JSON error body with a fitting status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from slmops.errors import (
    GenerationParamsError,
    IntegrityError,
    MemoryBudgetError,
    ModelLoadError,
    NoEligibleModelError,
    RegistryError,
    SlmopsError,
    TaskMismatchError,
    UsageError,
)
from slmops.runtime.decoder import TextModel
from slmops.runtime.encoder import EmbeddingModel, RerankModel
from slmops.runtime.open import expect
from slmops.runtime.pool import ModelPool

# error class -> HTTP status, most specific first
STATUS: tuple[tuple[type[SlmopsError], int], ...] = (
    (NoEligibleModelError, 404),
    (RegistryError, 404),
    (GenerationParamsError, 400),
    (TaskMismatchError, 400),
    (UsageError, 400),
    (MemoryBudgetError, 507),
    (IntegrityError, 500),
    (ModelLoadError, 500),
    (SlmopsError, 500),
)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="chat-cpu", description="Use case (alias), models:/ URI or artifact folder.")
    prompt: str | None = None
    prompts: list[str] | None = Field(default=None, description="A batch: one completion per prompt, not streamed.")
    messages: list[dict[str, str]] | None = None
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "embeddings-cpu"
    texts: list[str]


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "rerank-cpu"
    query: str
    documents: list[str]
    top_k: int | None = Field(default=None, ge=1)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"type": kind, "message": message}})


def create_app(pool: ModelPool) -> FastAPI:
    """The app, serving the models of ``pool`` (loaded on first use)."""
    app = FastAPI(title="slmops", version=__import__("slmops").__version__)

    @app.exception_handler(SlmopsError)
    async def slmops_error(request: Request, exc: SlmopsError) -> JSONResponse:
        status = next(code for cls, code in STATUS if isinstance(exc, cls))
        return _error(status, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if p != "body")
        return _error(422, "RequestValidationError", f"{loc}: {err['msg']} (got {err.get('input')!r})")

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        return {"status": "ok", "loaded": pool.loaded(), "used_mb": round(pool.used_bytes / 2**20, 1)}

    @app.post("/v1/generate")
    def generate(req: GenerateRequest) -> Any:
        model = expect(pool.get(req.model), TextModel, target=req.model, doing="stream")
        options = req.model_dump(exclude={"model", "prompt", "prompts", "messages", "stream"}, exclude_none=True)
        if "stop" in options:
            options["stop"] = tuple(options["stop"])
        if req.prompts is not None:
            if req.prompt is not None or req.messages is not None or req.stream:
                raise GenerationParamsError("prompts= is a batch: pass it without prompt=, messages= or stream=true")
            texts = model.generate_batch(req.prompts, **options)
            return {"model": req.model, "variant": model.card.variant, "texts": texts}
        deltas = model.stream(req.prompt, messages=req.messages, **options)  # validates before the first byte
        if not req.stream:
            return {"model": req.model, "variant": model.card.variant, "text": "".join(deltas)}

        def events() -> Iterator[str]:
            for delta in deltas:
                yield f"data: {json.dumps({'delta': delta})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/embed")
    def embed(req: EmbedRequest) -> dict[str, Any]:
        model = expect(pool.get(req.model), EmbeddingModel, target=req.model, doing="embed")
        vectors = model.embed(req.texts)
        return {
            "model": req.model,
            "variant": model.card.variant,
            "dim": int(vectors.shape[1]),
            "embeddings": vectors.tolist(),
        }

    @app.post("/v1/rerank")
    def rerank(req: RerankRequest) -> dict[str, Any]:
        model = expect(pool.get(req.model), RerankModel, target=req.model, doing="rerank")
        ranked = model.rerank(req.query, req.documents, top_k=req.top_k)
        return {
            "model": req.model,
            "results": [{"index": i, "score": s, "document": req.documents[i]} for i, s in ranked],
        }

    return app
