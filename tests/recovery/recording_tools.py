"""A tool that records every execution (run id, tool call id) in a file, so tests can count how
often each tool call really ran across worker crashes."""

from __future__ import annotations

import os
import time
from typing import Any

from runrelay.agent.tools import current_run_id, current_tool_call_id, tool

LOG_ENV = "RUNRELAY_TEST_TOOL_LOG"


@tool(description="Record a step of the work.", timeout_s=10)
def record_step(step: str) -> dict[str, Any]:
    line = f"{current_run_id.get()} {current_tool_call_id.get()} {step}\n"
    with open(os.environ[LOG_ENV], "a") as log:  # one short append: atomic between processes
        log.write(line)
    return {"step": step, "recorded": True}


@tool(description="Take far longer than allowed.", timeout_s=0.3)
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"
