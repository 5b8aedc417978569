"""The database store: tenants, hashed API keys, run listing, and archiving a finished run's events.

Runs against the session's database: SQLite, or PostgreSQL when DATABASE_URL is set. The database
is shared by the session, so every test makes its own uniquely named tenants.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlmodel import Session, select

from runrelay.server.run_table import Ending, RunTable
from runrelay.server.store import KEY_CACHE_S, KEY_PREFIX, AlreadyExists, Store, hash_key, new_id
from runrelay.server.tables import ApiKey, Run, RunLog, Tenant, new_row, utcnow
from runrelay.server.tenants import revoke_key
from runrelay.types import RunStatus


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


@pytest.fixture
def fresh_tenant(store: Store) -> Tenant:
    return store.create_tenant(unique())


MakeRun = Callable[..., Run]


@pytest.fixture
def make_run(store: Store, fresh_tenant: Tenant) -> MakeRun:
    def make(tenant_id: str | None = None, **fields: Any) -> Run:
        time.sleep(0.002)  # ids order by millisecond; see the same-millisecond test below
        values: dict[str, Any] = {
            "status": "queued",
            "agent_name": "credit-risk-analyst",
            "agent_id": "bank.credit-risk-analyst",
            **fields,
        }
        owner = tenant_id or fresh_tenant.id
        return store.create_run(Run(id=new_id("run"), tenant_id=owner, **values))

    return make


def test_create_tenant_and_get_it_by_id_or_name(store: Store) -> None:
    name = unique()

    tenant = store.create_tenant(name)

    assert tenant.id.startswith("ten_") and tenant.name == name
    by_id, by_name = store.get_tenant(tenant.id), store.get_tenant(name)
    assert by_id is not None and by_name is not None
    assert by_id.id == by_name.id == tenant.id
    assert store.get_tenant(unique()) is None


def test_duplicate_tenant_name_is_already_exists(store: Store, fresh_tenant: Tenant) -> None:
    with pytest.raises(AlreadyExists, match=fresh_tenant.name):
        store.create_tenant(fresh_tenant.name)


def test_ensure_tenant_creates_once_then_returns_the_same_tenant(store: Store) -> None:
    name = unique()

    first = store.ensure_tenant(name)
    second = store.ensure_tenant(name)

    assert first.id == second.id
    with Session(store.engine) as session:
        assert len(session.exec(select(Tenant).where(Tenant.name == name)).all()) == 1


def test_api_key_is_returned_once_and_only_its_hash_is_stored(
    store: Store, fresh_tenant: Tenant
) -> None:
    key = store.create_api_key(fresh_tenant.id)

    assert key.startswith(KEY_PREFIX) and len(key) > 30
    with Session(store.engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.tenant_id == fresh_tenant.id)).one()
    assert row.key_hash == hash_key(key) != key
    assert key not in {str(value) for value in row.model_dump().values()}
    assert key.startswith(row.prefix) and len(row.prefix) < len(key) // 2


def test_authenticate_finds_the_keys_tenant(store: Store, fresh_tenant: Tenant) -> None:
    key = store.create_api_key(fresh_tenant.id)
    platform_key = store.create_api_key(fresh_tenant.id, is_platform=True)

    principal = store.authenticate(key)
    platform = store.authenticate(platform_key)

    assert principal is not None and platform is not None
    assert (principal.tenant_id, principal.is_platform) == (fresh_tenant.id, False)
    assert (platform.tenant_id, platform.is_platform) == (fresh_tenant.id, True)
    assert principal.key_id != platform.key_id


def test_authenticate_records_when_a_key_was_last_used(store: Store, fresh_tenant: Tenant) -> None:
    key = store.create_api_key(fresh_tenant.id)

    store.authenticate(key)

    with Session(store.engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).one()
    assert row.last_used_at is not None


@pytest.mark.parametrize(
    "make_bad_key",
    [
        lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),
        lambda key: KEY_PREFIX + secrets.token_urlsafe(32),
        lambda key: key[len(KEY_PREFIX) :],
        lambda key: "",
        lambda key: "garbage \x00 ' OR 1=1 --",
        lambda key: hash_key(key),
    ],
    ids=["one-char-off", "unknown", "no-prefix", "empty", "garbage", "the-stored-hash"],
)
def test_a_wrong_key_authenticates_nobody(
    store: Store, fresh_tenant: Tenant, make_bad_key: Callable[[str], str]
) -> None:
    key = store.create_api_key(fresh_tenant.id)

    assert store.authenticate(make_bad_key(key)) is None


def test_a_revoked_key_is_refused_at_once_by_the_store_that_revoked_it(
    store: Store, fresh_tenant: Tenant
) -> None:
    key = store.create_api_key(fresh_tenant.id)
    found = store.authenticate(key)
    assert found is not None and store.key_active(found.key_id)

    revoke_key(store, found.key_id)

    assert store.authenticate(key) is None
    assert not store.key_active(found.key_id)


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_expires(
    store: Store, fresh_tenant: Tenant
) -> None:
    """Another process (here another Store) keeps its answer at most KEY_CACHE_S."""
    other = Store(store.engine)
    key = store.create_api_key(fresh_tenant.id)
    found = other.authenticate(key)
    assert found is not None and other.key_active(found.key_id)
    with Session(store.engine) as session:  # behind every cache's back, like another process
        row = session.get(ApiKey, found.key_id)
        assert row is not None
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()

    deadline = time.monotonic() + 10 * KEY_CACHE_S
    while other.authenticate(key) is not None or other.key_active(found.key_id):
        assert time.monotonic() < deadline, "the revoked key still authenticates"
        time.sleep(0.05)


def test_an_unknown_key_is_cached_as_unknown(store: Store) -> None:
    """Unknown keys take the path known ones take: looked up once, then answered from the
    cache (as unknown) until it expires."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    assert store.cached_principal(key) is None

    assert store.authenticate(key) is None
    cached = store.cached_principal(key)
    assert cached is not None and cached.principal is None


