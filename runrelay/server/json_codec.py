"""JSON for the database driver and the broker's messages, by orjson where it gives the same
values as the standard library, which it is ~5-10 times faster than.

A worker decodes each task's envelope and body and the JSON columns of each run it starts and
ends: the standard library's `json` was ~7% of a worker's CPU under load (bench/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
from kombu.utils.json import loads as kombu_loads

# As `json.dumps`: keys that are not strings written as strings (`{1: ...}` as `{"1": ...}`),
# and datetimes and dataclasses refused (orjson has formats of its own for them).
_DUMPS = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """`json.loads`; what orjson refuses (NaN, a lone surrogate) or reads otherwise (an
    integer beyond 64 bits, as a float) is read by `json`."""
    return _orjson_or(json.loads, _raw(data))


def kombu_message_loads(data: str | bytes | bytearray | memoryview) -> Any:
    """kombu's `loads` for a broker message (its envelope, or a task's body): a message with
    kombu's own tagged values (`{"__type__": "datetime", ...}`, which its decoder turns back
    into objects) goes to kombu, the others (all of runrelay's tasks) to orjson."""
    raw = _raw(data)
    tag = '"__type__"' if isinstance(raw, str) else b'"__type__"'
    if tag in raw:  # type: ignore[operator]  # str in str, bytes in bytes
        return kombu_loads(raw)  # type: ignore[no-untyped-call]
    return _orjson_or(kombu_loads, raw)


def dumps(value: Any) -> bytes:
    """`json.dumps(value)` as UTF-8, compact. What orjson refuses goes to `json.dumps` as
    psycopg called it (an integer beyond 64 bits is written; a datetime or a `Decimal` raises
    `TypeError`). A UUID is written as its string, an `Enum` member as its value, and NaN and
    infinities as `null` (PostgreSQL refuses the `NaN` that `json.dumps` writes)."""
    try:
        return orjson.dumps(value, option=_DUMPS)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()


def _raw(data: str | bytes | bytearray | memoryview) -> str | bytes:
    return data if isinstance(data, (str, bytes)) else bytes(data)


def _orjson_or(fallback: Callable[[Any], Any], raw: str | bytes) -> Any:
    """`raw` decoded by orjson, or by `fallback` where orjson refuses it or may not have kept
    an integer exact."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return fallback(raw)
    return fallback(raw) if _maybe_big_int(value) else value


# orjson reads an integer beyond 64 bits (below -2**63 or from 2**64) as a float.
_BIG = 2.0**63


def _maybe_big_int(value: Any) -> bool:
    """Whether `value` holds a float that large: maybe an integer orjson did not keep exact.
    (A float that large in the text is then read by the fallback too, to the same value.)"""
    todo = [value]
    while todo:
        item = todo.pop()
        kind = type(item)
        if kind is dict:
            todo.extend(item.values())
        elif kind is list:
            todo.extend(item)
        elif kind is float and not -_BIG < item < _BIG:
            return True
    return False
