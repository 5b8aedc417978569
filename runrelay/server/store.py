"""The database side: engine, tenants and API keys, reading runs and their archived event logs.

Runs change status only through `runrelay.server.lifecycle`.

Functions are synchronous (SQLAlchemy sessions); async callers run them in a thread. The few
on a run's hot path have an `_async` twin that awaits the statement on the caller's loop when
its process attached a `LoopDatabase` there (the worker, the API), and goes to a thread otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Integer, Text, bindparam, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from runrelay.server.engine import autocommit
from runrelay.server.errors import Conflict
from runrelay.server.expiring import Expiring
from runrelay.server.loop_database import on_loop
from runrelay.server.run_statements import ARCHIVED_LOG
from runrelay.server.tables import (
    RUN_COLUMNS,
    ApiKey,
    Run,
    RunCheckpoint,
    RunLog,
    Tenant,
    as_utc,
    loaded,
    run_of,
    table_of,
    utcnow,
)
from runrelay.types import RunStatus

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
KEY_PREFIX = "rr_sk_"
# last_used_at is written at most this often per key, so auth stays a read.
_KEY_TOUCH_INTERVAL = timedelta(seconds=60)
# How long a process trusts what the database said about an API key: a key revoked by another
# process is refused (and the streams reading by it end) within this long; the process that
# revoked it (`forget_key`) refuses it at once.
KEY_CACHE_S = 1.0
# Answers kept at most, by key hash and by key id each.
_KEY_CACHE_MAX = 10_000


class AlreadyExists(Conflict):
    code = "already_exists"


_last_id_value = 0
_id_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """A time-ordered id (a monotonic ULID): 10 chars of milliseconds then 16 random chars,
    Crockford base32. Within one process ids strictly increase, even in the same millisecond."""
    global _last_id_value
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    with _id_lock:
        if value >> 80 <= _last_id_value >> 80:
            value = _last_id_value + 1 + int.from_bytes(os.urandom(2), "big")
        _last_id_value = value
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


_GET_RUN = select(*RUN_COLUMNS).where(col(Run.id) == bindparam("run_id"))
_UNFINISHED = (
    select(*(col(c) for c in (Run.id, Run.tenant_id, Run.status, Run.thread_id, Run.created_at)))
    .where(
        col(Run.id) > bindparam("after_id"),
        (col(Run.status) == RunStatus.RUNNING)
        | (
            (col(Run.status) == RunStatus.QUEUED)
            & (col(Run.created_at) < bindparam("created_before"))
        ),
    )
    .order_by(col(Run.id))
    .limit(bindparam("limit"))
)
_TENANTS = table_of(Tenant)
_TENANT_BY_ID = select(*_TENANTS.c).where(_TENANTS.c.id == bindparam("key"))
_TENANT_BY_NAME = select(*_TENANTS.c).where(_TENANTS.c.name == bindparam("key"))


@dataclass(frozen=True)
class Unfinished:
    """What the sweeper reads of an unfinished run (`Store.unfinished_runs`)."""

    id: str
    tenant_id: str
    status: RunStatus
    thread_id: str | None
    created_at: datetime


@functools.cache
def _save_checkpoint(dialect: str) -> Any:
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    fenced = select(
        col(Run.id),
        bindparam("next_seq", type_=Integer),
        bindparam("data", type_=Text),
    ).where(col(Run.id) == bindparam("run_id"), col(Run.lease_token) == bindparam("lease_token"))
    stmt = insert(RunCheckpoint).from_select(["run_id", "next_seq", "data"], fenced)
    return stmt.on_conflict_do_update(  # forward only: writes may land out of order
        index_elements=["run_id"],
        set_={"next_seq": stmt.excluded.next_seq, "data": stmt.excluded.data},
        where=col(RunCheckpoint.next_seq) < stmt.excluded.next_seq,
    )


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's tenant, and whether the key may act for other tenants."""

    tenant_id: str
    key_id: str
    is_platform: bool


@dataclass(frozen=True)
class KeyAnswer:
    """A cached answer about a key: its principal, or None for an unknown or revoked key."""

    principal: Principal | None


