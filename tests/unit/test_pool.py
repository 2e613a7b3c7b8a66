"""ModelPool's holds: a held model is never unloaded; eviction takes idle models only, or refuses clearly."""

from __future__ import annotations

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


@pytest.fixture()
def pool(monkeypatch: pytest.MonkeyPatch) -> ModelPool:
    sizes = {"a": 40, "b": 40, "c": 40, "huge": 500}
    monkeypatch.setattr(pool_module, "load", lambda target, **_: Fake(target, sizes[target]))
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
