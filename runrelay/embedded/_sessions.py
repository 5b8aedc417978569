"""Embedded sessions: the chat history of each session key, kept in the workspace directory.

One JSON file per key, `<workspace>/sessions/<readable part>-<hash>.json`: the readable part
keeps letters, digits, `-` and `_` of the key, and the hash of the whole key keeps two keys
that read alike (`a:b`, `a/b`) apart, so no key can name a path outside the directory. Files
are replaced atomically (a temporary file, fsync, rename): a crash leaves the old history or the
new one, never half of either.

History is the conversation without system messages (the agent's instructions are put in front
of it on every run, as the config says at that moment), trimmed to whole turns: a turn starts at
a user message, so a tool result is never kept without the assistant message that asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
import weakref
from pathlib import Path
from typing import Any, cast

from runrelay.agent.messages import ChatMessage
from runrelay.errors import SessionError, ValidationError

FORMAT_VERSION = 1
DEFAULT_MAX_HISTORY_MESSAGES = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_READABLE_CHARS = 48


def session_file_name(key: str) -> str:
    readable = _UNSAFE.sub("_", key)[:_READABLE_CHARS].strip("_") or "session"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}.json"


def trim_history(messages: list[ChatMessage], max_messages: int) -> list[ChatMessage]:
    """The last whole turns that fit in `max_messages` (at least the last turn, whatever its
    length), system messages left out."""
    kept = [m for m in messages if m.get("role") != "system"]
    starts = [i for i, m in enumerate(kept) if m.get("role") == "user"]
    for start in starts:
        if len(kept) - start <= max_messages:
            return kept[start:]
    return kept[starts[-1] :] if starts else []


class SessionStore:
    """History per session key under `directory`; one lock per key serialises its runs."""

    def __init__(
        self, directory: Path, *, max_messages: int = DEFAULT_MAX_HISTORY_MESSAGES
    ) -> None:
        if max_messages < 1:
            raise ValidationError(
                f"max_history_messages must be 1 or more (got {max_messages})",
                param="max_history_messages",
            )
        self.directory = directory
        self.max_messages = max_messages
        # A lock lives while someone holds it or waits for it, then goes away by itself.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def path(self, key: str) -> Path:
        if not isinstance(key, str) or not key:
            raise ValidationError(
                f"session_key must be a non-empty string (got {key!r})", param="session_key"
            )
        return self.directory / session_file_name(key)

    def lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def load(self, key: str) -> list[ChatMessage]:
        return await asyncio.to_thread(self._read, self.path(key))

    async def save(self, key: str, messages: list[ChatMessage]) -> None:
        document = {
            "version": FORMAT_VERSION,
            "session_key": key,
            "messages": trim_history(messages, self.max_messages),
        }
        await asyncio.to_thread(self._write, self.path(key), document)

    @staticmethod
    def _read(path: Path) -> list[ChatMessage]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise SessionError(f"session file {path} cannot be read: {exc}") from exc
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SessionError(
                f"session file {path} is not valid JSON ({exc}); move it away to start the "
                "session over"
            ) from exc
        messages = document.get("messages") if isinstance(document, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise SessionError(
                f"session file {path} has no `messages` list; move it away to start the "
                "session over"
            )
        # A list of JSON objects, as the loop wrote them: chat messages.
        return cast(list[ChatMessage], messages)

    @staticmethod
    def _write(path: Path, document: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(document, file, ensure_ascii=False, default=str)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
