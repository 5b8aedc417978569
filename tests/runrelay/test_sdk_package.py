"""The SDK as a package: what it exports, what it imports, how it is configured."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

import runrelay
from runrelay import Client, RateLimitError
from runrelay.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    InternalServerError,
    NetworkError,
    NotFoundError,
    status_error,
)

PUBLIC_API = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AgentErrorEvent",
    "AgentResolvedEvent",
    "AgentResponse",
    "AgentRunParams",
    "AgentRunResult",
    "AgentStreamEvent",
    "AgentToolCall",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletedEvent",
    "Client",
    "ConfigError",
    "ConflictError",
    "CustomEvent",
    "EventStream",
    "InternalServerError",
    "InvokeResponse",
    "MissingCredentialsError",
    "ModelParams",
    "NetworkError",
    "NotFoundError",
    "OutputTextDeltaEvent",
    "PermissionDeniedError",
    "ProviderError",
    "ProviderUnreachableError",
    "RateLimitError",
    "RunList",
    "RunObject",
    "RunResult",
    "RunTimeoutError",
    "Runrelay",
    "RunrelayError",
    "ScheduleList",
    "ScheduleObject",
    "SessionError",
    "ShortcutDefinition",
    "ShortcutResolution",
    "StreamChunk",
    "SuggestionItem",
    "SuggestionsEvent",
    "ThreadMessageObject",
    "ThreadObject",
    "ToolCallDeltaEvent",
    "ToolCallResultEvent",
    "ToolUse",
    "UnprocessableEntityError",
    "Usage",
    "UsageInfo",
    "ValidationError",
    "WebhookDeliveryList",
    "WebhookDeliveryObject",
    "__version__",
]


def test_public_api_is_pinned() -> None:
    assert sorted(runrelay.__all__) == sorted(PUBLIC_API)
    for name in runrelay.__all__:
        assert hasattr(runrelay, name), name


def test_importing_the_sdk_and_the_cli_pulls_in_no_server_dependency() -> None:
    """`pip install runrelay` without extras must be enough for the SDK and the client commands."""
    code = (
        "import sys, json, runrelay, runrelay.cli._main\n"
        "from runrelay import Client, AsyncClient\n"
        "Client('rr_sk_x').close()\n"
        "server = ('redis', 'celery', 'kombu', 'sqlmodel', 'sqlalchemy', 'fastapi', 'starlette',"
        " 'uvicorn', 'alembic', 'yaml', 'pydantic_settings', 'mcp', 'mcp_types', 'httpx2',"
        " 'api_shim', 'worker')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in server)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_client_settings_come_from_arguments_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNRELAY_API_KEY", "rr_sk_from_env")
    monkeypatch.setenv("RUNRELAY_BASE_URL", "http://example.test:9000/")
    with Client() as client:
        assert client.base_url == "http://example.test:9000"
        assert client._options.api_key == "rr_sk_from_env"
    with Client("rr_sk_arg", base_url="http://other.test", max_retries=5) as client:
        assert client._options.api_key == "rr_sk_arg"
        assert client.base_url == "http://other.test"
        assert client.max_retries == 5
    monkeypatch.delenv("RUNRELAY_BASE_URL")
    with Client() as client:
        assert client.base_url == "http://127.0.0.1:8000"


def _response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://runrelay.test/v1/runs")
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_error_statuses_map_to_typed_errors() -> None:
    body = {
        "error": {
            "type": "rate_limit_error",
            "code": "concurrency_limit",
            "message": "too many concurrent runs",
            "request_id": "req_1",
        }
    }
    limited = status_error(_response(429, body, {"Retry-After": "7", "X-Request-ID": "req_1"}))
    assert isinstance(limited, RateLimitError) and isinstance(limited, APIStatusError)
    assert limited.retry_after == 7 and limited.status_code == 429
    assert limited.request_id == "req_1" and limited.code == "concurrency_limit"
    assert limited.body == body and "too many concurrent runs" in str(limited)
    assert isinstance(status_error(_response(404, {"error": {"message": "no"}})), NotFoundError)
    assert isinstance(status_error(_response(502, {})), InternalServerError)
    assert issubclass(APIConnectionError, NetworkError) and NetworkError is APIError
