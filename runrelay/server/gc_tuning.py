"""The garbage collector of a long-lived server process (the API's and the worker's)."""

from __future__ import annotations

import gc

# Young-generation collections this far apart (CPython's default is 700 allocations): thousands of
# open streams, or of runs in flight, allocate a little per event, and each collection walks
# every young object.
GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """After start-up: what start-up made (modules, the app, its routes and models) is frozen
    out of every later collection, so a full collection with thousands of open streams or runs
    walks only what they hold; and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GEN0_THRESHOLD, gc.get_threshold()[0]), gen1, gen2)