class _KeyCache:
    """Answers about API keys by key hash (unknown keys too: every key takes the same path)
    and by key id, each trusted for `KEY_CACHE_S`. `forget` drops a key's answers and makes
    any database read that started before it unable to store its (stale) answer."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.generation = 0
        self._lock = threading.Lock()
        self._principals: Expiring[str, Principal | None] = Expiring(ttl_s, _KEY_CACHE_MAX)
        self._active: Expiring[str, bool] = Expiring(ttl_s, _KEY_CACHE_MAX)

    def principal(self, digest: str) -> KeyAnswer | None:
        cached = self._principals.fresh(digest, time.monotonic())
        return None if cached is None else KeyAnswer(cached[1])

    def active(self, key_id: str) -> bool | None:
        cached = self._active.fresh(key_id, time.monotonic())
        return None if cached is None else cached[1]

    def remember_principal(self, generation: int, digest: str, found: Principal | None) -> None:
        """Store what the database said at `generation` (see `forget`) about a key hash."""
        with self._lock:
            if generation == self.generation:
                now = time.monotonic()
                self._principals.put(digest, found, now)
                if found is not None:
                    self._active.put(found.key_id, True, now)

    def remember_active(self, generation: int, key_id: str, active: bool) -> None:
        with self._lock:
            if generation == self.generation:
                self._active.put(key_id, active, time.monotonic())

    def forget(self, key_id: str) -> None:
        with self._lock:
            self.generation += 1
            self._active.pop(key_id)
            self._principals.keep(lambda entry: entry[1] is None or entry[1].key_id != key_id)


class Store:
    def __init__(self, engine: Engine, *, key_cache_s: float = KEY_CACHE_S) -> None:
        self.engine = engine
        self.single = autocommit(engine)
        self._keys = _KeyCache(key_cache_s)

    # Tenants and keys ---------------------------------------------------------------------------

    def create_tenant(self, name: str) -> Tenant:
        tenant = Tenant(id=new_id("ten"), name=name)
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(tenant)
            try:
                session.commit()
            except IntegrityError as exc:
                raise AlreadyExists(f"tenant {name!r} already exists") from exc
        return tenant

    def get_tenant(self, tenant_id_or_name: str) -> Tenant | None:
        with self.single.connect() as conn:  # Core: no ORM session (every POST reads it)
            row = conn.execute(_TENANT_BY_ID, {"key": tenant_id_or_name}).first()
            if row is None:
                row = conn.execute(_TENANT_BY_NAME, {"key": tenant_id_or_name}).first()
        return loaded(Tenant, row._asdict()) if row is not None else None

    async def get_tenant_async(self, tenant_id_or_name: str) -> Tenant | None:
        """`get_tenant`, awaited."""
        database = on_loop(self.engine)
        if database is None:
            return await asyncio.to_thread(self.get_tenant, tenant_id_or_name)
        row = await database.first(_TENANT_BY_ID, {"key": tenant_id_or_name})
        if row is None:
            row = await database.first(_TENANT_BY_NAME, {"key": tenant_id_or_name})
        if row is None:
            return None
        return loaded(Tenant, dict(zip(_TENANTS.c.keys(), row, strict=True)))

    def ensure_tenant(self, name: str) -> Tenant:
        existing = self.get_tenant(name)
        if existing is not None:
            return existing
        try:
            return self.create_tenant(name)
        except AlreadyExists:
            tenant = self.get_tenant(name)
            assert tenant is not None  # a concurrent create won the race
            return tenant

    def create_api_key(self, tenant_id: str, *, is_platform: bool = False) -> str:
        """Store a new key (hashed) and return its only plaintext copy."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id=new_id("key"),
            tenant_id=tenant_id,
            prefix=key[:12],
            key_hash=hash_key(key),
            is_platform=is_platform,
        )
        with Session(self.engine) as session:
            session.add(row)
            session.commit()
        return key

    def cached_principal(self, key: str) -> KeyAnswer | None:
        """The answer `authenticate` gave for this key less than `KEY_CACHE_S` ago, if any
        (no database access: async callers try this before a thread hop)."""
        return self._keys.principal(hash_key(key))

    def authenticate(self, key: str) -> Principal | None:
        # Every key takes the same path (hash, cache, look-up), whatever its prefix: how long
        # the answer takes tells nothing about which keys look real.
        digest = hash_key(key)
        cached = self._keys.principal(digest)
        if cached is not None:
            return cached.principal
        generation = self._keys.generation
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
            found = None
            if (
                row is not None
                and row.revoked_at is None
                and key.startswith(KEY_PREFIX)
                and hmac.compare_digest(row.key_hash, digest)
            ):
                found = Principal(
                    tenant_id=row.tenant_id, key_id=row.id, is_platform=row.is_platform
                )
                now = utcnow()
                last = row.last_used_at
                if last is None or now - as_utc(last) > _KEY_TOUCH_INTERVAL:
                    row.last_used_at = now
                    session.add(row)
                    session.commit()
        self._keys.remember_principal(generation, digest, found)
        return found

    def cached_key_active(self, key_id: str) -> bool | None:
        """`key_active`'s answer of less than `KEY_CACHE_S` ago, if any (no database access)."""
        return self._keys.active(key_id)

    def key_active(self, key_id: str) -> bool:
        """Whether the key exists and is not revoked (open SSE streams and stream tokens check
        it now and then)."""
        cached = self._keys.active(key_id)
        if cached is not None:
            return cached
        generation = self._keys.generation
        with Session(self.engine) as session:
            row = session.get(ApiKey, key_id)
            active = row is not None and row.revoked_at is None
        self._keys.remember_active(generation, key_id, active)
        return active

    @property
    def key_generation(self) -> int:
        """Moves on at every `forget_key`: a read that began before it is stale."""
        return self._keys.generation

    def forget_key(self, key_id: str) -> None:
        """Drop what this process cached about a key (it was just revoked here)."""
        self._keys.forget(key_id)

    # Runs ---------------------------------------------------------------------------------------

    def create_run(self, run: Run) -> Run:
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(run)
            session.commit()
        return run

    def get_run(self, run_id: str, *, tenant_id: str | None = None) -> Run | None:
        with self.single.connect() as conn:
            row = conn.execute(_GET_RUN, {"run_id": run_id}).first()
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            return None
        return run_of(row)

    async def get_run_async(self, run_id: str, *, tenant_id: str | None = None) -> Run | None:
        """`get_run`, awaited."""
        database = on_loop(self.engine)
        if database is None:
            return await asyncio.to_thread(self.get_run, run_id, tenant_id=tenant_id)
        row = await database.first(_GET_RUN, {"run_id": run_id})
        run = None if row is None else run_of(row)
        return None if run is None or tenant_id not in (None, run.tenant_id) else run

    def list_runs(
        self,
        tenant_id: str,
        *,
        limit: int,
        before: str | None = None,
        status: RunStatus | None = None,
        agent: str | None = None,
        thread_id: str | None = None,
        schedule_id: str | None = None,
    ) -> list[Run]:
        """The tenant's runs, newest first; `before` is the last run id of the previous page."""
        query = select(Run).where(Run.tenant_id == tenant_id)
        if before is not None:
            query = query.where(col(Run.id) < before)
        if status is not None:
            query = query.where(Run.status == status)
        if agent is not None:
            query = query.where(Run.agent_name == agent)
        if thread_id is not None:
            query = query.where(Run.thread_id == thread_id)
        if schedule_id is not None:  # schedules (issue 12)
            query = query.where(Run.schedule_id == schedule_id)
        query = query.order_by(col(Run.id).desc()).limit(limit)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query).all())

    def unfinished_runs(
        self, *, created_before: datetime, after_id: str = "", limit: int
    ) -> list[Unfinished]:
        """Runs `running`, or `queued` since before `created_before`, by id (oldest first) from
        after `after_id`: the sweeper's candidates, a page at a time, only what it looks at
        (a page may be every run in flight: no inputs, no ORM objects)."""
        params = {"after_id": after_id, "created_before": created_before, "limit": limit}
        with self.single.connect() as conn:
            rows = conn.execute(_UNFINISHED, params).all()
        return [
            Unfinished(r.id, r.tenant_id, RunStatus(r.status), r.thread_id, r.created_at)
            for r in rows
        ]

    def paused_runs(self, *, after_id: str = "", limit: int) -> list[Run]:
        """Runs waiting for approval (`requires_action`), by id from after `after_id`: the
        sweeper expires those that waited past `approval_timeout_s`."""
        query = (
            select(Run)
            .where(col(Run.id) > after_id, col(Run.status) == RunStatus.REQUIRES_ACTION)
            .order_by(col(Run.id))
            .limit(limit)
        )
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query).all())

    def reserve_seqs(self, run_id: str, upto: int) -> None:
        """Raise the run's `seq_reserved` to `upto` (never lowers it)."""
        stmt = (
            update(Run)
            .where(col(Run.id) == run_id, col(Run.seq_reserved) < upto)
            .values(seq_reserved=upto)
        )
        with Session(self.single) as session:
            session.exec(stmt)
            session.commit()

    def save_checkpoint(self, run_id: str, lease_token: str, next_seq: int, data: str) -> None:
        """Keep the run's checkpoint `data` (JSON), in one statement and only while the run is
        still started under `lease_token` (a worker that lost the run writes nothing)."""
        params = {"run_id": run_id, "lease_token": lease_token, "next_seq": next_seq, "data": data}
        with self.single.begin() as conn:
            conn.execute(_save_checkpoint(self.engine.dialect.name), params)

    async def save_checkpoint_async(
        self, run_id: str, lease_token: str, next_seq: int, data: str
    ) -> None:
        """`save_checkpoint`, awaited."""
        database = on_loop(self.engine)
        if database is None:
            await asyncio.to_thread(self.save_checkpoint, run_id, lease_token, next_seq, data)
            return
        params = {"run_id": run_id, "lease_token": lease_token, "next_seq": next_seq, "data": data}
        await database.rows(_save_checkpoint("postgresql"), params)

    def checkpoint(self, run_id: str) -> str | None:
        """The run's last checkpoint kept in the database (JSON), if any."""
        query = select(RunCheckpoint.data).where(RunCheckpoint.run_id == run_id)
        with Session(self.single) as session:
            return session.exec(query).first()

    def archived_events(self, run_id: str, *, after: int = 0) -> Sequence[str]:
        with self.single.connect() as conn:
            text = conn.execute(ARCHIVED_LOG, {"run_id": run_id}).scalar()
        return RunLog.after(text, after) if text is not None else []
