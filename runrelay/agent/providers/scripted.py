"""The offline `scripted` provider: deterministic text and tool calls with configurable latency.

It plays the agent's `script` turn by turn: the n-th model call since the last user message
plays turn n (the last turn repeats). Text is cut into `chunks` deltas. When the loop asks for a
final answer (no tools offered), tool-call turns are skipped. Token counts are estimates
(4 characters a token) so that usage accounting has something real to add up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from runrelay.agent.config import Script, ScriptedTurn
from runrelay.agent.providers.base import (
    Chunk,
    Finish,
    ModelRequest,
    TextDelta,
    ToolCallFragment,
    UsageReport,
)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def split_text(text: str, chunks: int) -> list[str]:
    """Cut text into `chunks` pieces at word boundaries where possible; joined they give `text`."""
    words = text.split(" ")
    if len(words) >= chunks:
        per, extra = divmod(len(words), chunks)
        pieces, start = [], 0
        for i in range(chunks):
            end = start + per + (1 if i < extra else 0)
            pieces.append(" ".join(words[start:end]))
            start = end
        return [piece if i == 0 else " " + piece for i, piece in enumerate(pieces)]
    size = max(1, -(-len(text) // chunks))
    return [text[i : i + size] for i in range(0, len(text), size)]


class ScriptedProvider:
    name = "scripted"

    def __init__(self, script: Script) -> None:
        self.script = script

    def _pick(self, request: ModelRequest) -> ScriptedTurn:
        since_user = 0
        for message in reversed(request.messages):
            if message["role"] == "user":
                break
            if message["role"] == "assistant":
                since_user += 1
        turns = self.script.turns
        if not request.tools:
            turns = [turn for turn in turns if not turn.tool_calls] or [ScriptedTurn(text="Done.")]
        return turns[min(since_user, len(turns) - 1)]

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        turn = self._pick(request)
        delay = self.script.delay_ms / 1000
        completion = ""
        if turn.tool_calls:
            for index, call in enumerate(turn.tool_calls):
                arguments = json.dumps(call.arguments)
                call_id = f"call_{len(request.messages)}_{index}"
                half = len(arguments) // 2
                for n, part in enumerate((arguments[:half], arguments[half:])):
                    await asyncio.sleep(delay)
                    yield ToolCallFragment(
                        index=index,
                        id=call_id if n == 0 else None,
                        name=call.name if n == 0 else None,
                        arguments=part,
                    )
                completion += call.name + arguments
        if turn.text:
            for piece in split_text(turn.text, turn.chunks):
                await asyncio.sleep(delay)
                yield TextDelta(piece)
            completion += turn.text
        prompt = sum(_tokens(json.dumps(m.get("content") or "")) for m in request.messages)
        yield UsageReport(prompt_tokens=prompt, completion_tokens=_tokens(completion))
        yield Finish("tool_calls" if turn.tool_calls and request.tools else "stop")
