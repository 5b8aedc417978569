"""Next-fire computation of schedules: aliases, time zones, and the DST rules the README states."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from runrelay.server import cron

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def local(moments: list[datetime], tz: ZoneInfo) -> list[str]:
    return [m.astimezone(tz).strftime("%Y-%m-%d %H:%M%z") for m in moments]


def test_every_minute_fires_on_each_minute_in_utc() -> None:
    start = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    fires = cron.fires_between("* * * * *", "UTC", start, datetime(2026, 1, 1, 12, 3, tzinfo=UTC))
    assert fires == [datetime(2026, 1, 1, 12, m, tzinfo=UTC) for m in (1, 2, 3)]


def test_next_fire_is_strictly_after_the_given_moment() -> None:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert cron.next_fire("0 * * * *", "UTC", at) == datetime(2026, 1, 1, 13, 0, tzinfo=UTC)


def test_daily_time_is_wall_clock_in_the_schedules_time_zone() -> None:
    at = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)
    # 09:00 in New York in July is 13:00 UTC (EDT, -4).
    assert cron.next_fire("0 9 * * *", "America/New_York", at) == datetime(
        2026, 7, 1, 13, 0, tzinfo=UTC
    )


def test_spring_forward_a_missing_0230_fires_once_at_0300() -> None:
    fires = cron.fires_between(
        "30 2 * * *",
        "Europe/Berlin",
        datetime(2025, 3, 28, 12, tzinfo=BERLIN),
        datetime(2025, 4, 1, 12, tzinfo=BERLIN),
    )
    assert local(fires, BERLIN) == [
        "2025-03-29 02:30+0100",
        "2025-03-30 03:00+0200",  # 02:30 does not exist that day
        "2025-03-31 02:30+0200",
        "2025-04-01 02:30+0200",
    ]


def test_fall_back_a_repeated_0130_fires_once_at_its_first_occurrence() -> None:
    fires = cron.fires_between(
        "30 1 * * *",
        "America/New_York",
        datetime(2025, 11, 1, 12, tzinfo=NEW_YORK),
        datetime(2025, 11, 3, 12, tzinfo=NEW_YORK),
    )
    assert local(fires, NEW_YORK) == ["2025-11-02 01:30-0400", "2025-11-03 01:30-0500"]


def test_fall_back_an_hourly_schedule_fires_in_both_repeated_hours() -> None:
    fires = cron.fires_between(
        "30 * * * *",
        "Europe/Berlin",
        datetime(2025, 10, 26, 1, 0, tzinfo=BERLIN),
        datetime(2025, 10, 26, 3, 45, tzinfo=ZoneInfo("Europe/Berlin")),
    )
    assert local(fires, BERLIN) == [
        "2025-10-26 01:30+0200",
        "2025-10-26 02:30+0200",
        "2025-10-26 02:30+0100",
        "2025-10-26 03:30+0100",
    ]


def test_spring_forward_hourly_skips_the_hour_that_does_not_exist() -> None:
    fires = cron.fires_between(
        "@hourly",
        "Europe/Berlin",
        datetime(2025, 3, 30, 0, 30, tzinfo=BERLIN),
        datetime(2025, 3, 30, 4, 0, tzinfo=BERLIN),
    )
    assert local(fires, BERLIN) == [
        "2025-03-30 01:00+0100",
        "2025-03-30 03:00+0200",
        "2025-03-30 04:00+0200",
    ]


@pytest.mark.parametrize("alias", ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"])
def test_aliases_are_valid(alias: str) -> None:
    cron.validate(alias, "UTC")


@pytest.mark.parametrize(
    ("expr", "field", "says"),
    [
        ("61 * * * *", "cron", "out of range"),
        ("* * * *", "cron", "5 fields"),
        ("*/5 * * * * *", "cron", "5 fields"),
        ("@fortnightly", "cron", "alias"),
        ("0 0 30 2 *", "cron", "failed to find next date"),
    ],
)
def test_bad_cron_names_the_field_and_the_parse_error(expr: str, field: str, says: str) -> None:
    with pytest.raises(cron.CronError) as caught:
        cron.validate(expr, "UTC")
    assert caught.value.field == field
    assert says in str(caught.value)


def test_bad_time_zone_names_the_timezone_field() -> None:
    with pytest.raises(cron.CronError) as caught:
        cron.validate("* * * * *", "Mars/Olympus")
    assert caught.value.field == "timezone"
    assert "Mars/Olympus" in str(caught.value)


def test_seconds_field_only_when_allowed() -> None:
    cron.validate("*/2 * * * * *", "UTC", allow_seconds=True)
    at = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert cron.next_fire("*/2 * * * * *", "UTC", at) == datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)
