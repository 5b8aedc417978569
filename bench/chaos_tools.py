"""The chaos bench's tool: records every execution (run id, tool call id) in a file, so the
bench can count how often each tool call really ran across worker crashes."""

from __future__ import annotations

import os
from typing import Any

from runrelay.agent.tools import current_run_id, current_tool_call_id, tool

LOG_ENV = "RUNRELAY_CHAOS_TOOL_LOG"


@tool(description="Record a step of the work.", timeout_s=10)
def record_step(step: str) -> dict[str, Any]:
    line = f"{current_run_id.get()} {current_tool_call_id.get()} {step}\n"
    with open(os.environ[LOG_ENV], "a") as log:  # one short append: atomic between processes
        log.write(line)
    return {"step": step, "recorded": True}
