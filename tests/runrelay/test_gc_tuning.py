"""The servers' garbage collector policy: what survives a full collection is skipped by the
next ones, and whatever died in a cycle while frozen is freed once everything is walked again."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from runrelay.server.gc_tuning import (
    GEN1_THRESHOLD_FROZEN,
    GEN2_THRESHOLD_FROZEN,
    GEN_THRESHOLDS_DEFAULT,
    GENERATIONAL,
    FreezeSurvivors,
    tune_gc,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Node:
    """A cycle's member (a plain object can be weakly referenced; a list cannot)."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _tracked(obj: object) -> bool:
    """Whether a collection would walk `obj` (frozen objects are in no generation)."""
    return any(o is obj for o in gc.get_objects())


@pytest.fixture
def clock() -> Iterator[_Clock]:
    """The policy on this process's collector for one test, with a clock the test moves; no
    collection but the test's own (the session's servers run threads in this process)."""
    saved = list(gc.callbacks)
    clock = _Clock()
    gc.callbacks.append(FreezeSurvivors(60.0, clock))
    gc.disable()
    try:
        yield clock
    finally:
        gc.enable()
        gc.callbacks[:] = saved
        gc.unfreeze()


@pytest.mark.usefixtures("clock")
def test_what_survives_a_full_collection_is_not_walked_by_the_next() -> None:
    kept = _Node()
    assert _tracked(kept)
    gc.collect()
    assert not _tracked(kept)  # frozen: a long-lived stream costs later collections nothing
    assert gc.get_freeze_count() > 0


def test_a_cycle_that_died_frozen_is_freed_once_everything_is_walked_again(
    clock: _Clock,
) -> None:
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    gc.collect()  # both survive it, and are frozen
    del first, second
    gc.collect()
    assert gone() is not None  # the price of freezing: a frozen cycle waits...

    clock.now += 60.0
    gc.collect()  # ...until full_collection_s have passed: this one unfreezes everything,
    assert gc.get_freeze_count() == 0
    gc.collect()  # and the next walks it all
    assert gone() is None
    assert gc.get_freeze_count() > 0  # and freezes what survived it again


@pytest.mark.usefixtures("clock")
def test_young_collections_freeze_nothing() -> None:
    gc.collect()
    frozen = gc.get_freeze_count()
    kept = _Node()
    gc.collect(0)
    gc.collect(1)
    assert _tracked(kept)
    assert gc.get_freeze_count() <= frozen  # fewer when frozen objects died meanwhile


@pytest.mark.skipif(not GENERATIONAL, reason="CPython 3.14's collector is incremental")
def test_tune_gc_sets_one_policy_per_process_and_zero_takes_it_away() -> None:
    saved, thresholds = list(gc.callbacks), gc.get_threshold()
    try:
        tune_gc(3600.0)
        tune_gc(1800.0)
        ours = [c for c in gc.callbacks if isinstance(c, FreezeSurvivors)]
        assert [c.full_collection_s for c in ours] == [1800.0]
        # Each full collection walks only what came since the last: they come more often.
        frozen = (GEN1_THRESHOLD_FROZEN, GEN2_THRESHOLD_FROZEN)
        assert gc.get_threshold()[1:] == frozen
        pairs = zip(frozen, GEN_THRESHOLDS_DEFAULT, strict=True)
        assert all(ours < cpython for ours, cpython in pairs)
        tune_gc(0)
        assert not any(isinstance(c, FreezeSurvivors) for c in gc.callbacks)
        assert gc.get_threshold()[1:] == GEN_THRESHOLDS_DEFAULT  # each walks everything again
    finally:
        gc.callbacks[:] = saved
        gc.set_threshold(*thresholds)
        gc.unfreeze()
