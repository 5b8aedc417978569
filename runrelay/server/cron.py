"""Cron arithmetic for schedules: parse and validate an expression and a time zone, and compute
the next fire time after a moment. The arithmetic is croniter's; this module adds the rules a
user reads in the README:

- 5 fields (minute hour day-of-month month day-of-week) or an alias (`@hourly`, `@daily`,
  `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`); with
  `RUNRELAY_SCHEDULE_ALLOW_SECONDS`, a sixth, leading seconds field.
- Times are wall-clock times in the schedule's IANA time zone. Spring forward: a time that does
  not exist that day (02:30 when clocks jump from 02:00 to 03:00) fires once, at the first
  existing moment after it (03:00). Fall back: a time that happens twice fires once, at its
  first occurrence, unless the hour field is `*` (an hourly schedule fires in both hours, as
  the clock shows them twice).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from runrelay.server.errors import Invalid

ALIASES = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")
# A cron that cannot fire within this many candidates (e.g. `0 0 30 2 *`) is refused.
_MAX_SKIPS = 1000


class CronError(Invalid):
    """A bad cron expression or time zone; `field` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(
            "timezone", f"timezone must be an IANA time zone such as 'Europe/Berlin' (got {name!r})"
        ) from exc


def validate(expr: str, tz_name: str, *, allow_seconds: bool = False) -> None:
    """CronError naming the field and croniter's parse error, unless both are good."""
    tz = zone(tz_name)
    fields = expr.split()
    if not expr.startswith("@"):
        wanted = "5 fields (minute hour day-of-month month day-of-week)"
        if allow_seconds:
            wanted += ", or 6 with a leading seconds field,"
        if len(fields) != 5 and not (allow_seconds and len(fields) == 6):
            raise CronError(
                "cron", f"cron must have {wanted} or be an alias like @hourly (got {expr!r})"
            )
    elif expr not in ALIASES:
        raise CronError("cron", f"cron alias must be one of {', '.join(ALIASES)} (got {expr!r})")
    try:
        next_fire(expr, tz_name, datetime.now(tz))
    except CroniterError as exc:
        raise CronError("cron", f"cron {expr!r} is not valid: {exc}") from exc


def next_fire(expr: str, tz_name: str, after: datetime) -> datetime:
    """The first fire time strictly after `after`, in UTC."""
    tz = zone(tz_name)
    seconds = len(expr.split()) == 6
    it = croniter(expr, after.astimezone(tz), second_at_beginning=seconds)
    repeats_hourly = expr.startswith("@hourly") or (
        not expr.startswith("@") and expr.split()[2 if seconds else 1] == "*"
    )
    for _ in range(_MAX_SKIPS):
        candidate: datetime = it.get_next(datetime)
        if repeats_hourly or not _second_occurrence(candidate, tz):
            return candidate.astimezone(UTC)
    raise CronError("cron", f"cron {expr!r} never fires")


def _second_occurrence(moment: datetime, tz: ZoneInfo) -> bool:
    """Whether `moment` is the repeat of a wall-clock time shown twice (clocks went back)."""
    wall = moment.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0)
    return first.utcoffset() != moment.utcoffset() and (
        first.astimezone(UTC) < moment.astimezone(UTC)
    )


def fires_between(expr: str, tz_name: str, start: datetime, end: datetime) -> list[datetime]:
    """Fire times in (start, end] (for tests and the docs' examples), at most 10,000."""
    found: list[datetime] = []
    moment = start
    while len(found) < 10_000:
        moment = next_fire(expr, tz_name, moment)
        if moment > end:
            return found
        found.append(moment)
    return found


def at_least(moment: datetime, floor: datetime | None) -> datetime:
    """`moment`, moved to just before `floor` when earlier (a schedule's `start_at`), so that
    the next fire computed from it is the first one at or after `floor`."""
    if floor is not None and moment < floor:
        return floor - timedelta(microseconds=1)
    return moment
