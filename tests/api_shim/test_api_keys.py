"""The API process's view of API keys: cached per process, one database read per key at a time."""

from __future__ import annotations

import asyncio
import secrets

from api_shim.state import ApiKeys
from runrelay.server.store import KEY_PREFIX, Principal, Store
from runrelay.server.tenants import revoke_key


class CountingStore(Store):
    """The real store, counting the look-ups that reach the database."""

    reads = 0

    def authenticate(self, key: str) -> Principal | None:
        if self.cached_principal(key) is None:
            self.reads += 1
        return super().authenticate(key)


def test_many_requests_with_one_uncached_key_make_one_database_read(store: Store) -> None:
    counting = CountingStore(store.engine)
    tenant = store.create_tenant(f"t-keys-{secrets.token_hex(6)}")
    key = store.create_api_key(tenant.id)
    unknown = KEY_PREFIX + secrets.token_urlsafe(32)
    keys = ApiKeys(counting)

    async def scenario() -> tuple[list[Principal | None], list[Principal | None]]:
        known = await asyncio.gather(*(keys.principal(key) for _ in range(50)))
        strangers = await asyncio.gather(*(keys.principal(unknown) for _ in range(50)))
        return known, strangers

    known, strangers = asyncio.run(scenario())

    assert {p.tenant_id if p else None for p in known} == {tenant.id}
    assert strangers == [None] * 50
    assert counting.reads == 2


def test_the_process_that_revokes_a_key_refuses_it_at_once(store: Store) -> None:
    tenant = store.create_tenant(f"t-keys-{secrets.token_hex(6)}")
    key = store.create_api_key(tenant.id)
    keys = ApiKeys(store)
    found = asyncio.run(keys.principal(key))
    assert found is not None and asyncio.run(keys.active(found.key_id))

    revoke_key(store, found.key_id)

    assert asyncio.run(keys.principal(key)) is None
    assert not asyncio.run(keys.active(found.key_id))
