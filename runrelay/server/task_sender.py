"""A run's Celery task, sent by name (the API, the worker's requeues and hand-backs): the sender
never imports the worker's code."""

from __future__ import annotations

import base64
import json
from typing import Any
from uuid import uuid4

from celery import Celery
from kombu import serialization
from redis.asyncio import Redis

from runrelay.server.keys import DELIVER_WEBHOOK_TASK, EXECUTE_RUN_TASK
from runrelay.server.settings import Settings
from runrelay.server.tables import RunRef


class TaskSender:
    """Enqueues runs (and webhook deliveries) by task name.

    `send` is Celery's `send_task` (blocking: from a thread). `send_async` puts the same
    message on the same Redis list from the loop, with no thread hop: Celery builds the task
    message (protocol 2, `create_task_message`) and kombu's Redis envelope around it is
    written here, as kombu's Redis transport writes it for a direct queue (base64 body,
    delivery info, one LPUSH to the queue's list under the broker's key prefix; priority 0, the
    list without a priority suffix). A test holds the two byte for byte but for their ids."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self._celery = Celery("runrelay-sender", set_as_current=False)
        self._celery.conf.update(settings.celery_config())
        self._queue = settings.task_queue
        self._control_queue = settings.control_queue
        self._redis = redis
        self._key_prefix = settings.redis_prefix

    def send(self, run_id: str, about: RunRef | None = None) -> None:
        """Enqueue the run. `about`: a new run's identity, so that the worker need not read
        the run before it starts it (`RunRef`)."""
        kwargs = _about(about)
        self._celery.send_task(EXECUTE_RUN_TASK, args=[run_id], kwargs=kwargs, queue=self._queue)

    async def send_async(self, run_id: str, about: RunRef | None = None) -> None:
        """`send`, awaited on the loop, on the Redis client given at construction."""
        await self._redis.lpush(*self.run_message(run_id, about))

    def run_message(self, run_id: str, about: RunRef | None = None) -> tuple[str, str]:
        """The Redis list and the payload `send` pushes, for a caller that pushes it in a
        round trip of its own (`Lifecycle.create`)."""
        return self.message(EXECUTE_RUN_TASK, [run_id], _about(about), self._queue)

    def message(
        self, name: str, args: list[Any], kwargs: dict[str, Any], queue: str
    ) -> tuple[str, str]:
        """The Redis list and the payload that `send_task(name, args, kwargs, queue=queue)`
        pushes."""
        celery = self._celery
        task_id = str(uuid4())
        headers, properties, body, _ = celery.amqp.create_task_message(
            task_id,
            name,
            args,
            kwargs,
            reply_to=celery.thread_oid,
            ignore_result=None,
            argsrepr=_short_repr(args, celery.amqp.argsrepr_maxsize),
            kwargsrepr=_short_repr(kwargs, celery.amqp.kwargsrepr_maxsize),
        )
        serialize: Any = serialization.dumps  # kombu ships no type hints
        content_type, content_encoding, data = serialize(body, celery.conf.task_serializer)
        envelope = {
            "body": base64.b64encode(data.encode() if isinstance(data, str) else data).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": {
                **properties,
                "delivery_mode": 2,  # persistent: Celery's default for its queues
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid4()),
            },
        }
        return self._key_prefix + queue, json.dumps(envelope)

    def send_delivery(self, delivery_id: str) -> None:
        """Webhooks (issue 12): a delivery attempt, on the workers' control queue."""
        self._celery.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=self._control_queue)

    def close(self) -> None:
        self._celery.close()


def _short_repr(value: object, maxsize: int) -> str | None:
    """What Celery's `saferepr` gives for a task's arguments (ids and short strings, well under
    its size limit): their `repr`, ~30 µs less per message; None (Celery's own, truncated) for a
    longer one."""
    text = repr(value)
    return text if len(text) <= maxsize else None


def _about(about: RunRef | None) -> dict[str, Any]:
    return {} if about is None else {"about": about.to_message()}
