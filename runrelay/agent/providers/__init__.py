"""Model providers: the offline `scripted` one and OpenAI-compatible chat completions."""

from __future__ import annotations

import httpx

from runrelay.agent.config import AgentSpec, ProviderConfig, Script
from runrelay.agent.providers.base import ModelProvider, ProviderError


def build_provider(
    agent: AgentSpec, config: ProviderConfig, http: httpx.AsyncClient
) -> ModelProvider:
    if config.type == "scripted":
        from runrelay.agent.providers.scripted import ScriptedProvider

        return ScriptedProvider(agent.script or Script())
    from runrelay.agent.providers.openai import OpenAIProvider

    return OpenAIProvider(config, http)


__all__ = ["ModelProvider", "ProviderError", "build_provider"]
