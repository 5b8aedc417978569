"""`client.threads`: a thread's history (the messages its completed runs added)."""

from __future__ import annotations

from urllib.parse import quote

from runrelay.client._resources.base import Resource
from runrelay.client._transport import Request
from runrelay.errors import ValidationError
from runrelay.types import ThreadObject


def _get_request(thread_id: str, after_seq: int | None, limit: int | None) -> Request:
    if not isinstance(thread_id, str) or not thread_id.strip():
        raise ValidationError("thread_id must be a non-empty string", param="thread_id")
    params = {"after_seq": after_seq, "limit": limit}
    return Request("GET", f"/v1/threads/{quote(thread_id, safe='')}", params=params)


class Threads(Resource):
    """`client.threads` of the sync `Client`."""

    def get(
        self, thread_id: str, *, after_seq: int | None = None, limit: int | None = None
    ) -> ThreadObject:
        """The thread and a page of its messages, oldest first (`limit`, default 100): when
        `has_more`, pass `after_seq=thread.next_after_seq` for the next page. An unknown thread
        (or another tenant's) raises `NotFoundError`."""
        response = self._transport.send(_get_request(thread_id, after_seq, limit))
        return ThreadObject.model_validate(response.json())


class AsyncThreads(Resource):
    """`client.threads` of `AsyncClient`."""

    async def get(
        self, thread_id: str, *, after_seq: int | None = None, limit: int | None = None
    ) -> ThreadObject:
        async with self._atransport() as transport:
            response = await transport.send(_get_request(thread_id, after_seq, limit))
        return ThreadObject.model_validate(response.json())
