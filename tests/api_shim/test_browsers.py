"""Browsers as clients (issue 14): CORS, run-scoped stream tokens, `Last-Event-ID` over `?after`,
204 after `done`, offline /docs and the bearer scheme in OpenAPI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from redis.asyncio import Redis

from runrelay.server.keys import RedisKeys
from runrelay.server.settings import Settings
from runrelay.server.store import KEY_CACHE_S, Store
from runrelay.server.stream_tokens import StreamTokens
from runrelay.server.tenants import revoke_key
from tests.conftest import ServerThread, TenantKey
from tests.sse import assert_complete_log, read_events, wait_finished

ANALYST = {"agent": "bank credit-analyst", "input": {"company": "ACME Corp"}}
PAGE = "http://console.example:8080"


@pytest.fixture(scope="module")
def cors_api(settings: Settings, api: str) -> Iterator[str]:
    """A second shim (beside the session's, on the same Redis and database) that allows PAGE."""
    from api_shim.app import create_app

    server = ServerThread(create_app(settings.model_copy(update={"cors_origins": [PAGE]})))
    server.start()
    yield server.base_url
    server.stop()


def test_cors_origins_from_the_environment_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNRELAY_CORS_ORIGINS", "http://a.example, http://b.example:3000/")
    assert Settings().cors_origins == ["http://a.example", "http://b.example:3000"]
    monkeypatch.delenv("RUNRELAY_CORS_ORIGINS")
    assert Settings().cors_origins == [], "no origin is allowed by default"


def test_preflight_from_an_allowed_origin_is_answered(cors_api: str) -> None:
    response = httpx.options(
        f"{cors_api}/v1/runs",
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_responses_to_an_allowed_origin_expose_request_id_and_cursor(
    cors_api: str, tenant: TenantKey
) -> None:
    response = httpx.get(f"{cors_api}/v1/runs", headers={**tenant.headers, "Origin": PAGE})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "last-event-id" in exposed


def test_other_origins_and_the_default_deployment_get_no_cors_headers(
    cors_api: str, api: str
) -> None:
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    refused = httpx.options(f"{cors_api}/v1/runs", headers=preflight)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    default = httpx.get(f"{api}/healthz", headers={"Origin": PAGE})
    assert "access-control-allow-origin" not in default.headers


def test_create_response_has_a_stream_url_that_needs_no_api_key(
    client: httpx.Client, api: str
) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    assert run["stream_url"].startswith(f"/v1/runs/{run['id']}/events?token=")
    with httpx.Client(base_url=api, timeout=30) as anonymous:
        events = read_events(anonymous, "GET", run["stream_url"])
    assert_complete_log(events)
    assert all(e["run_id"] == run["id"] for e in events)


def test_stream_token_endpoint_gives_a_token_for_one_run(
    client: httpx.Client, api: str
) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    wait_finished(client, run["id"])
    issued = client.post(f"/v1/runs/{run['id']}/stream_token")
    assert issued.status_code == 200
    body = issued.json()
    assert body["run_id"] == run["id"]
    assert body["stream_url"] == f"/v1/runs/{run['id']}/events?token={body['token']}"
    assert body["expires_at"] > run["created_at"]
    with httpx.Client(base_url=api, timeout=30) as anonymous:
        events = read_events(anonymous, "GET", body["stream_url"])
        assert_complete_log(events)
        # Read-only and scoped: the token opens nothing else.
        token = {"token": body["token"]}
        assert anonymous.get(f"/v1/runs/{run['id']}", params=token).status_code == 401
        assert anonymous.get("/v1/runs", params=token).status_code == 401


def test_a_token_for_another_run_is_a_404_that_says_so(client: httpx.Client, api: str) -> None:
    first = client.post("/v1/runs", json=ANALYST).json()
    second = client.post("/v1/runs", json=ANALYST).json()
    token = first["stream_url"].partition("token=")[2]
    response = httpx.get(f"{api}/v1/runs/{second['id']}/events", params={"token": token})
    assert response.status_code == 404
    assert first["id"] in response.json()["error"]["message"]


def test_another_tenants_run_with_own_token_is_a_404(
    client: httpx.Client, store: Store, api: str
) -> None:
    other = store.create_tenant("t-other-" + str(time.monotonic_ns()))
    other_key = store.create_api_key(other.id)
    mine = client.post("/v1/runs", json=ANALYST).json()
    response = httpx.post(
        f"{api}/v1/runs/{mine['id']}/stream_token",
        headers={"Authorization": f"Bearer {other_key}"},
    )
    assert response.status_code == 404


def test_expired_and_forged_tokens_are_401s_that_say_so(
    client: httpx.Client, api: str, settings: Settings
) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()

    async def expired_token() -> str:
        redis = Redis.from_url(settings.redis_url)
        tokens = StreamTokens(settings, redis, RedisKeys(settings.redis_prefix))
        token, _ = await tokens.issue(
            run_id=run["id"], tenant_id=run["tenant_id"], key_id="key_x", now=time.time() - 3600
        )
        await redis.aclose()
        return token

    url = f"{api}/v1/runs/{run['id']}/events"
    expired = httpx.get(url, params={"token": asyncio.run(expired_token())})
    assert expired.status_code == 401
    error = expired.json()["error"]
    assert error["code"] == "stream_token_expired" and "expired" in error["message"]
    assert f"/v1/runs/{run['id']}/stream_token" in error["message"]

    good = run["stream_url"].partition("token=")[2]
    version, payload, signature = good.split(".")
    forged = f"{version}.{payload}.{signature[:-2]}AA"
    response = httpx.get(url, params={"token": forged})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_stream_token"
    assert httpx.get(url, params={"token": "nonsense"}).status_code == 401


def test_an_api_key_in_the_url_is_not_accepted(
    client: httpx.Client, tenant: TenantKey, api: str
) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    response = httpx.get(f"{api}/v1/runs/{run['id']}/events", params={"api_key": tenant.key})
    assert response.status_code == 401


def test_a_revoked_keys_tokens_stop_working(store: Store, api: str) -> None:
    tenant = store.create_tenant(f"t-revoke-{time.monotonic_ns()}")
    key = store.create_api_key(tenant.id)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        run = client.post("/v1/runs", json=ANALYST).json()
        wait_finished(client, run["id"])
    with httpx.Client(base_url=api, timeout=30) as anonymous:
        assert_complete_log(read_events(anonymous, "GET", run["stream_url"]))
        revoke_key(store, key[:12])
        # The API process trusts its answer about the key for KEY_CACHE_S (another process).
        deadline = time.monotonic() + 10 * KEY_CACHE_S
        while (response := anonymous.get(run["stream_url"])).status_code == 200:
            assert time.monotonic() < deadline, "the revoked key's token still works"
            time.sleep(0.05)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "stream_token_revoked"


def test_last_event_id_wins_over_after(client: httpx.Client) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    wait_finished(client, run["id"])
    everything = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    # A page that opened `?after=3` and reconnects with the browser's `Last-Event-ID: 8`.
    rest = read_events(
        client,
        "GET",
        f"/v1/runs/{run['id']}/events",
        params={"after": 3},
        headers={"Last-Event-ID": "8"},
    )
    assert rest == everything[8:]


def test_reconnect_after_done_is_204(client: httpx.Client, api: str) -> None:
    run = client.post("/v1/runs", json=ANALYST).json()
    wait_finished(client, run["id"])
    events = read_events(client, "GET", f"/v1/runs/{run['id']}/events")
    done = events[-1]["seq"]
    again = client.get(f"/v1/runs/{run['id']}/events", headers={"Last-Event-ID": str(done)})
    assert again.status_code == 204
    assert again.content == b""
    with_token = httpx.get(
        f"{api}{run['stream_url']}", headers={"Last-Event-ID": str(done)}
    )
    assert with_token.status_code == 204


def test_docs_work_offline(api: str) -> None:
    page = httpx.get(f"{api}/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        served = httpx.get(f"{api}/static-offline-docs/{asset}")
        assert served.status_code == 200 and len(served.content) > 10_000
    redoc = httpx.get(f"{api}/redoc")
    assert redoc.status_code == 200 and "https://" not in redoc.text


def test_openapi_declares_the_bearer_scheme(api: str) -> None:
    spec = httpx.get(f"{api}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s == {"type": "http", "scheme": "bearer", **s} for s in schemes.values())
    (name,) = schemes
    create = spec["paths"]["/v1/runs"]["post"]
    assert {name: []} in create["security"]
    assert not any(p["name"].lower() == "authorization" for p in create.get("parameters", []))
    assert "/v1/runs/{run_id}/stream_token" in spec["paths"]
