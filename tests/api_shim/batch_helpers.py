"""What the batch tests share: fast and slow agents published for a test, uploads, polling."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx

from runrelay.agent.config import Registry, load_config
from runrelay.server.revisions import AgentCatalog
from runrelay.server.settings import Settings
from runrelay.server.store import Store

AGENTS = """
modules:
  - key: {module}
    name: Batch Tests
    agents:
      - name: quick
        model: scripted-quick
        script:
          turns:
            - text: "done"
              chunks: 1
      - name: slow
        model: scripted-slow
        script:
          delay_ms: {slow_ms}
          turns:
            - text: "slowly done"
              chunks: 2
"""


def publish_agents(store: Store, settings: Settings, tmp: Any, slow_ms: int = 500) -> str:
    """Publish `<module>.quick` and `<module>.slow` as database revisions; returns the module."""
    module = f"bat{secrets.token_hex(4)}"
    path = tmp / f"{module}.yaml"
    path.write_text(AGENTS.format(module=module, slow_ms=slow_ms))
    catalog = AgentCatalog(store.engine, Registry.from_file(settings.agents_config, {}))
    catalog.publish(load_config(path, {}))
    return module


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def submit(client: httpx.Client, lines: list[dict[str, Any]], **params: Any) -> httpx.Response:
    return client.post(
        "/v1/batches",
        content=jsonl(lines),
        params=params,
        headers={"Content-Type": "application/jsonl"},
    )


def wait_for(
    client: httpx.Client,
    batch_id: str,
    done: Callable[[dict[str, Any]], bool],
    *,
    timeout_s: float = 120,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.get(f"/v1/batches/{batch_id}").json()
        if on_poll is not None:
            on_poll(batch)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch['status']}: {batch}"
        time.sleep(0.2)


def ended(batch: dict[str, Any]) -> bool:
    return batch["status"] in ("completed", "cancelled", "expired", "failed")


def rows(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    return [json.loads(line) for line in response.text.splitlines()]


def counts_add_up(batch: dict[str, Any]) -> None:
    counts = batch["request_counts"]
    parts = ("queued", "running", "completed", "failed", "cancelled", "expired")
    assert sum(counts[p] for p in parts) == counts["total"], counts
    assert all(counts[p] >= 0 for p in parts), counts
