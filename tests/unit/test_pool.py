"""ModelPool's holds: a held model is never unloaded; eviction takes idle models only, or refuses clearly."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from slmops.errors import MemoryBudgetError, ModelBusyError, UsageError
from slmops.runtime import pool as pool_module
from slmops.runtime.base import RUNTIME_OVERHEAD_BYTES
from slmops.runtime.pool import ModelPool

MB = 2**20


class Fake:
    """A loaded model of ``size`` MB."""

    def __init__(self, target: str, size: int) -> None:
        self.target, self.footprint_bytes, self.is_loaded = target, size * MB, True
        self.card = type("Card", (), {"variant": target, "recipe": "fp32"})()

    def unload(self) -> None:
        self.is_loaded = False


class Located:
    """A model found but not opened (what slmops.runtime.loader.locate returns); ``opened`` logs each open."""

    sizes = {"a": 40, "b": 40, "c": 40, "huge": 500}
    opened: list[str] = []
    gate: dict[str, threading.Event] = {}  # an open of these targets waits for the event

    def __init__(self, target: str, **_: object) -> None:
        self.target, self.footprint_bytes = target, self.sizes[target] * MB

    def open(self) -> Fake:
        if self.target in self.gate:
            assert self.gate[self.target].wait(10)
        self.opened.append(self.target)
        return Fake(self.target, self.sizes[self.target])


@pytest.fixture()
def pool(monkeypatch: pytest.MonkeyPatch) -> ModelPool:
    monkeypatch.setattr(Located, "opened", [])
    monkeypatch.setattr(Located, "gate", {})
    monkeypatch.setattr(pool_module, "locate", Located)
    return ModelPool(max_memory_mb=RUNTIME_OVERHEAD_BYTES / MB + 100)  # room for two models


def test_eviction_skips_held_models(pool: ModelPool) -> None:
    a = pool.acquire("a")
    b = pool.get("b")
    c = pool.get("c")  # b is idle and least recently used after a, which is held
    assert pool.loaded() == ["a", "c"] and a.is_loaded and not b.is_loaded and c.is_loaded
    assert pool.in_use("a") == 1 and pool.in_use("c") == 0


def test_nothing_is_unloaded_when_only_held_models_would_make_room(pool: ModelPool) -> None:
    a, b = pool.acquire("a"), pool.acquire("b")
    with pytest.raises(ModelBusyError, match="serving requests"):
        pool.get("c")
    assert pool.loaded() == ["a", "b"] and a.is_loaded and b.is_loaded
    pool.release(b)
    assert pool.get("c").is_loaded and not b.is_loaded and a.is_loaded


def test_too_big_is_a_budget_error_not_busy(pool: ModelPool) -> None:
    with pytest.raises(MemoryBudgetError) as raised:
        pool.get("huge")
    assert not isinstance(raised.value, ModelBusyError)


def test_unload_of_a_held_model_waits_for_its_last_release(pool: ModelPool) -> None:
    with pool.lease("a") as a:
        pool.acquire("a")
        pool.unload("a")
        assert a.is_loaded and pool.loaded() == [] and pool.used_bytes == RUNTIME_OVERHEAD_BYTES + 40 * MB
        pool.release(a)
        assert a.is_loaded
    assert not a.is_loaded and pool.used_bytes == RUNTIME_OVERHEAD_BYTES
    assert pool.get("a") is not a  # loaded afresh


def test_clear_drains_held_models(pool: ModelPool) -> None:
    a, b = pool.acquire("a"), pool.get("b")
    pool.clear()
    assert pool.loaded() == [] and a.is_loaded and not b.is_loaded
    pool.release(a)
    assert not a.is_loaded


def test_release_without_acquire_is_an_error(pool: ModelPool) -> None:
    with pytest.raises(UsageError, match="not held"):
        pool.release(pool.get("a"))


def test_room_is_made_before_the_new_model_is_opened(pool: ModelPool) -> None:
    a, b = pool.get("a"), pool.get("b")
    Located.gate["c"] = threading.Event()
    with ThreadPoolExecutor(1) as run:
        loading = run.submit(pool.get, "c")
        for _ in range(1000):  # until a is evicted (10 s at most)
            if not a.is_loaded:
                break
            threading.Event().wait(0.01)
        # a (least recently used) went before c's weights are read; c's share is reserved: b + c = 80 MB
        assert not a.is_loaded and Located.opened == ["a", "b"] and pool.loaded() == ["b"]
        assert pool.used_bytes == RUNTIME_OVERHEAD_BYTES + 80 * MB
        Located.gate["c"].set()
        c = loading.result(10)
    assert b.is_loaded and c.is_loaded and pool.loaded() == ["b", "c"]


def test_a_slow_load_does_not_block_other_targets(pool: ModelPool) -> None:
    a = pool.get("a")
    Located.gate["b"] = threading.Event()
    with ThreadPoolExecutor(2) as run:
        loading = run.submit(pool.get, "b")
        assert run.submit(pool.acquire, "a").result(5) is a  # answered while b is still opening
        assert not loading.done()
        Located.gate["b"].set()
        loading.result(10)
    pool.release(a)


def test_concurrent_requests_for_one_target_open_it_once(pool: ModelPool) -> None:
    Located.gate["a"] = threading.Event()
    with ThreadPoolExecutor(4) as run:
        futures = [run.submit(pool.acquire, "a") for _ in range(4)]
        Located.gate["a"].set()
        models = {id(f.result(10)) for f in futures}
    assert len(models) == 1 and Located.opened == ["a"] and pool.in_use("a") == 4


def test_a_failed_open_releases_its_reservation(pool: ModelPool, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Located) -> Fake:
        raise MemoryBudgetError("no")

    monkeypatch.setattr(Located, "open", broken)
    with pytest.raises(MemoryBudgetError):
        pool.get("a")
    assert pool.used_bytes == RUNTIME_OVERHEAD_BYTES and pool.loaded() == []
