"""`Client` and `AsyncClient`: the entry points of the SDK.

    client = Client(api_key="rr_sk_...", base_url="http://127.0.0.1:8000")

`api_key` defaults to `RUNRELAY_API_KEY`, `base_url` to `RUNRELAY_BASE_URL` (else
http://127.0.0.1:8000). `timeout` (seconds) applies to connecting, sending and reading, except
that `agents.invoke` / `agents.run` wait for the run as long as the server does. `max_retries`
bounds the retries of one request (see `runrelay.client._transport`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from runrelay.client._resources import (
    Agents,
    AsyncAgents,
    AsyncBatches,
    AsyncRuns,
    AsyncSchedules,
    AsyncShortcuts,
    AsyncThreads,
    Batches,
    Runs,
    Schedules,
    Shortcuts,
    Threads,
    shortcut_request,
    shortcut_response,
)
from runrelay.client._responses import AgentResponse
from runrelay.client._transport import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    AsyncTransport,
    ClientOptions,
    SyncTransport,
)


class Client:
    """The synchronous client; its `agents` also offer the awaitable `ainvoke` / `run_async`
    and streams that work with `async for`."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._options = ClientOptions.build(
            api_key, base_url, timeout, max_retries, default_headers
        )
        self._transport = SyncTransport(self._options, self._options.sync_http())
        self.agents = Agents(self._options, self._transport, None)
        self.runs = Runs(self._options, self._transport, None)
        self.schedules = Schedules(self._options, self._transport, None)
        self.shortcuts = Shortcuts(self._options, self._transport, None)
        self.threads = Threads(self._options, self._transport, None)
        self.batches = Batches(self._options, self._transport, None)

    @property
    def base_url(self) -> str:
        return self._options.base_url

    @property
    def max_retries(self) -> int:
        return self._options.max_retries

    def shortcut(
        self,
        command: str,
        input: dict[str, Any] | str | None = None,
        *,
        tenant_id: str | None = None,
    ) -> AgentResponse:
        """Run the agent a shortcut command leads to (FAOS), e.g. `"bank credit-analyst"`.
        Without `input`, the command itself is the message."""
        request = shortcut_request(command, input, tenant_id, self._options)
        return shortcut_response(self._transport.send(request))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The asynchronous client: every call is awaited; streams are iterated with `async for`."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._options = ClientOptions.build(
            api_key, base_url, timeout, max_retries, default_headers
        )
        self._transport = AsyncTransport(self._options, self._options.async_http())
        self.agents = AsyncAgents(self._options, None, self._transport)
        self.runs = AsyncRuns(self._options, None, self._transport)
        self.schedules = AsyncSchedules(self._options, None, self._transport)
        self.shortcuts = AsyncShortcuts(self._options, None, self._transport)
        self.threads = AsyncThreads(self._options, None, self._transport)
        self.batches = AsyncBatches(self._options, None, self._transport)

    @property
    def base_url(self) -> str:
        return self._options.base_url

    @property
    def max_retries(self) -> int:
        return self._options.max_retries

    async def shortcut(
        self,
        command: str,
        input: dict[str, Any] | str | None = None,
        *,
        tenant_id: str | None = None,
    ) -> AgentResponse:
        request = shortcut_request(command, input, tenant_id, self._options)
        return shortcut_response(await self._transport.send(request))

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
