"""The run event protocol (DESIGN §4): one append-only log per run, `seq` 1, 2, 3 … with no gaps.

Every event is a JSON object with `type`, `seq`, `run_id`, `ts` and the fields of its type. The
worker and the shim append them; the SSE replay sends `data` as it was stored.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

import orjson

EventType = Literal[
    "run_queued",
    "run_started",
    "agent_resolved",
    "output_text_delta",
    "tool_call_delta",
    "tool_call_result",
    "approval_required",
    "suggestions",
    "custom",
    "metadata",
    "usage",
    "error",
    "chat_completed",
    "done",
]


CANCELLED_ERROR = {"code": "cancelled", "message": "the run was cancelled on request"}


def make_event(run_id: str, seq: int, type: EventType, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type, "seq": seq, "run_id": run_id, "ts": round(time.time(), 6), **data}


# What `json.dumps(..., default=str)` would make of datetimes and dataclasses (their `str`),
# where orjson has formats of its own.
_ORJSON = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def encode(event: dict[str, Any]) -> str:
    """The event as stored and sent: compact JSON, UTF-8 (no `\\u` escapes), a value JSON
    cannot hold as its `str`. orjson, ~6 times faster than the standard library (a run encodes
    every event it writes); what it refuses (an integer beyond 64 bits) goes to `json`."""
    try:
        return orjson.dumps(event, default=str, option=_ORJSON).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)