def test_list_runs_is_newest_first(store: Store, fresh_tenant: Tenant, make_run: MakeRun) -> None:
    created = [make_run().id for _ in range(4)]

    listed = [run.id for run in store.list_runs(fresh_tenant.id, limit=10)]

    assert listed == created[::-1]


def test_before_cursor_pages_without_overlap_or_gap(
    store: Store, fresh_tenant: Tenant, make_run: MakeRun
) -> None:
    created = [make_run().id for _ in range(7)]

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        page = [r.id for r in store.list_runs(fresh_tenant.id, limit=3, before=cursor)]
        if not page:
            break
        pages.append(page)
        cursor = page[-1]

    assert [len(p) for p in pages] == [3, 3, 1]
    assert [run_id for page in pages for run_id in page] == created[::-1]


def test_list_runs_filters_by_status_agent_and_thread(
    store: Store, fresh_tenant: Tenant, make_run: MakeRun
) -> None:
    queued = make_run()
    done = make_run(status="completed", thread_id="th-1")
    other_agent = make_run(
        status="completed", agent_name="slow-analyst", agent_id="bank.slow-analyst"
    )

    def ids(**filters: Any) -> list[str]:
        return [r.id for r in store.list_runs(fresh_tenant.id, limit=10, **filters)]

    assert ids(status="queued") == [queued.id]
    assert ids(status="completed") == [other_agent.id, done.id]
    assert ids(agent="slow-analyst") == [other_agent.id]
    assert ids(agent="credit-risk-analyst", status="completed") == [done.id]
    assert ids(thread_id="th-1") == [done.id]
    assert ids(status="failed") == []


def test_runs_of_another_tenant_are_invisible(
    store: Store, fresh_tenant: Tenant, make_run: MakeRun
) -> None:
    other = store.create_tenant(unique())
    mine = make_run()
    theirs = make_run(tenant_id=other.id)

    assert [r.id for r in store.list_runs(fresh_tenant.id, limit=10)] == [mine.id]
    assert [r.id for r in store.list_runs(other.id, limit=10)] == [theirs.id]
    assert store.get_run(theirs.id, tenant_id=fresh_tenant.id) is None
    fetched = store.get_run(theirs.id, tenant_id=other.id)
    assert fetched is not None and fetched.id == theirs.id


