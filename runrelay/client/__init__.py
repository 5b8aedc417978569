"""The client SDK: `Client`, `AsyncClient`, self-resuming event streams, and the typed responses
(FAOS, Mentiora). Modules named `_x` are internal; import from here or from `runrelay`."""

from runrelay.client._client import AsyncClient, Client
from runrelay.client._streaming import EventStream

__all__ = ["AsyncClient", "Client", "EventStream"]
