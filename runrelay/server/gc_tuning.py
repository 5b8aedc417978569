"""The garbage collector of a long-lived server process (the API's and the worker's).

CPython 3.11 collects the old generation whole: one collection walks every object of every open
stream (~60 each) or run in flight, about a quarter of a second at 10,000 streams, and every
stream waits for it. It runs whenever the old generation has grown by a quarter, which streams
that come and go keep doing. Here what survives a full collection is frozen (`gc.freeze()`):
later collections skip it, and walk only what came since. A frozen object that dies by
reference counting is freed at once; one that dies in a reference cycle waits for the next
collection that walks everything, which this module lets come once in `full_collection_s`.
The request and run paths leave no such cycles (tests pin it), so in between little waits.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from typing import Any

# Young-generation collections this far apart (CPython's default is 700 allocations): thousands of
# open streams, or of runs in flight, allocate a little per event, and each collection walks
# every young object.
GEN0_THRESHOLD = 10_000
# With what survives each full collection frozen, a full collection walks only what came since the
# last one, about as cheap as a collection of the middle generation: it then runs after every
# second one of those (CPython's default: every eleventh), which run after every sixth young
# one (CPython: every eleventh). While thousands of streams or runs open, each full collection
# then freezes the few that came since the last; at CPython's pace the first one after they
# stopped opening walked them all at once (at 10,000 streams ~0.27 s; now ~20 ms, and 15-90 ms
# while they open: bench/README.md, fan-out, twenty-fourth round).
GEN1_THRESHOLD_FROZEN = 5
GEN2_THRESHOLD_FROZEN = 1
GEN_THRESHOLDS_DEFAULT = (10, 10)  # CPython's, for the two older generations
# CPython 3.14 alone collects the old generation a piece at a time (no such pause to avoid, and
# its collections are not the generations `FreezeSurvivors` reads); 3.11-3.13 and 3.15 do not.
GENERATIONAL = sys.version_info[:2] != (3, 14)


def tune_gc(full_collection_s: float) -> None:
    """After start-up: what start-up made (modules, the app, its routes and models) is frozen
    out of every later collection, and young collections run less often. `full_collection_s`
    > 0: what survives each full collection is frozen too, full collections come more often
    (each walks only what came since the last), and once that long after the last time
    everything was walked, it is all walked again (`FreezeSurvivors`); 0 (or CPython 3.14):
    only start-up."""
    gc.collect()
    gc.freeze()
    freezing = full_collection_s > 0 and GENERATIONAL
    older = (GEN1_THRESHOLD_FROZEN, GEN2_THRESHOLD_FROZEN) if freezing else GEN_THRESHOLDS_DEFAULT
    gc.set_threshold(max(GEN0_THRESHOLD, gc.get_threshold()[0]), *older)
    # One policy a process, the last one set (a test process builds many apps).
    gc.callbacks[:] = [c for c in gc.callbacks if not isinstance(c, FreezeSurvivors)]
    if freezing:
        gc.callbacks.append(FreezeSurvivors(full_collection_s))


class FreezeSurvivors:
    """A `gc.callbacks` entry: at the end of each full collection, freezes what survived it
    (nothing else is left in any generation then), unless `full_collection_s` have passed since
    the last time everything was walked: then it unfreezes all, and the next full collection
    walks everything and frees whatever died in a cycle while frozen."""

    def __init__(
        self, full_collection_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.full_collection_s = full_collection_s
        self._clock = clock
        self._walked_all_at = clock()  # start-up's own collection

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info["generation"] != 2:
            return
        now = self._clock()
        if now - self._walked_all_at >= self.full_collection_s:
            self._walked_all_at = now
            gc.unfreeze()
        else:
            gc.freeze()
