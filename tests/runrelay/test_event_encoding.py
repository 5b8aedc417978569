"""`encode`: what an event looks like in the log and on the wire, whatever a tool put in it."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

from runrelay.agent.events import encode, make_event


@dataclasses.dataclass
class Reading:
    celsius: float


def test_an_event_is_one_compact_line_of_utf8_json() -> None:
    event = make_event("run_1", 3, "output_text_delta", {"delta": "café\nline two \u2028 ✓"})

    line = encode(event)

    assert "\n" not in line, "the archive keeps one event per line"
    assert "café" in line and "✓" in line, "no \\u escapes"
    assert ", " not in line and '": ' not in line
    assert json.loads(line) == event


def test_what_json_cannot_hold_is_written_as_its_str_and_nothing_is_refused() -> None:
    moment = datetime(2026, 12, 2, 19, 44, 33, 116302, tzinfo=UTC)
    data = {
        "at": moment,
        "reading": Reading(21.5),
        "ids": {7},
        "by_code": {404: "missing"},
        "huge": 2**70,  # beyond 64 bits
    }

    decoded = json.loads(encode(make_event("run_1", 4, "tool_call_result", data)))

    assert decoded["at"] == str(moment)
    assert decoded["reading"] == "Reading(celsius=21.5)"
    assert decoded["ids"] == "{7}"
    assert decoded["by_code"] == {"404": "missing"}
    assert decoded["huge"] == 2**70
