"""Stream tokens: short-lived, read-only credentials for one run's events, for browsers.

`EventSource` cannot send `Authorization`, so a key holder gets a token scoped to one run and
hands its URL to the page. A token is `v1.<payload>.<signature>`: base64url JSON
`{run, ten, key, exp}` signed with HMAC-SHA256. Checking one says whether it is ours and in
date; whether its run matches and its key is still active is the caller's (api_shim) concern.

The HMAC key is `RUNRELAY_STREAM_TOKEN_SECRET`, else one random key set once in Redis (SET NX),
so every shim process, and a restarted one, accepts the same tokens.

    StreamTokenError
    ├── TokenInvalid   malformed, altered, or signed with another key
    └── TokenExpired   past its `exp`
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from runrelay.server.errors import Unauthorized
from runrelay.server.keys import RedisKeys
from runrelay.server.settings import Settings

_VERSION = "v1"


class StreamTokenError(Unauthorized):
    """Base of the stream token errors."""

    code = "invalid_stream_token"


class TokenInvalid(StreamTokenError):
    pass


class TokenExpired(StreamTokenError):
    def __init__(self, claims: TokenClaims) -> None:
        expired = datetime.fromtimestamp(claims.exp, UTC).isoformat()
        super().__init__(f"the stream token expired at {expired}")
        self.claims = claims


class TokenClaims(BaseModel):
    run: str
    ten: str
    key: str
    exp: int

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.exp, UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Issues and checks stream tokens; the HMAC key is read once per process."""

    def __init__(self, settings: Settings, redis: Redis, keys: RedisKeys) -> None:
        configured = settings.stream_token_secret
        self._secret = configured.get_secret_value().encode() if configured else None
        self._redis = redis
        self._keys = keys
        self.ttl_s = settings.stream_token_ttl_s

    async def _hmac_key(self) -> bytes:
        if self._secret is None:
            name = self._keys.stream_token_secret()
            await self._redis.set(name, secrets.token_hex(32), nx=True)
            stored = await self._redis.get(name)
            if stored is None:
                raise StreamTokenError("the stream token key vanished from Redis; retry")
            self._secret = stored if isinstance(stored, bytes) else str(stored).encode()
        return self._secret

    async def _sign(self, payload: str) -> str:
        return _b64(hmac.new(await self._hmac_key(), payload.encode(), hashlib.sha256).digest())

    async def issue(
        self, *, run_id: str, tenant_id: str, key_id: str, now: float | None = None
    ) -> tuple[str, TokenClaims]:
        expires = int(now if now is not None else time.time()) + self.ttl_s
        claims = TokenClaims(run=run_id, ten=tenant_id, key=key_id, exp=expires)
        payload = _b64(claims.model_dump_json().encode())
        return f"{_VERSION}.{payload}.{await self._sign(payload)}", claims

    async def verify(self, token: str, *, now: float | None = None) -> TokenClaims:
        version, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if version != _VERSION or not hmac.compare_digest(signature, await self._sign(payload)):
            raise TokenInvalid(
                "the stream token is not valid (malformed, altered or signed with another key)"
            )
        try:
            claims = TokenClaims.model_validate(json.loads(_unb64(payload)))
        except (ValueError, binascii.Error, ValidationError) as exc:
            raise TokenInvalid("the stream token's payload is unreadable") from exc
        if claims.exp <= (now if now is not None else time.time()):
            raise TokenExpired(claims)
        return claims
