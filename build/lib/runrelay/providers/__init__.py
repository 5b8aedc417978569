"""Model providers: the offline `scripted` one and OpenAI-compatible chat completions."""

from __future__ import annotations

import httpx

from runrelay.agents import AgentSpec, ProviderConfig, Script
from runrelay.providers.base import ModelProvider, ProviderError


def build_provider(
    agent: AgentSpec, config: ProviderConfig, http: httpx.AsyncClient
) -> ModelProvider:
    if config.type == "scripted":
        from runrelay.providers.scripted import ScriptedProvider

        return ScriptedProvider(agent.script or Script())
    from runrelay.providers.openai import OpenAIProvider

    return OpenAIProvider(config, http)


__all__ = ["ModelProvider", "ProviderError", "build_provider"]
