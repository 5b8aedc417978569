"""A thread's history as the model sees it: which earlier messages a new run starts with.

History is kept per exchange: the messages one completed run added to its thread (its user
message, the assistant's tool calls, the tool results, the final answer). An exchange is the unit
of trimming, so the model never sees a tool result without the call it answers.

The policy (`HistoryPolicy`, per agent, `history:` in the agents config) keeps the most recent
exchanges within two budgets, `max_messages` and `max_tokens`. Going back from the newest
exchange, each one is kept

1. whole, if it fits in what is left of both budgets; else
2. in short form — its user message and its final answer, without the tool calls and tool
   results — if that fits; else
3. not at all, and neither is anything older: history is always an unbroken run of the latest
   exchanges.

So the newest exchange is always kept (whole or short) when it alone fits, and a thread whose
newest exchange is bigger than the budgets starts the next run with no history. Tokens are
estimated, not counted: a message costs its JSON length in characters divided by 4, rounded up
(about right for English text with OpenAI's tokenizers, and on the safe side for JSON).

Pure functions, no I/O: the worker loads the exchanges, this module picks from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# A message as stored (a thread's history) or as the loop keeps it (`ChatMessage`).
Message = dict[str, Any]
M = TypeVar("M", bound=Mapping[str, Any])
CHARS_PER_TOKEN = 4


class HistoryPolicy(BaseModel):
    """How much of its thread's history a run starts with (0 in either budget: none)."""

    model_config = ConfigDict(extra="forbid")

    max_messages: int = Field(50, ge=0, description="messages of history, at most")
    max_tokens: int = Field(8000, ge=0, description="estimated tokens of history, at most")


def estimate_tokens(message: Mapping[str, Any]) -> int:
    """The message's compact JSON length / 4, rounded up."""
    size = len(json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=str))
    return -(-size // CHARS_PER_TOKEN)


def short_form(exchange: Sequence[M]) -> list[M]:
    """The exchange without its tool calls and tool results: user message(s), final answer."""
    users = [m for m in exchange if m.get("role") == "user"]
    answers = [m for m in exchange if m.get("role") == "assistant" and not m.get("tool_calls")]
    return users + answers[-1:]


def fit_history(exchanges: Sequence[Sequence[M]], policy: HistoryPolicy) -> list[M]:
    """The messages a new run starts with, oldest first, from `exchanges` (oldest first)."""
    messages_left, tokens_left = policy.max_messages, policy.max_tokens
    kept: list[list[M]] = []
    for exchange in reversed(exchanges):
        for candidate in (list(exchange), short_form(exchange)):
            tokens = sum(estimate_tokens(message) for message in candidate)
            if candidate and len(candidate) <= messages_left and tokens <= tokens_left:
                break
        else:
            break
        kept.append(candidate)
        messages_left -= len(candidate)
        tokens_left -= tokens
    return [message for exchange in reversed(kept) for message in exchange]


def new_messages(messages: Sequence[M], history_len: int) -> list[M]:
    """What a run adds to its thread: its messages after the system prompt and the history it
    started with, leaving out system messages (such as the loop's final-answer nudge)."""
    return [m for m in messages[1 + history_len :] if m.get("role") != "system"]
