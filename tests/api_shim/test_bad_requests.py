"""Bad input gets a clear 4xx that names the field and the rule, and creates nothing."""

from __future__ import annotations

import httpx
import pytest

OK = {"agent": "bank credit-analyst", "message": "hi"}


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"agent": "no-such-agent", "message": "hi"}, 404, "agent", "no-such-agent"),
        ({"agent": "bank credit-analys", "message": "hi"}, 404, "agent", "did you mean"),
        ({"agent_id": "bank.nope", "message": "hi"}, 404, "agent_id", "bank.nope"),
        (
            {"agent_id": "bank.credit-risk-analyst", "revision": 7, "message": "hi"},
            404,
            "revision",
            "7",
        ),
        ({"tag": "staging", "message": "hi"}, 404, "tag", "staging"),
        ({**OK, "model_params": {"temperature": 3}}, 422, "model_params.temperature", "2"),
        ({**OK, "model_params": {"temperature": -0.1}}, 422, "model_params.temperature", "0"),
        (
            {**OK, "model_params": {"max_tokens": 0}},
            422,
            "model_params.max_tokens",
            "greater than 0",
        ),
        ({**OK, "agent_id": "bank.credit-risk-analyst"}, 422, None, "exactly one of"),
        ({"message": "hi"}, 422, None, "exactly one of"),
        ({"agent": "slow-analyst"}, 422, None, "`message`"),
        ({**OK, "message": "   "}, 422, "message", "empty"),
        ({**OK, "tag": "Prod!"}, 422, "tag", "^[a-z0-9]"),
        ({**OK, "input": "not an object"}, 422, "input", "dictionary"),
        ({**OK, "colour": "blue"}, 422, "colour", "not a known field"),
        ({**OK, "webhook": "ftp://x"}, 422, "webhook.url", "pattern"),
    ],
)
def test_bad_body_is_4xx_naming_the_field(
    client: httpx.Client, body: dict, status: int, param: str | None, words: str
) -> None:
    before = client.get("/v1/runs").json()["data"]
    response = client.post("/v1/runs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert client.get("/v1/runs").json()["data"] == before, "a refused request creates nothing"


def test_body_that_is_not_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/runs", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_json_nested_100_000_deep_is_400_invalid_json(client: httpx.Client) -> None:
    body = b'{"agent": "slow-analyst", "message": "hi", "input": ' + b"[" * 100_000 + b"]" * 100_000
    response = client.post(
        "/v1/runs", content=body + b"}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("source", ["after", "Last-Event-ID"])
def test_5000_digit_cursor_is_400(client: httpx.Client, source: str) -> None:
    run = client.post("/v1/runs", json=OK).json()
    cursor = "9" * 5000
    params = {"after": cursor} if source == "after" else {}
    headers = {"Last-Event-ID": cursor} if source != "after" else {}
    response = client.get(f"/v1/runs/{run['id']}/events", params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_cursor"
    assert response.json()["error"]["param"] == source


def test_20_mib_body_is_413(client: httpx.Client) -> None:
    big = {**OK, "metadata": {"blob": "x" * (20 * 1024 * 1024)}}
    response = client.post("/v1/runs", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_20_mib_body_without_content_length_is_413(client: httpx.Client) -> None:
    def chunks():
        yield b'{"agent": "slow-analyst", "message": "'
        for _ in range(20):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = client.post(
        "/v1/runs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer rr_sk_not-a-real-key"}, "invalid_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key"),
        ({"Authorization": "Bearer"}, "invalid_api_key"),
    ],
)
def test_missing_or_invalid_key_is_401(api: str, headers: dict, code: str) -> None:
    for method, path in (("POST", "/v1/runs"), ("GET", "/v1/runs"), ("GET", "/v1/agents")):
        response = httpx.request(method, f"{api}{path}", json=OK, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == code


def test_bad_query_parameters_are_422_naming_them(client: httpx.Client) -> None:
    response = client.get("/v1/runs", params={"limit": 0})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "limit"


@pytest.mark.parametrize(
    ("content", "param_words"),
    [
        ('{"agent": "slow-analyst", "message": "a\\u0000b"}', "NUL"),
        ('{"agent": "slow-analyst", "input": {"x": [1, NaN]}}', "input.x[1] must be a finite"),
        ('{"agent": "slow-analyst", "message": "m", "metadata": {"k": Infinity}}', "finite"),
        ('{"agent": "slow-analyst", "message": "m", "model_params": {"max_tokens": 1e30}}', "max"),
        (
            '{"agent": "slow-analyst", "message": "m", "model_params": {"max_tokens": '
            "1000000000000000000}}",
            "10000000",
        ),
    ],
)
def test_values_the_database_cannot_store_are_422_not_500(
    client: httpx.Client, content: str, param_words: str
) -> None:
    response = client.post(
        "/v1/runs", content=content.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert param_words in response.json()["error"]["message"]


def test_junk_in_paths_cursors_and_filters_is_a_clear_4xx(client: httpx.Client) -> None:
    run = client.post("/v1/runs", json=OK).json()
    for cursor in ("²", str(2**64)):
        response = client.get(f"/v1/runs/{run['id']}/events", params={"after": cursor})
        assert response.status_code == 400, cursor
    assert client.get("/v1/runs/run_%00x").status_code == 404
    assert client.get("/v1/runs/run_%00x/events").status_code == 404
    assert client.get("/v1/runs", params={"status": "a\x00b"}).status_code == 422
