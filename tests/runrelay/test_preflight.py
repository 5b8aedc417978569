"""Which provider base URLs count as hosted (need a key) or local (must answer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runrelay.agent.config import ProviderConfig
from runrelay.embedded._preflight import check_provider, reach
from runrelay.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com/v1", "hosted"),
        ("https://API.OpenAI.com./v1", "hosted"),
        ("https://openrouter.ai/api/v1", "hosted"),
        ("http://localhost:11434/v1", "local"),
        ("http://127.0.0.5:8000/v1", "local"),
        ("http://[::1]:8000/v1", "local"),
        ("http://10.1.2.3/v1", "local"),
        ("http://172.20.0.4:8000/v1", "local"),
        ("http://192.168.1.9:1234/v1", "local"),
        ("http://169.254.10.1/v1", "local"),
        ("http://ollama:11434/v1", "local"),  # a compose service
        ("http://vllm.default.svc.cluster.local/v1", "local"),
        ("http://gpu.internal:8000/v1", "local"),
        ("https://llm.example.com/v1", "remote"),
        ("http://8.8.8.8/v1", "remote"),
    ],
)
def test_base_urls_are_hosted_local_or_remote(url: str, expected: str) -> None:
    assert reach(url) == expected


@pytest.mark.parametrize("base_url", ["localhost:8000", "ftp://files.example/v1", "http://"])
def test_a_base_url_that_is_not_http_is_a_config_error(base_url: str) -> None:
    config = ProviderConfig(type="openai", base_url=base_url)

    with pytest.raises(ConfigError, match=r"cfg\.yaml: providers\.p\.base_url must be an http"):
        check_provider("p", config, None, Path("cfg.yaml"))


def test_remote_and_local_servers_need_no_key() -> None:
    for url in ("https://llm.example.com/v1", "http://localhost:8000/v1"):
        check_provider("p", ProviderConfig(type="openai", base_url=url), None, Path("c.yaml"))
