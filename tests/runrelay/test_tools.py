"""Function tools: the schema the model sees, argument validation, threads, timeouts, imports."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from runrelay.agent.tools import Tool, ToolError, import_tool, tool, tool_from_function
from runrelay.demo import tools as demo_tools


@tool(description="Convert an amount between currencies.", timeout_s=5, max_invocations=3)
def convert(
    amount: Annotated[float, Field(description="how much to convert", gt=0)],
    currency: Annotated[str, Field(description="ISO 4217 code", min_length=3, max_length=3)],
    rounding: int = 2,
) -> float:
    return round(amount * 1.1, rounding)


@tool
def greet(name: str) -> str:
    """Greet someone by name.

    The second paragraph is not part of the description.
    """
    return f"Hello, {name}!"


def untyped(value, flag=False):  # type: ignore[no-untyped-def]
    return [value, flag]


def invoke(t: Tool, arguments: str | dict[str, Any]) -> Any:
    return asyncio.run(t.invoke(arguments))


def test_schema_comes_from_the_signature_with_field_descriptions() -> None:
    schema = convert.schema()

    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "convert"
    assert function["description"] == "Convert an amount between currencies."
    parameters = function["parameters"]
    assert parameters["type"] == "object"
    assert parameters["required"] == ["amount", "currency"]
    assert parameters["additionalProperties"] is False
    properties = parameters["properties"]
    assert properties["amount"]["type"] == "number"
    assert properties["amount"]["description"] == "how much to convert"
    assert properties["amount"]["exclusiveMinimum"] == 0
    assert properties["currency"]["description"] == "ISO 4217 code"
    assert properties["rounding"] == {"default": 2, "title": "Rounding", "type": "integer"}


def test_decorator_options_are_kept_on_the_tool() -> None:
    assert (convert.timeout_s, convert.max_invocations, convert.approval_mode) == (
        5,
        3,
        "never_require",
    )
    approved = tool(approval_mode="always_require")(untyped)
    assert approved.approval_mode == "always_require"
    assert approved.name == "untyped"


def test_bare_decorator_takes_name_and_first_docstring_paragraph() -> None:
    assert isinstance(greet, Tool)
    assert greet.name == "greet"
    assert greet.description == "Greet someone by name."


def test_each_schema_is_a_copy_a_caller_may_change() -> None:
    """A middleware may edit the tools it is given: the next call gets the schema unchanged.
    Parameters JSON would not give back equal (a tuple, a date) are copied as they are."""
    first = convert.schema()
    first["function"]["parameters"]["properties"].clear()
    first["function"]["name"] = "changed"
    again = convert.schema()
    assert again["function"]["name"] == "convert"
    assert set(again["function"]["parameters"]["properties"]) >= {"amount", "currency"}

    odd = {"type": "object", "enum_of": ("a", "b"), "since": dt.date(2026, 1, 1)}
    raw = Tool("odd", "Odd parameters.", lambda: None, BaseModel, parameters=odd)
    copied = raw.schema()["function"]["parameters"]
    assert copied == odd and copied["enum_of"] == ("a", "b")
    copied["since"] = None
    assert raw.schema()["function"]["parameters"]["since"] == dt.date(2026, 1, 1)


def test_name_and_description_can_be_overridden() -> None:
    renamed = tool_from_function(untyped, name="store_value", description="Keep a value.")

    assert renamed.schema()["function"]["name"] == "store_value"
    assert renamed.schema()["function"]["description"] == "Keep a value."


def test_unannotated_parameters_accept_any_json() -> None:
    t = tool_from_function(untyped)

    assert t.schema()["function"]["parameters"]["required"] == ["value"]
    assert invoke(t, {"value": {"nested": [1, 2]}}) == [{"nested": [1, 2]}, False]


def test_star_args_are_refused_because_they_have_no_schema() -> None:
    def variadic(*values: int) -> int:
        return sum(values)

    with pytest.raises(TypeError, match="variadic"):
        tool_from_function(variadic)


def test_invoke_validates_and_coerces_json_arguments() -> None:
    assert invoke(convert, '{"amount": 10, "currency": "EUR"}') == 11.0
    assert invoke(convert, {"amount": "10", "currency": "EUR", "rounding": 0}) == 11.0


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"amount": 10', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"currency": "EUR"}', "amount: Field required"),
        ('{"amount": -1, "currency": "EUR"}', "amount: Input should be greater than 0"),
        ('{"amount": 1, "currency": "EURO"}', "currency:"),
        ('{"amount": 1, "currency": "EUR", "fee": 3}', "fee: Extra inputs are not permitted"),
    ],
)
def test_bad_arguments_become_a_tool_error_naming_the_problem(
    arguments: str, expected: str
) -> None:
    with pytest.raises(ToolError, match="convert") as caught:
        invoke(convert, arguments)

    assert expected in str(caught.value)


def test_empty_arguments_mean_no_arguments() -> None:
    def ping() -> str:
        return "pong"

    assert invoke(tool_from_function(ping), "") == "pong"


def test_sync_tools_run_in_a_worker_thread() -> None:
    """A blocking tool must not block the event loop that other runs share."""

    def blocking() -> str:
        time.sleep(0.1)
        return threading.current_thread().name

    async def scenario() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            thread_name = await tool_from_function(blocking).invoke({})
        finally:
            task.cancel()
        return thread_name, ticks

    thread_name, ticks = asyncio.run(scenario())

    assert thread_name != threading.main_thread().name
    assert ticks >= 3


def test_async_tools_are_awaited_on_the_event_loop() -> None:
    async def lookup(key: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"key": key, "thread": threading.current_thread().name}

    assert invoke(tool_from_function(lookup), {"key": "k"}) == {
        "key": "k",
        "thread": threading.main_thread().name,
    }


def test_slow_async_tool_times_out_with_a_tool_error() -> None:
    async def slow() -> None:
        await asyncio.sleep(5)

    started = time.monotonic()
    with pytest.raises(ToolError, match=r"slow timed out after 0\.05 s"):
        invoke(tool_from_function(slow, timeout_s=0.05), {})
    assert time.monotonic() - started < 2


def test_slow_sync_tool_times_out_with_a_tool_error() -> None:
    def slow() -> None:
        time.sleep(0.3)

    with pytest.raises(ToolError, match=r"slow timed out after 0\.05 s"):
        invoke(tool_from_function(slow, timeout_s=0.05), {})


def test_tool_exceptions_become_tool_errors_with_type_and_message() -> None:
    def broken(x: int) -> int:
        raise KeyError(f"no row {x}")

    with pytest.raises(ToolError) as caught:
        invoke(tool_from_function(broken), {"x": 4})

    assert str(caught.value) == "broken failed: KeyError: 'no row 4'"


def test_a_tool_error_raised_by_the_tool_passes_through_unchanged() -> None:
    def picky() -> None:
        raise ToolError("ask for a company name first")

    with pytest.raises(ToolError) as caught:
        invoke(tool_from_function(picky), {})

    assert str(caught.value) == "ask for a company name first"


def test_a_timeout_error_from_a_tool_without_timeout_is_a_tool_error() -> None:
    """E.g. a socket timeout inside the tool: the model should hear about it, not the run crash."""

    def upstream() -> None:
        raise TimeoutError("upstream did not answer")

    with pytest.raises(ToolError, match="upstream"):
        invoke(tool_from_function(upstream), {})


def test_import_tool_loads_a_decorated_tool() -> None:
    loaded = import_tool("runrelay.demo.tools:lookup_credit_score")

    assert loaded is demo_tools.lookup_credit_score
    result = invoke(loaded, {"company": "ACME Corp"})
    assert result["company"] == "ACME Corp" and 300 <= result["score"] <= 850


def test_import_tool_wraps_a_plain_function() -> None:
    loaded = import_tool("textwrap:dedent")

    assert isinstance(loaded, Tool) and loaded.name == "dedent"
    assert invoke(loaded, {"text": "  a\n  b"}) == "a\nb"


def test_import_tool_needs_module_colon_function() -> None:
    with pytest.raises(ValueError, match=r"package\.module:function"):
        import_tool("runrelay.demo.tools.lookup_credit_score")


RAW_SCHEMA = {
    "title": "addArguments",
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}


async def _echo(**arguments: Any) -> dict[str, Any]:
    return arguments


def _raw_tool() -> Tool:
    return Tool(
        name="add", description="Add.", fn=_echo, args_model=BaseModel, parameters=RAW_SCHEMA
    )


def test_a_raw_schema_is_what_the_model_sees() -> None:
    """MCP tools bring their own JSON schema; the model sees it without the title."""
    parameters = _raw_tool().schema()["function"]["parameters"]

    assert parameters == {k: v for k, v in RAW_SCHEMA.items() if k != "title"}
    assert RAW_SCHEMA["title"] == "addArguments", "the tool's schema is left as it was"


def test_a_raw_schema_tool_gets_the_arguments_unvalidated_but_as_an_object() -> None:
    raw = _raw_tool()

    assert invoke(raw, '{"a": "not a number", "extra": [1]}') == {
        "a": "not a number",
        "extra": [1],
    }
    with pytest.raises(ToolError, match="add must be a JSON object"):
        invoke(raw, "[1, 2]")
