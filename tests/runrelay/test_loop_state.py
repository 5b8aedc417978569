"""`LoopState.to_dict`: what a checkpoint saves of the loop."""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from typing import Any

from runrelay.agent._state import LoopState, ToolCallRecord

Point = namedtuple("Point", "x y")


@dataclasses.dataclass
class Score:
    value: int
    notes: list[Any]


def test_a_checkpointed_tool_call_is_what_asdict_made_of_it_with_nothing_shared() -> None:
    """Tool arguments and results are no longer deep-copied at each checkpoint: the saved
    dict must still be `asdict`'s, dataclasses at any depth included, and must not hand out
    the record's own containers."""
    record = ToolCallRecord(
        "call_1",
        "lookup",
        {"company": "ACME", "pair": (1, 2), "at": Point(1, Score(2, [3]))},
        {"score": Score(712, [Score(1, [])]), "rows": [1, {"nested": Score(3, [])}]},
        approved=True,
    )
    state = LoopState(messages=[{"role": "user", "content": "hi"}], records=[record])
    state.finished[record.tool_call_id] = record

    saved = state.to_dict()

    assert saved["records"] == [dataclasses.asdict(record)]
    assert saved["finished"] == {"call_1": dataclasses.asdict(record)}
    score = saved["records"][0]["result"]["score"]
    assert score == {"value": 712, "notes": [{"value": 1, "notes": []}]}
    saved["records"][0]["arguments"]["company"] = "changed"
    assert record.arguments["company"] == "ACME"
    assert LoopState.from_dict(saved).records[0].approved is True
