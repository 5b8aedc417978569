"""The chaos bench's tool: records every execution (run id, tool call id, the worker's pid and
the moment the tool returned) in a file, so the bench can count how often each tool call really
ran across worker crashes, and tell a call re-run because its worker died before its result was
recorded from one re-run although its result was."""

from __future__ import annotations

import os
import time
from typing import Any

from runrelay.agent.tools import current_run_id, current_tool_call_id, tool

LOG_ENV = "RUNRELAY_CHAOS_TOOL_LOG"


@tool(description="Record a step of the work.", timeout_s=10)
def record_step(step: str) -> dict[str, Any]:
    line = (f"{current_run_id.get()} {current_tool_call_id.get()} {step} {os.getpid()} "
            f"{time.time():.6f}\n")
    with open(os.environ[LOG_ENV], "a") as log:  # one short append: atomic between processes
        log.write(line)
    return {"step": step, "recorded": True}
