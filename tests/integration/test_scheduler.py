"""Continuous batching on the tiny Llama: requests that join and leave a running batch get what they get alone."""

from __future__ import annotations

import shutil

import pytest

from slmops.errors import QueueFullError, RequestTimeoutError
from slmops.export import export
from slmops.runtime.open import open_folder
from slmops.runtime.params import GenerationParams
from slmops.serve.scheduler import BatchScheduler, RequestCancelled
from tests.support.tiny import as_fetched, build_candidates, from_folder

PROMPTS = [
    "The sun",
    "Water boils at one hundred degrees and the kettle",
    "a",
    "The sun rises in the east and sets in the west, every single day of the year, as",
    "héllo wörld",
    "Once upon a time",
]
WAIT_S = 120  # bound on any wait for a scheduler event


@pytest.fixture(scope="module")
def candidates(tiny_models, tmp_path_factory: pytest.TempPathFactory):
    """The tiny Llama exported by optimum (fp32 and two quantized recipes) and by the genai builder (fp32)."""
    root = tmp_path_factory.mktemp("sched")
    build_candidates(
        root / "optimum", "tiny-llama", from_folder(*tiny_models["tiny-llama"]), recipes=("wo-int8", "wo-int4")
    )
    folders = {f"optimum-{r}": root / "optimum" / "cand" / r for r in ("wo-int8", "wo-int4")}
    folders["optimum-fp32"] = root / "optimum" / "export"
    folder, facts = tiny_models["tiny-llama"]
    src = root / "genai" / "fetch"
    shutil.copytree(folder, src)
    export(as_fetched(src, "tiny-llama", facts), src=src, out=root / "genai" / "out", exporter="genai")
    folders["genai-fp32"] = root / "genai" / "out"
    return folders


@pytest.fixture(params=["optimum-fp32", "genai-fp32", "optimum-wo-int8", "optimum-wo-int4"])
def model(request, candidates):
    return open_folder(candidates[request.param])


class Seen:
    """An observer keeping the batch sizes the scheduler reports."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def batch(self, rows: int, waiting: int) -> None:
        self.rows.append(rows)

    def first_token(self, seconds: float) -> None:
        pass

    def next_token(self, seconds: float) -> None:
        pass


@pytest.fixture()
def scheduler(model):
    running = BatchScheduler(model, max_batch=4, max_queue=8, observer=Seen()).start()
    yield running
    running.stop()


def _collect(request) -> tuple[str, str | None]:
    text, finish = "", None
    for step in request.events(timeout=WAIT_S):
        if step.error is not None:
            raise step.error
        text += step.text
        finish = step.finish or finish
    return text, finish


def test_concurrent_greedy_requests_equal_each_alone(model) -> None:
    """Six requests of different lengths and max_tokens through a batch of at most four: rows join while others
    decode and leave at their own max_tokens, stop string or end token."""
    ids = [model.prompt_ids(p) for p in PROMPTS]
    options = [
        dict(max_tokens=6 + 5 * i, temperature=0.0, ignore_eos=True, stop=["zz"] if i == 2 else ()) for i in range(6)
    ]
    alone = [model.generate(p, **o) for p, o in zip(PROMPTS, options, strict=True)]
    scheduler = BatchScheduler(model, max_batch=4, max_queue=8, observer=Seen())
    first = [scheduler.submit(i, GenerationParams.build(**o)) for i, o in zip(ids[:3], options[:3], strict=True)]
    scheduler.start()  # the first three join at once
    first_text = [_collect(r) for r in first[:1]]  # the others are still decoding when the last three come in
    later = [scheduler.submit(i, GenerationParams.build(**o)) for i, o in zip(ids[3:], options[3:], strict=True)]
    texts = first_text + [_collect(r) for r in first[1:] + later]
    assert [t for t, _ in texts] == alone
    assert [f for _, f in texts] == ["length"] * 6
    assert len(set(alone)) > 1 and scheduler.active == 0
    scheduler.stop()
    seen = scheduler.observer.rows
    assert seen[0] == 3 and max(seen) <= 4  # the rows did decode together, never more than max_batch


def test_seeded_sampling_under_concurrency_equals_alone(model, scheduler) -> None:
    options = dict(max_tokens=10, temperature=1.0, top_p=0.9, seed=11, ignore_eos=True)
    alone = [model.generate(p, **options) for p in PROMPTS[:4]]
    requests = [scheduler.submit(model.prompt_ids(p), GenerationParams.build(**options)) for p in PROMPTS[:4]]
    assert [_collect(r)[0] for r in requests] == alone


def test_a_stop_string_ends_one_row(model, scheduler) -> None:
    options = dict(max_tokens=16, temperature=0.0, ignore_eos=True)
    full = model.generate(PROMPTS[1], **options)
    stop = full[4:7]
    other = scheduler.submit(model.prompt_ids(PROMPTS[0]), GenerationParams.build(**options))
    cut = scheduler.submit(model.prompt_ids(PROMPTS[1]), GenerationParams.build(**options, stop=[stop]))
    assert _collect(cut) == (full[: full.index(stop)], "stop")
    assert _collect(other) == (model.generate(PROMPTS[0], **options), "length")


def test_cancelled_and_timed_out_requests_leave_the_batch(model, scheduler) -> None:
    long = GenerationParams.build(max_tokens=200, temperature=0.0, ignore_eos=True)
    doomed = scheduler.submit(model.prompt_ids(PROMPTS[0]), long)
    events = doomed.events(timeout=WAIT_S)
    assert next(events).token is not None  # it is decoding
    doomed.cancel()
    with pytest.raises(RequestCancelled):
        _collect_rest(events)
    late = scheduler.submit(model.prompt_ids(PROMPTS[0]), long, timeout_s=0.0)
    with pytest.raises(RequestTimeoutError):
        _collect(late)
    assert scheduler.active == 0 and scheduler.waiting == 0


def _collect_rest(events) -> None:
    for step in events:
        if step.error is not None:
            raise step.error


def test_a_full_queue_refuses_the_next_request(model) -> None:
    scheduler = BatchScheduler(model, max_batch=1, max_queue=1)  # not started: nothing leaves the queue
    params = GenerationParams.build(max_tokens=4, temperature=0.0)
    scheduler.submit(model.prompt_ids("a"), params)
    scheduler.submit(model.prompt_ids("a"), params)
    with pytest.raises(QueueFullError, match="busy"):
        scheduler.submit(model.prompt_ids("a"), params)
