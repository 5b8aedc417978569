"""`runrelay.server.json_codec`: orjson where it gives what the standard library (or kombu's
decoder) gives, and those where it would not."""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from runrelay.server import json_codec

VALUES: list[Any] = [
    {"a": 1, "b": [1.5, None, True, "ü €"], "nested": {"x": {"y": []}}},
    {"big": 2**70, "small": -(2**70)},  # beyond orjson's 64 bits
    [2**64 - 1, -(2**63)],
    {1: "int key", None: "null key"},  # json.dumps makes them strings
    "emoji 🎉 and \u2028",
    [],
    0.1,
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_then_loads_gives_what_the_standard_library_gives(value: Any) -> None:
    encoded = json_codec.dumps(value)
    assert json.loads(encoded) == json.loads(json.dumps(value))
    assert json_codec.loads(encoded) == json.loads(json.dumps(value))
    assert json_codec.loads(memoryview(encoded)) == json.loads(json.dumps(value))


def test_what_orjson_cannot_read_is_read_by_the_standard_library() -> None:
    assert json_codec.loads('{"n": NaN}')["n"] != json_codec.loads('{"n": NaN}')["n"]
    assert json_codec.loads(b'"\\ud800"') == "\ud800"  # a lone surrogate


def test_a_type_json_has_no_form_for_raises_type_error_as_json_dumps_does() -> None:
    with pytest.raises(TypeError):
        json.dumps({"d": Decimal("1.5")})
    with pytest.raises(TypeError):
        json_codec.dumps({"d": Decimal("1.5")})
    with pytest.raises(TypeError):
        json_codec.dumps({"big": 2**70, "d": Decimal("1.5")})
    with pytest.raises(TypeError):
        json_codec.dumps({"at": dt.datetime(2026, 12, 4, tzinfo=dt.UTC)})
    assert json.loads(json_codec.dumps({"inf": math.inf})) == {"inf": None}  # valid JSON


def test_a_broker_message_decodes_as_kombus_decoder_decodes_it() -> None:
    """kombu writes datetimes, UUIDs and decimals as tagged objects, which its decoder turns
    back into those types: such a message still goes to kombu."""
    tagged = {
        "when": dt.datetime(2026, 12, 4, 12, 30, tzinfo=dt.UTC),
        "id": uuid.UUID(int=7),
        "amount": Decimal("1.25"),
        "plain": ["a", 1],
    }
    plain = {"args": ["run-1", {"tenant_id": "t"}], "kwargs": {}, "embed": {"chain": None}}
    for message in (tagged, plain):
        encoded = kombu_dumps(message)
        assert json_codec.kombu_message_loads(encoded) == kombu_loads(encoded) == message
        assert json_codec.kombu_message_loads(encoded.encode()) == message
        assert json_codec.kombu_message_loads(memoryview(encoded.encode())) == message


def test_an_integer_beyond_64_bits_stays_exact() -> None:
    """orjson reads one as a float; such a document is read by `json`."""
    big = '{"id": 123456789012345678901234567890, "u64": 18446744073709551615}'
    assert json_codec.loads(big) == json.loads(big)
    assert json_codec.loads(big.encode())["id"] == 123456789012345678901234567890
    message = kombu_dumps({"args": [2**80]})
    assert json_codec.kombu_message_loads(message) == {"args": [2**80]}
