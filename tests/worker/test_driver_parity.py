"""The worker and the embedded runtime run an agent through the same driver: the same agent and
message give the same events and the same `done`, whether the run went through the shim and a
real Celery worker or `Runrelay.run` in this process."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from runrelay import Runrelay
from runrelay.agent.config import AgentsConfig, AgentSpec, ProviderConfig, Registry
from runrelay.agent.middleware import AgentRunContext, Next, RunBlocked, agent_middleware
from runrelay.server.revisions import AgentCatalog
from runrelay.server.store import Store
from tests.sse import assert_complete_log, read_events

SCRIPT = {
    "turns": [
        {"tool_calls": [{"name": "multiply", "arguments": {"a": 6, "b": 7}}]},
        {"text": "6 times 7 is 42.", "chunks": 3},
    ]
}
# What only one of the runtimes has: the worker's queue, attempts and chat summary.
WORKER_ONLY = {"run_queued", "run_started", "chat_completed"}
PER_RUN = {"seq", "ts", "run_id", "duration_ms"}


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@agent_middleware
async def closed_today(context: AgentRunContext, next: Next[AgentRunContext]) -> None:
    raise RunBlocked("the desk is closed today")


def _publish(store: Store, **agent: Any) -> AgentSpec:
    """Store the agent as a revision, as `runrelay agents publish` does; its spec."""
    module = f"parity{secrets.token_hex(4)}"
    config = AgentsConfig.model_validate(
        {
            "providers": {"scripted": {"type": "scripted"}},
            "modules": [
                {
                    "key": module,
                    "name": "Parity",
                    "agents": [
                        {
                            "name": "multiplier",
                            "tools": ["tests.worker.test_driver_parity:multiply"],
                            "script": SCRIPT,
                            **agent,
                        }
                    ],
                }
            ],
        }
    )
    AgentCatalog(store.engine, Registry(config)).publish(config)
    return Registry(config).agents[0]


def _comparable(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    shared = []
    for event in events:
        if event["type"] in WORKER_ONLY:
            continue
        data = {k: v for k, v in event.items() if k not in PER_RUN and k != "type"}
        if event["type"] == "agent_resolved":  # each runtime adds its own (thread, session)
            data = {k: data[k] for k in ("agent_id", "agent_name", "model")}
        shared.append((event["type"], data))
    return shared


def _embedded(spec: AgentSpec, workspace: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    async def go() -> None:
        bot = Runrelay(spec, ProviderConfig(type="scripted"), workspace=workspace)
        async with bot:
            await bot.run("6 x 7?", on_event=events.append)

    # The embedded runtime raises what failed the run; the log is what is compared.
    with contextlib.suppress(RunBlocked):
        asyncio.run(go())
    return events


@pytest.mark.parametrize(
    ("agent", "status"),
    [
        ({}, "completed"),
        ({"middleware": ["tests.worker.test_driver_parity:closed_today"]}, "failed"),
    ],
)
def test_the_worker_and_the_embedded_runtime_log_the_same_run(
    client: httpx.Client, store: Store, tmp_path: Path, agent: dict[str, Any], status: str
) -> None:
    spec = _publish(store, **agent)

    served = read_events(
        client, "POST", "/v1/runs/stream", json={"agent_id": spec.id, "message": "6 x 7?"}
    )
    embedded = _embedded(spec, tmp_path)

    assert_complete_log(served)
    assert_complete_log(embedded)
    assert served[-1]["status"] == status
    types = [type for type, _ in _comparable(served)]
    assert types[0] == "agent_resolved" and types[-1] == "done" and len(types) > 2
    assert _comparable(served) == _comparable(embedded)