def test_ids_made_in_the_same_millisecond_still_sort_in_creation_order() -> None:
    """A batch creates many runs at once; `list_runs` (ordered by id) must still be newest first."""
    ids = [new_id("run") for _ in range(200)]

    assert ids == sorted(ids)


def events(seqs: range) -> list[tuple[int, str, str]]:
    return [(seq, "custom", f'{{"seq":{seq}}}') for seq in seqs]


def test_archived_events_after_returns_only_later_events_in_order(
    store: Store, make_run: MakeRun
) -> None:
    run = make_run()
    table = RunTable(store.engine)
    table.start(run.id, "t")
    log = RunLog.join((seq, data) for seq, _type, data in reversed(events(range(1, 11))))
    table.end(run.id, RunStatus.COMPLETED, ending=Ending(), log=log)

    assert store.archived_events(run.id, after=7) == ['{"seq":8}', '{"seq":9}', '{"seq":10}']
    assert store.archived_events(run.id, after=10) == []
    assert store.archived_events(new_id("run")) == []


def test_a_run_read_back_is_the_run_written_and_can_be_changed_and_saved(
    store: Store, make_run: MakeRun
) -> None:
    """Reads build models without `__init__` (`tables.loaded`): the run must still be whole,
    typed as written, and an ordinary model that a session can merge and write."""
    written = make_run(
        status=RunStatus.QUEUED, input={"company": "ACME"}, thread_id="thr-read", timeout_s=12.5
    )

    read = store.get_run(written.id)

    assert read is not None and read.model_dump() == written.model_dump()
    assert read.status is RunStatus.QUEUED and read.input == {"company": "ACME"}
    read.output = "changed"
    with Session(store.engine) as session:
        session.merge(read)
        session.commit()
    again = store.get_run(written.id)
    assert again is not None and again.output == "changed" and again.timeout_s == 12.5


def test_a_new_row_is_what_the_models_constructor_makes_and_inserts_as_such(
    store: Store, fresh_tenant: Tenant
) -> None:
    """`new_row` (the API builds each new run with it) fills every field the constructor
    would, defaults and default factories included, and the row saves and reads back whole."""
    values: dict[str, Any] = {
        "tenant_id": fresh_tenant.id,
        "status": RunStatus.QUEUED,
        "agent_name": "a",
        "agent_id": "a",
        "input": {"q": 1},
        "request_id": "req_1",
    }
    built = Run(id=new_id("run"), **values)
    fast = new_row(Run, id=new_id("run"), **values)
    assert fast.model_dump(exclude={"id", "created_at"}) == built.model_dump(
        exclude={"id", "created_at"}
    )
    assert abs((fast.created_at - built.created_at).total_seconds()) < 5
    store.create_run(fast)
    read = store.get_run(fast.id)
    assert read is not None
    assert read.model_dump(exclude={"created_at"}) == fast.model_dump(exclude={"created_at"})


def test_a_kept_checkpoint_only_moves_forward_and_only_for_the_lease_holder(
    store: Store, make_run: MakeRun
) -> None:
    """A run's tool calls keep their checkpoints in the database in parallel: one that lands
    after a newer one does not replace it; a worker that lost the run writes nothing."""
    run = make_run()
    RunTable(store.engine).start(run.id, "holder")

    store.save_checkpoint(run.id, "holder", 7, '{"next_seq":7}')
    store.save_checkpoint(run.id, "holder", 6, '{"next_seq":6}')  # landed late
    assert store.checkpoint(run.id) == '{"next_seq":7}'
    store.save_checkpoint(run.id, "former-holder", 9, '{"next_seq":9}')
    assert store.checkpoint(run.id) == '{"next_seq":7}'
    store.save_checkpoint(run.id, "holder", 8, '{"next_seq":8}')
    assert store.checkpoint(run.id) == '{"next_seq":8}'
