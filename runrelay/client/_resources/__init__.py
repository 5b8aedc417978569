"""The SDK's resources (`client.agents`, `client.runs`, `client.batches`, `client.schedules`,
`client.shortcuts`, `client.threads`), each in a sync flavour (on `Client`) and an async one (on
`AsyncClient`)."""

from runrelay.client._resources.agents import Agents, AsyncAgents
from runrelay.client._resources.batches import AsyncBatches, Batches
from runrelay.client._resources.runs import AsyncRuns, Runs
from runrelay.client._resources.schedules import AsyncSchedules, Schedules
from runrelay.client._resources.shortcuts import (
    AsyncShortcuts,
    Shortcuts,
    shortcut_request,
    shortcut_response,
)
from runrelay.client._resources.threads import AsyncThreads, Threads

__all__ = [
    "Agents",
    "AsyncAgents",
    "AsyncBatches",
    "AsyncRuns",
    "AsyncSchedules",
    "AsyncShortcuts",
    "AsyncThreads",
    "Batches",
    "Runs",
    "Schedules",
    "Shortcuts",
    "Threads",
    "shortcut_request",
    "shortcut_response",
]
