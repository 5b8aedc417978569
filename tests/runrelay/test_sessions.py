"""Embedded session history files: where they go, how they are written, what is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runrelay.embedded._sessions import SessionStore, session_file_name, trim_history
from runrelay.errors import SessionError, ValidationError


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def tool_turn(n: int) -> list[dict[str, Any]]:
    """A user message, a tool call and its result, and the answer: four messages."""
    call = {"id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    return [
        user(f"q{n}"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{n}", "content": "1"},
        assistant(f"a{n}"),
    ]


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "/abs/path", "..", ".", "a\x00b", "C:\\Windows", "sdk:review"]
)
def test_any_session_key_names_a_file_inside_the_sessions_directory(
    tmp_path: Path, key: str
) -> None:
    store = SessionStore(tmp_path / "sessions")
    asyncio.run(store.save(key, [user("hi"), assistant("hello")]))

    (written,) = (tmp_path / "sessions").iterdir()
    assert written.parent == tmp_path / "sessions"
    assert written == store.path(key)
    assert asyncio.run(store.load(key)) == [user("hi"), assistant("hello")]


def test_keys_that_read_alike_get_different_files() -> None:
    names = {session_file_name(key) for key in ("a:b", "a/b", "a_b", "a b")}
    assert len(names) == 4
    assert all(name.startswith("a_b-") for name in names)


def test_an_empty_session_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="session_key must be a non-empty string"):
        SessionStore(tmp_path).path("")


def test_saving_replaces_the_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    asyncio.run(store.save("k", [user("one"), assistant("1")]))
    asyncio.run(store.save("k", [user("one"), assistant("1"), user("two"), assistant("2")]))

    assert [p.name for p in tmp_path.iterdir()] == [session_file_name("k")]
    assert len(asyncio.run(store.load("k"))) == 4


def test_an_unknown_session_has_no_history(tmp_path: Path) -> None:
    assert asyncio.run(SessionStore(tmp_path / "missing").load("new")) == []


def test_a_corrupt_history_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    store.path("k").write_text("{not json")

    with pytest.raises(SessionError, match=session_file_name("k")):
        asyncio.run(store.load("k"))


def test_trimming_keeps_whole_turns_and_drops_system_messages() -> None:
    history = [
        {"role": "system", "content": "nudge"},
        *tool_turn(1),
        *tool_turn(2),
        user("q3"),
        assistant("a3"),
    ]

    assert trim_history(history, 100) == history[1:]
    # 6 fits turn 2 (4) and turn 3 (2); a tool result never loses its assistant message.
    assert trim_history(history, 6) == [*tool_turn(2), user("q3"), assistant("a3")]
    assert trim_history(history, 5) == [user("q3"), assistant("a3")]
    # The last turn is kept whole even when it alone is longer than the limit.
    assert trim_history(tool_turn(9), 2) == tool_turn(9)


def test_saved_history_is_trimmed_to_the_limit(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, max_messages=4)
    asyncio.run(store.save("k", [*tool_turn(1), user("q2"), assistant("a2")]))

    assert asyncio.run(store.load("k")) == [user("q2"), assistant("a2")]
