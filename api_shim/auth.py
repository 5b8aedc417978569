"""API keys → tenants. `Authorization: Bearer rr_sk_...`; a platform key may act for a tenant
named in the body's `tenant_id` or the `X-Tenant-ID` header."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api_shim.errors import HTTPProblem
from api_shim.state import state_of
from runrelay.server.store import Principal

# Declares the bearer scheme in the OpenAPI document (and the Authorize button of /docs); the
# header is read below, so that a missing or malformed one gets our own error messages.
bearer = HTTPBearer(
    auto_error=False, bearerFormat="rr_sk_...", description="an API key: `Bearer rr_sk_...`"
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


async def principal(request: Request, _declared: Credentials = None) -> Principal:
    authorization = request.headers.get("authorization")
    if not authorization:
        raise HTTPProblem(
            401, "missing_api_key", "no API key: send `Authorization: Bearer rr_sk_...`"
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPProblem(
            401, "invalid_api_key", "the Authorization header must be `Bearer <api key>`"
        )
    found = await state_of(request).api_keys.principal(key.strip())
    if found is None:
        raise HTTPProblem(401, "invalid_api_key", "the API key is not valid (unknown or revoked)")
    return found


Caller = Annotated[Principal, Depends(principal)]


async def acting_tenant(request: Request, caller: Principal, requested: str | None) -> str:
    """The tenant a request acts for: the key's own, or for a platform key the one it names."""
    requested = requested or request.headers.get("x-tenant-id")
    if requested is None:
        return caller.tenant_id
    store = state_of(request).store
    tenant = await store.get_tenant_async(requested)
    if caller.is_platform:
        if tenant is None:
            raise HTTPProblem(
                404, "tenant_not_found", f"no tenant {requested!r}", param="tenant_id"
            )
        return tenant.id
    if tenant is not None and tenant.id == caller.tenant_id:
        return caller.tenant_id
    raise HTTPProblem(
        403,
        "tenant_not_allowed",
        "this key belongs to one tenant and cannot act for another; "
        "use a platform key to pass `tenant_id`",
        param="tenant_id",
    )
