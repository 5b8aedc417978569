"""Is an agent's model provider usable? Checked by the embedded loop before it sends anything.

As the Facio SDK puts it: hosted providers need usable credentials, local providers need a
reachable base URL. A provider's base URL is one of

- hosted: a well-known public API (`HOSTED_API_KEYS`); it needs an `api_key`, checked when the
  config is loaded, without any network traffic;
- local: `localhost`, a loopback, private or link-local address, or a name that only a private
  network resolves (one label such as `ollama`, or `.local`, `.internal`, `.lan`, ...); it must
  answer an HTTP request, checked once before the first run (`probe`);
- anything else: neither check; a failed model call reports what went wrong.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any, Literal

import httpx

from runrelay.agent.config import ProviderConfig, referenced_variables
from runrelay.errors import ConfigError, MissingCredentialsError, ProviderUnreachableError

Reach = Literal["hosted", "local", "remote"]

# Hosts that always need a key, and the variable their users conventionally keep it in.
HOSTED_API_KEYS = {
    "api.openai.com": "OPENAI_API_KEY",
    "openrouter.ai": "OPENROUTER_API_KEY",
    "api.groq.com": "GROQ_API_KEY",
    "api.together.xyz": "TOGETHER_API_KEY",
    "api.mistral.ai": "MISTRAL_API_KEY",
    "api.deepseek.com": "DEEPSEEK_API_KEY",
    "api.fireworks.ai": "FIREWORKS_API_KEY",
}
PRIVATE_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".cluster.local")
PROBE_TIMEOUT_S = 3.0


def _host(base_url: str) -> str:
    return (httpx.URL(base_url).host or "").lower().rstrip(".")


def reach(base_url: str) -> Reach:
    host = _host(base_url)
    if host in HOSTED_API_KEYS:
        return "hosted"
    if host == "localhost" or host.endswith(PRIVATE_SUFFIXES):
        return "local"
    if "." not in host and ":" not in host:  # one label, e.g. a compose service: `ollama`
        return "local"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "remote"
    if address.is_loopback or address.is_private or address.is_link_local:
        return "local"
    return "remote"


def check_provider(name: str, config: ProviderConfig, raw: Any, source: Path) -> None:
    """Raise `ConfigError` if provider `name` of config file `source` cannot be used as written.

    `raw` is the file's parsed text before `${VAR}` interpolation (`agents.read_config`): it
    tells which environment variable was meant to supply a missing value.
    """
    if config.type != "openai":
        return
    field = f"providers.{name}"
    if not config.base_url:
        raise ConfigError(
            f"{source}: {field}.base_url is not set; an openai provider needs the server's URL: "
            "https://api.openai.com/v1 for OpenAI (with an api_key), or a local server such as "
            "http://localhost:11434/v1 (Ollama) or http://localhost:8000/v1 (vLLM)"
        )
    try:
        url = httpx.URL(config.base_url)
    except httpx.InvalidURL:
        url = httpx.URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"{source}: {field}.base_url must be an http(s) URL such as "
            f"http://localhost:8000/v1 (got {config.base_url!r})"
        )
    if reach(config.base_url) != "hosted" or (config.api_key or "").strip():
        return
    written = _raw_field(raw, name, "api_key")
    variables = referenced_variables(written)
    host = _host(config.base_url)
    env_var = variables[0] if variables else HOSTED_API_KEYS[host]
    if variables:
        fix = f"set the environment variable {env_var} ({field}.api_key reads {written!r})"
    else:
        fix = f"set {field}.api_key, e.g. `api_key: ${{{env_var}}}` and export {env_var}"
    raise MissingCredentialsError(
        f"{source}: provider {name!r} uses {host}, a hosted API, but has no api_key: {fix}",
        provider=name,
        env_var=env_var,
    )


async def probe(name: str, config: ProviderConfig, http: httpx.AsyncClient, source: Path) -> None:
    """Raise `ProviderUnreachableError` unless a local provider's base URL answers HTTP.

    Any answer counts (a 401 or 404 on `/models` still means a server is there); only a failed
    connection or silence for `PROBE_TIMEOUT_S` does not.
    """
    if config.type != "openai" or not config.base_url or reach(config.base_url) != "local":
        return
    base_url = config.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    where = f"{base_url} (providers.{name}.base_url in {source})"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            response = await http.get(
                f"{base_url}/models", headers=headers, timeout=PROBE_TIMEOUT_S
            )
            await response.aclose()
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ProviderUnreachableError(
            f"the local provider {name!r} at {where} did not answer within "
            f"{PROBE_TIMEOUT_S:g} s; is its server running?",
            provider=name,
            url=base_url,
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderUnreachableError(
            f"cannot reach the local provider {name!r} at {where}: "
            f"{str(exc) or type(exc).__name__}; start its server or fix the URL",
            provider=name,
            url=base_url,
        ) from exc


def _raw_field(raw: Any, provider: str, key: str) -> Any:
    providers = raw.get("providers") if isinstance(raw, dict) else None
    section = providers.get(provider) if isinstance(providers, dict) else None
    return section.get(key) if isinstance(section, dict) else None
