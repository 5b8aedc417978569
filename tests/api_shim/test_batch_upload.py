"""Reading a JSONL upload as a stream: lines split across chunks, blank lines, a last line
without a newline, and the line and byte limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from api_shim import batch_upload
from api_shim.batch_upload import jsonl_lines
from api_shim.errors import HTTPProblem


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _read(*parts: bytes, max_bytes: int = 1000, max_lines: int = 10) -> list[tuple[int, bytes]]:
    async def collect() -> list[tuple[int, bytes]]:
        lines = jsonl_lines(_chunks(*parts), max_bytes=max_bytes, max_lines=max_lines)
        return [line async for chunk in lines for line in chunk]

    return asyncio.run(collect())


def test_lines_are_numbered_across_chunks_and_blank_lines_are_skipped() -> None:
    assert _read(b'{"a"', b': 1}\n\n{"b": 2}\r\n', b'{"c": 3}') == [
        (1, b'{"a": 1}'),
        (3, b'{"b": 2}\r'),
        (4, b'{"c": 3}'),
    ]


@pytest.mark.parametrize(
    ("parts", "code"),
    [((b"{}\n" * 11,), "too_many_lines"), ((b"{}\n" * 5, b"x" * 990), "body_too_large")],
)
def test_past_a_limit_the_upload_is_a_413(parts: tuple[bytes, ...], code: str) -> None:
    with pytest.raises(HTTPProblem) as refused:
        _read(*parts)
    assert (refused.value.status, refused.value.code) == (413, code)


def test_a_line_longer_than_its_bound_is_a_413_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_upload, "MAX_LINE_BYTES", 100)
    with pytest.raises(HTTPProblem) as refused:
        _read(b"{}\n{}\n", b"x" * 60, b"y" * 60)
    assert (refused.value.code, str(refused.value)) == (
        "line_too_long",
        "line 3 is longer than 100 bytes",
    )
