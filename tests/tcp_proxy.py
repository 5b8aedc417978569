"""A TCP proxy in front of the shim that can break connections the way networks do.

- `cut()` resets every live connection (both sides), mid-response.
- `drop_responses(n)`: the next `n` connections reach the server, but the proxy swallows the
  server's answer and closes the client's side as soon as the answer starts: the server did the
  work, the client saw a dropped connection.
- `refuse()`: new connections are closed as soon as they are accepted (the server is down for
  whoever connects now), until `refuse(False)`.
- `stall()`: the connections open now go silent, as when a peer is lost without a FIN (a
  failover, a partition): what they carry is swallowed and nothing answers; new connections
  work.
- `requests` records the request line of every request (e.g. `POST /v1/runs HTTP/1.1`).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

_METHODS = {b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"}


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests: list[str] = []
        self._drop_next = 0
        self._refusing = False
        self._live: set[socket.socket] = set()
        self._stalled: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_responses(self, n: int) -> None:
        with self._lock:
            self._drop_next = n

    def refuse(self, refusing: bool = True) -> None:
        self._refusing = refusing

    def through(self, url: str) -> str:
        """`url` (e.g. a `redis://` one) with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{self.port}").geturl()

    def stall(self) -> int:
        """Silence every live connection (kept open); returns how many."""
        with self._lock:
            self._stalled |= self._live
            return len(self._live) // 2

    def cut(self) -> int:
        """Reset every live connection; returns how many were cut."""
        with self._lock:
            live = list(self._live)
            self._live.clear()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        return len(live) // 2

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                drop = self._drop_next > 0
                self._drop_next -= 1 if drop else 0
                self._live.update((client, server))
            threading.Thread(
                target=self._pump, args=(client, server, True, drop), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, False, drop), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool, drop: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and data.split(b" ", 1)[0] in _METHODS:
                    with self._lock:
                        self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                if drop and not upstream:
                    break  # the server answered: swallow it and drop the client
                if src in self._stalled:
                    continue  # gone silent: nothing reaches the other side
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._live -= {src, dst}
                self._stalled -= {src, dst}


@contextmanager
def tcp_proxy(base_url: str) -> Iterator[TcpProxy]:
    """A proxy to `base_url` (`http://host:port`; `redis://host:port/db` too, its path ignored)."""
    parts = urlsplit(base_url)
    assert parts.hostname and parts.port, f"no host and port in {base_url!r}"
    proxy = TcpProxy(parts.hostname, parts.port)
    try:
        yield proxy
    finally:
        proxy.close()
