"""Schedules and webhook delivery logs in the SDK against the real shim and worker: the whole
round trip (create, get, list, update, pause, resume, trigger, delete), sync and async; a bad
cron is a typed error naming the field; a create whose answer is lost is not sent twice."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from runrelay import (
    APIConnectionError,
    AsyncClient,
    Client,
    ConflictError,
    NotFoundError,
    RunObject,
    ScheduleList,
    ScheduleObject,
    UnprocessableEntityError,
    ValidationError,
    WebhookDeliveryList,
)
from runrelay.types import WebhookDeliveryObject
from tests.conftest import TenantKey
from tests.tcp_proxy import tcp_proxy

AGENT = "credit-risk-analyst"
# Daily: no tick falls due while a test runs (and the session runs no beat anyway).
CRON = "0 9 * * *"
ENDED = {"completed", "failed", "cancelled", "expired"}
T = TypeVar("T")


@pytest.fixture
def sdk(api: str, tenant: TenantKey) -> Iterator[Client]:
    with Client(tenant.key, base_url=api, max_retries=0) as client:
        yield client


def wait_ended(sdk: Client, run_id: str, timeout_s: float = 30) -> RunObject:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = sdk.runs.get(run_id)
        if run.status in ENDED:
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not end")


def test_schedule_round_trip(sdk: Client) -> None:
    start = datetime.now(UTC) + timedelta(days=2)
    created = sdk.schedules.create(
        AGENT,
        cron=CRON,
        timezone="America/New_York",
        start_at=start,
        message="daily report",
        metadata={"team": "risk"},
    )
    assert isinstance(created, ScheduleObject) and created.id.startswith("sch_")
    assert created.run == {"agent": AGENT, "message": "daily report", "metadata": {"team": "risk"}}
    assert created.overlap == "skip" and created.start_at == start
    assert created.next_run_at is not None and created.next_run_at >= start
    assert created.next_run_at.hour in (13, 14) and created.next_run_at.minute == 0  # 09:00 NY
    assert sdk.schedules.get(created.id) == created

    other = sdk.schedules.create(AGENT, cron="@weekly", message="weekly")
    page = sdk.schedules.list(limit=1)
    assert isinstance(page, ScheduleList) and [s.id for s in page.data] == [other.id]
    assert page.has_more and page.next_cursor is not None
    rest = sdk.schedules.list(limit=1, cursor=page.next_cursor)
    assert [s.id for s in rest.data] == [created.id]

    changed = sdk.schedules.update(
        created.id, cron="@hourly", message="hourly now", start_at=None, overlap="enqueue"
    )
    assert changed.cron == "@hourly" and changed.run["message"] == "hourly now"
    assert changed.start_at is None and changed.overlap == "enqueue"
    assert changed.next_run_at is not None and changed.next_run_at < created.next_run_at

    paused = sdk.schedules.pause(created.id)
    assert paused.paused and paused.next_run_at is None
    resumed = sdk.schedules.resume(created.id)
    assert not resumed.paused and resumed.next_run_at is not None

    run = sdk.schedules.trigger(created.id)
    assert run.schedule_id == created.id and run.scheduled_for is not None
    assert wait_ended(sdk, run.id).status == "completed"
    assert [r.id for r in sdk.runs.list(schedule_id=created.id).data] == [run.id]
    shown = sdk.schedules.get(created.id)
    assert shown.last_run_id == run.id and shown.last_status == "completed"

    assert sdk.schedules.delete(created.id) is None
    with pytest.raises(NotFoundError) as gone:
        sdk.schedules.get(created.id)
    assert gone.value.code == "schedule_not_found"
    assert sdk.runs.get(run.id).schedule_id == created.id  # its runs stay


def test_async_schedule_round_trip(api: str, tenant: TenantKey, sdk: Client) -> None:
    async def round_trip() -> tuple[str, str]:
        async with AsyncClient(tenant.key, base_url=api, max_retries=0) as client:
            created = await client.schedules.create(AGENT, cron=CRON, message="async report")
            assert await client.schedules.get(created.id) == created
            listed = await client.schedules.list()
            assert created.id in [s.id for s in listed.data]
            changed = await client.schedules.update(created.id, timezone="Asia/Tokyo")
            assert changed.timezone == "Asia/Tokyo" and changed.next_run_at is not None
            assert changed.next_run_at.hour == 0  # 09:00 in Tokyo is midnight UTC
            assert (await client.schedules.pause(created.id)).next_run_at is None
            assert (await client.schedules.resume(created.id)).next_run_at is not None
            run = await client.schedules.trigger(created.id)
            assert run.schedule_id == created.id
            return created.id, run.id

    schedule_id, run_id = asyncio.run(round_trip())
    assert wait_ended(sdk, run_id).status == "completed"

    async def delete() -> None:
        async with AsyncClient(tenant.key, base_url=api, max_retries=0) as client:
            await client.schedules.delete(schedule_id)
            with pytest.raises(NotFoundError):
                await client.schedules.get(schedule_id)

    asyncio.run(delete())


def test_bad_cron_and_time_zone_are_typed_errors_naming_the_field(sdk: Client) -> None:
    with pytest.raises(UnprocessableEntityError) as cron:
        sdk.schedules.create(AGENT, cron="61 * * * *", message="hi")
    assert cron.value.param == "cron" and "61 * * * *" in str(cron.value)
    created = sdk.schedules.create(AGENT, cron=CRON, message="hi")
    with pytest.raises(UnprocessableEntityError) as zone:
        sdk.schedules.update(created.id, timezone="Mars/Olympus")
    assert zone.value.param == "timezone" and "Mars/Olympus" in str(zone.value)
    with pytest.raises(ValidationError):
        sdk.schedules.update(created.id)  # nothing to change
    with pytest.raises(ValidationError):
        sdk.schedules.get(" ")


def test_trigger_while_the_last_run_is_active_is_a_conflict(sdk: Client) -> None:
    schedule = sdk.schedules.create("slow-analyst", cron=CRON, message="slowly")
    first = sdk.schedules.trigger(schedule.id)
    with pytest.raises(ConflictError) as skipped:
        sdk.schedules.trigger(schedule.id)
    assert skipped.value.code == "trigger_skipped" and first.id in str(skipped.value)
    sdk.runs.cancel(first.id)


def test_a_create_whose_answer_is_lost_is_not_sent_again(
    api: str, tenant: TenantKey, sdk: Client
) -> None:
    """Unlike a run create, a schedule create carries no idempotency key the server knows."""
    with tcp_proxy(api) as proxy, Client(tenant.key, base_url=proxy.base_url) as retrying:
        proxy.drop_responses(1)
        with pytest.raises(APIConnectionError):
            retrying.schedules.create(AGENT, cron=CRON, message="once")
    assert proxy.connections == 1
    assert len(sdk.schedules.list().data) == 1


def test_a_runs_webhook_deliveries_and_redeliver(sdk: Client) -> None:
    """Nothing listens on the target: each attempt is logged with its error, and redeliver
    sends the same delivery (same id) again."""
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    run = sdk.runs.create(AGENT, message="hi", webhook=f"http://127.0.0.1:{port}/hooks")
    wait_ended(sdk, run.id)

    def failed() -> WebhookDeliveryList | None:
        log = sdk.runs.webhooks(run.id)
        return log if log.data and log.data[0].status == "failed" else None

    log = wait_for(failed)
    assert isinstance(log, WebhookDeliveryList) and len(log.data) == 1
    delivery = log.data[0]
    assert delivery.event_type == "run.completed" and delivery.next_attempt_at is None
    assert len(delivery.attempts) > 1 and all(a.status_code is None for a in delivery.attempts)
    assert all(a.error for a in delivery.attempts)

    again = sdk.runs.redeliver_webhook(run.id, delivery.id)
    assert isinstance(again, WebhookDeliveryObject)
    assert again.id == delivery.id and again.status == "pending"
    wait_for(lambda: len(sdk.runs.webhooks(run.id).data[0].attempts) > len(delivery.attempts))
    with pytest.raises(NotFoundError) as missing:
        sdk.runs.redeliver_webhook(run.id, "msg_nope")
    assert missing.value.code == "delivery_not_found"


def wait_for(check: Callable[[], T], timeout_s: float = 30) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")
