"""JSON for the database driver and the broker's messages, by orjson where it gives the same
values as the standard library, which it is ~5-10 times faster than.

A worker decodes each task's envelope and body and the JSON columns of each run it starts and
ends: the standard library's `json` was ~7% of a worker's CPU under load (bench/README.md).
"""

from __future__ import annotations

import json
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
    raw = data if isinstance(data, (str, bytes)) else bytes(data)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
    return json.loads(raw) if _maybe_big_int(value) else value


# orjson reads an integer beyond 64 bits (below -2**63 or from 2**64) as a float.
_BIG = 2.0**63


def _maybe_big_int(value: Any) -> bool:
    """Whether `value` holds a float that large: maybe an integer orjson did not keep exact.
    (A float that large in the text is then read by `json` too, to the same value.)"""
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


def dumps(value: Any) -> bytes:
    """`json.dumps(value)` as UTF-8, compact; what orjson refuses (an integer beyond 64 bits)
    goes to `json`. A type JSON has no form for (a datetime, a `Decimal`) raises `TypeError`,
    as `json.dumps` does; a UUID is written as its string, an `Enum` member as its value, and
    NaN and infinities as `null` (PostgreSQL refuses the `NaN` that `json.dumps` writes)."""
    try:
        return orjson.dumps(value, option=_DUMPS)
    except orjson.JSONEncodeError as exc:
        if not _has_big_int(value):
            raise TypeError(str(exc)) from exc
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _has_big_int(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return not -(2**63) <= value < 2**64
    if isinstance(value, dict):
        return any(_has_big_int(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_big_int(v) for v in value)
    return False


def kombu_message_loads(data: str | bytes | bytearray | memoryview) -> Any:
    """kombu's `loads` for a broker message (its envelope, or a task's body): a message with
    kombu's own tagged values (`{"__type__": "datetime", ...}`, which its decoder turns back
    into objects) goes to kombu, the others (all of runrelay's tasks) to orjson."""
    raw = data if isinstance(data, (str, bytes)) else bytes(data)
    tag = '"__type__"' if isinstance(raw, str) else b'"__type__"'
    if tag not in raw:  # type: ignore[operator]  # str in str, bytes in bytes
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if not _maybe_big_int(value):
                return value
    return kombu_loads(raw)  # type: ignore[no-untyped-call]
