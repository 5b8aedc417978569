"""The garbage collector, seen from inside a bench's runrelay processes (`fanout.py --gc-log`).

With this folder on PYTHONPATH and RUNRELAY_BENCH_GC_LOG naming a file, every Python process
started appends a line per full (generation 2) collection to that file:
`<role> <pid> <epoch s at its start> <ms> <objects collected> <forced|auto>`, role `api`,
`worker` or `other` from its command line. SIGUSR2 makes the process run a full collection
(`forced`), as its own collector would when the old generation has grown: the bench times what
such a pause costs the streams without waiting for one to come.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from typing import Any

_LOG = os.environ.get("RUNRELAY_BENCH_GC_LOG")


def _role() -> str:
    with open("/proc/self/cmdline", "rb") as cmdline:
        args = cmdline.read().split(b"\0")
    for role in ("api", "worker"):
        if role.encode() in args:
            return role
    return "other"


def _install(path: str) -> None:
    role, started, forced = _role(), [0.0, 0.0], [False]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[:] = [time.time(), time.perf_counter()]
            return
        ms = (time.perf_counter() - started[1]) * 1000
        line = f"{role} {os.getpid()} {started[0]:.3f} {ms:.1f} {info['collected']} "
        with open(path, "a") as log:  # one short append: whole lines between processes
            log.write(line + ("forced\n" if forced[0] else "auto\n"))

    def collect(signum: int, frame: object) -> None:
        forced[0] = True
        try:
            gc.collect()
        finally:
            forced[0] = False

    gc.callbacks.append(timed)
    signal.signal(signal.SIGUSR2, collect)


if _LOG:
    _install(_LOG)
