"""Using registered models: generate/chat, embed, rerank, and the demo that `make run` ends with."""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from slmops.cli.common import cli_errors, console, print_json


@cli_errors
def generate(
    target: Annotated[str, typer.Argument(help="Use case (alias), models:/ URI or artifact folder.")] = "chat-cpu",
    prompt: Annotated[str | None, typer.Option(help="Plain-text prompt (no chat template).")] = None,
    chat: Annotated[str | None, typer.Option(help="A user message, sent through the chat template.")] = None,
    max_tokens: int = 128,
    temperature: float = 0.7,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    prompt_lookup_tokens: Annotated[
        int,
        typer.Option(
            help="With --temperature 0: check up to this many tokens copied from the prompt per step (prompt-lookup "
            "drafts; the same greedy text, faster when it copies the prompt). 0: off."
        ),
    ] = 0,
) -> None:
    """Stream a completion (or a chat reply) from a registered model."""
    from slmops import load
    from slmops.errors import TaskMismatchError, UsageError

    if (prompt is None) == (chat is None):
        raise UsageError("pass exactly one of --prompt or --chat")
    model = load(target)
    if not hasattr(model, "stream"):
        raise TaskMismatchError(f"{target!r} is a {model.card.task} model; it cannot generate text")
    options = dict(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=tuple(stop or ()),
        prompt_lookup_tokens=prompt_lookup_tokens,
    )
    messages = [{"role": "user", "content": chat}] if chat is not None else None
    for delta in model.stream(prompt, messages=messages, **options):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")


@cli_errors
def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed.")],
    target: Annotated[str, typer.Option(help="Use case (alias), models:/ URI or folder.")] = "embeddings-cpu",
) -> None:
    """Print embeddings and their cosine-similarity matrix."""
    from slmops import load
    from slmops.errors import TaskMismatchError

    model = load(target)
    if not hasattr(model, "embed"):
        raise TaskMismatchError(f"{target!r} is a {model.card.task} model; it does not embed texts")
    vectors = model.embed(texts)
    print_json({"dim": int(vectors.shape[1]), "similarity": (vectors @ vectors.T).round(4).tolist()})


@cli_errors
def demo(
    chat_target: str = "chat-cpu",
    embed_target: str = "embeddings-cpu",
) -> None:
    """Load the recommended models, print a chat reply and an embedding similarity."""
    from slmops import load
    from slmops.cli.stages import print_recommendations
    from slmops.results import Recommendations, read_result
    from slmops.runtime.decoder import TextModel
    from slmops.runtime.encoder import EmbeddingModel
    from slmops.runtime.open import expect
    from slmops.settings import get_settings

    rec_path = get_settings().artifacts_dir / "recommendations.json"
    if rec_path.is_file():
        print_recommendations(read_result(rec_path, Recommendations))
    chat = expect(load(chat_target), TextModel, target=chat_target, doing="chat")
    question = "What is the capital of France? Answer in one sentence."
    console.print(f"[bold]{chat_target}[/] ({chat.card.variant}, {chat.card.recipe}) > {question}")
    console.print("  " + chat.chat([{"role": "user", "content": question}], temperature=0.0, max_tokens=48).strip())
    encoder = expect(load(embed_target), EmbeddingModel, target=embed_target, doing="embed")
    pairs = [
        ("A man is eating food.", "A man is eating a piece of bread."),
        ("A man is eating food.", "The stock market fell today."),
    ]
    vectors = encoder.embed([t for p in pairs for t in p])
    console.print(f"[bold]{embed_target}[/] ({encoder.card.variant}, {encoder.card.recipe}) cosine similarity:")
    for i, (a, b) in enumerate(pairs):
        console.print(f"  {float(vectors[2 * i] @ vectors[2 * i + 1]):.3f}  {a!r} ~ {b!r}")


@cli_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; the default answers this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    max_memory_mb: Annotated[float, typer.Option(help="Memory budget of the loaded models (LRU eviction).")] = 2048,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Also serve an artifact folder: NAME=PATH, or PATH (named <variant>-<recipe>). Repeatable."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Require 'Authorization: Bearer KEY' on /v1/* (default: $SLMOPS_API_KEY).")
    ] = None,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="Allow this browser origin (CORS is off without one). Repeatable.")
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(help="Answer this Host header too (localhost and the bind host always; '*': any). Repeatable."),
    ] = None,
) -> None:
    """Serve the registered models that passed their quality gate over an OpenAI-compatible HTTP API.

    Routes: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rerank, /v1/models, /health, /ready;
    the schema at /docs. `model` in a request is a use case (alias) or a models:/ URI; a folder is served
    only when named here with --model. Served aliases follow the registry: every $SLMOPS_ALIAS_POLL_S seconds,
    on POST /admin/reload and on SIGHUP, a moved alias's new version is loaded, warmed and swapped in.
    """
    import uvicorn

    from slmops.runtime.pool import ModelPool
    from slmops.serve import ServeConfig, create_app
    from slmops.serve.models import parse_model_option

    local = dict(parse_model_option(value) for value in model or [])
    config = ServeConfig.from_settings(
        host=host,
        api_key=api_key,
        cors_origins=tuple(cors_origin or ()),
        allowed_hosts=tuple(allowed_host or ()),
        local_models=local,
    )
    app = create_app(ModelPool(max_memory_mb=max_memory_mb), config)
    if hasattr(signal, "SIGHUP"):  # `kill -HUP <pid>`: re-resolve the served aliases now (see POST /admin/reload)
        signal.signal(signal.SIGHUP, lambda signum, frame: app.state.watcher.refresh_soon())
    _access_log_to_stderr()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _access_log_to_stderr() -> None:
    """One JSON line per request on stderr (the ``slmops.serve.access`` logger), whatever SLMOPS_LOG_LEVEL says."""
    import logging
    import sys

    access = logging.getLogger("slmops.serve.access")
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
