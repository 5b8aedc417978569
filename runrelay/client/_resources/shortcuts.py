"""`client.shortcuts` (FAOS): list and resolve shortcut commands; `client.shortcut(cmd)` runs the
agent a command leads to."""

from __future__ import annotations

import builtins
from typing import Any

import httpx

from runrelay.client._params import invoke_body
from runrelay.client._resources.base import Event, Resource, create_request
from runrelay.client._responses import AgentResponse, InvokeResponse
from runrelay.client._transport import ClientOptions, Request
from runrelay.types import ShortcutDefinition, ShortcutResolution


def _shortcut_response(response: InvokeResponse) -> AgentResponse:
    return AgentResponse(
        content=response.run.output or "",
        agent_id=response.run.agent.id,
        metadata={
            **response.metadata,
            "usage": response.usage.model_dump(),
            "tokens_used": response.usage.total_tokens,
            "request_id": response.request_id,
        },
    )


def _shortcut_body(
    command: str, input: dict[str, Any] | str | None, tenant_id: str | None
) -> Event:
    return invoke_body(command, input if input is not None else command, tenant_id=tenant_id)


class Shortcuts(Resource):
    """`client.shortcuts` (FAOS): list and resolve shortcut commands."""

    def list(self, module: str | None = None) -> builtins.list[ShortcutDefinition]:
        response = self._transport.send(Request("GET", "/v1/shortcuts", params={"module": module}))
        return [ShortcutDefinition.model_validate(item) for item in response.json()["data"]]

    def resolve(self, command: str) -> ShortcutResolution:
        response = self._transport.send(
            Request("POST", "/v1/shortcuts/resolve", json={"command": command})
        )
        return ShortcutResolution.model_validate(response.json())


class AsyncShortcuts(Resource):
    async def list(self, module: str | None = None) -> builtins.list[ShortcutDefinition]:
        async with self._atransport() as transport:
            response = await transport.send(
                Request("GET", "/v1/shortcuts", params={"module": module})
            )
        return [ShortcutDefinition.model_validate(item) for item in response.json()["data"]]

    async def resolve(self, command: str) -> ShortcutResolution:
        async with self._atransport() as transport:
            response = await transport.send(
                Request("POST", "/v1/shortcuts/resolve", json={"command": command})
            )
        return ShortcutResolution.model_validate(response.json())


def shortcut_request(
    command: str, input: dict[str, Any] | str | None, tenant_id: str | None, options: ClientOptions
) -> Request:
    return create_request("/v1/runs/wait", _shortcut_body(command, input, tenant_id), None, options)


def shortcut_response(response: httpx.Response) -> AgentResponse:
    return _shortcut_response(InvokeResponse.model_validate(response.json()))
