"""Tenant administration and quota limits: a tenant's own limits or the settings' defaults,
budget periods, and API key listing and revocation (`runrelay tenants`, `runrelay keys`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlmodel import Session, col, select

from runrelay.server.errors import NotFound
from runrelay.server.settings import Settings
from runrelay.server.store import Store
from runrelay.server.tables import ApiKey, Tenant, utcnow

BudgetPeriod = Literal["day", "month"]
LIMIT_FIELDS = (
    "max_concurrent_runs",
    "max_queued_runs",
    "requests_per_minute",
    "token_budget",
    "budget_period",
)


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class KeyNotFound(NotFound):
    code = "key_not_found"


@dataclass(frozen=True)
class TenantLimits:
    """The limits in force for a tenant; None means no limit."""

    max_concurrent_runs: int
    max_queued_runs: int
    requests_per_minute: int | None
    token_budget: int | None
    budget_period: BudgetPeriod

    @classmethod
    def of(cls, tenant: Tenant, settings: Settings) -> TenantLimits:
        def pick(name: str) -> Any:
            own = getattr(tenant, name)
            return own if own is not None else getattr(settings, f"default_{name}")

        return cls(
            max_concurrent_runs=pick("max_concurrent_runs"),
            max_queued_runs=pick("max_queued_runs"),
            requests_per_minute=pick("requests_per_minute"),
            token_budget=pick("token_budget"),
            budget_period=pick("budget_period"),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Period:
    """One budget period: its id (part of the Redis key) and when it ends."""

    id: str
    ends_at: datetime

    @classmethod
    def current(cls, kind: BudgetPeriod, now: datetime | None = None) -> Period:
        now = now or datetime.now(UTC)
        if kind == "day":
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return cls(start.strftime("%Y-%m-%d"), start + timedelta(days=1))
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (start + timedelta(days=32)).replace(day=1)
        return cls(start.strftime("%Y-%m"), following)

    def seconds_left(self, now: datetime | None = None) -> int:
        return max(1, int((self.ends_at - (now or datetime.now(UTC))).total_seconds()))


def update_limits(store: Store, name_or_id: str, **limits: Any) -> Tenant:
    """Set the given limits; None leaves a limit unchanged."""
    unknown = set(limits) - set(LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")
    with Session(store.engine, expire_on_commit=False) as session:
        tenant = (
            session.get(Tenant, name_or_id)
            or session.exec(select(Tenant).where(Tenant.name == name_or_id)).first()
        )
        if tenant is None:
            raise TenantNotFound(f"no tenant {name_or_id!r}")
        for name, value in limits.items():
            if value is None:
                continue
            setattr(tenant, name, value)
        session.add(tenant)
        session.commit()
        return tenant


def list_keys(store: Store, tenant_id: str) -> list[ApiKey]:
    with Session(store.engine, expire_on_commit=False) as session:
        query = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(col(ApiKey.id))
        return list(session.exec(query).all())


def revoke_key(store: Store, key_id_or_prefix: str) -> ApiKey:
    """Revoke a key given its id or its printed prefix; refuses an ambiguous prefix. This
    `store` refuses the key at once; other processes within `store.KEY_CACHE_S`."""
    with Session(store.engine, expire_on_commit=False) as session:
        row = session.get(ApiKey, key_id_or_prefix)
        if row is None:
            rows = session.exec(select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)).all()
            if len(rows) > 1:
                raise KeyNotFound(
                    f"{len(rows)} keys have the prefix {key_id_or_prefix!r}; revoke by key id"
                )
            row = rows[0] if rows else None
        if row is None:
            raise KeyNotFound(f"no API key {key_id_or_prefix!r} (give its id or prefix)")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.add(row)
            session.commit()
    store.forget_key(row.id)
    return row
