"""What a caller asks for, checked before anything is sent, and turned into a run request body.

`AgentRunParams` and `ModelParams` are the Mentiora SDK's; the FAOS calls take an agent name and
an input dict (an A2A `{"task": {...}}` dict is recognised).
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict

from runrelay.errors import ValidationError
from runrelay.types import TAG_PATTERN, ModelParams, MultitaskStrategy

_STRATEGIES = get_args(MultitaskStrategy)


class AgentRunParams(BaseModel):
    """One agent run (Mentiora): exactly one of `tag` or `agent_id` (+ optional `revision`),
    and a non-empty `message`. The rules are checked by `validate_params` before any request."""

    model_config = ConfigDict(extra="forbid")

    tag: str | None = None
    agent_id: str | None = None
    revision: int | None = None
    message: str | None = None
    thread_id: str | None = None
    # What to do when the thread has an active run: reject (409), enqueue (default), interrupt.
    multitask_strategy: MultitaskStrategy | None = None
    model_id: str | None = None
    model_params: ModelParams | None = None
    end_user_id: str | None = None
    metadata: dict[str, Any] | None = None
    tenant_id: str | None = None


def validate_params(params: AgentRunParams) -> None:
    """Raise `ValidationError` naming the first broken rule."""
    if params.message is None:
        raise ValidationError("message is required", param="message")
    if not params.message.strip():
        raise ValidationError("message cannot be empty", param="message")
    if (params.tag is None) == (params.agent_id is None):
        raise ValidationError(
            "give either tag or agent_id, not both"
            if params.tag is not None
            else "give either tag or agent_id (neither was given)",
            param="tag",
        )
    if params.tag is not None and not TAG_PATTERN.match(params.tag):
        raise ValidationError(
            "tag must match ^[a-z0-9][a-z0-9\\-_]*$ (lowercase letters, digits, '-' and '_', "
            f"starting with a letter or digit); got {params.tag!r}",
            param="tag",
        )
    if params.revision is not None:
        if params.agent_id is None:
            raise ValidationError("revision goes with agent_id, not tag", param="revision")
        if params.revision < 1:
            raise ValidationError(
                f"revision must be 1 or more (got {params.revision})", param="revision"
            )
    check_thread(params.thread_id, params.multitask_strategy)
    if params.model_params is not None:
        validate_model_params(params.model_params)


def validate_model_params(model: ModelParams) -> None:
    """Raise `ValidationError` if a model parameter is out of range."""
    broken = model.broken_rule()
    if broken is not None:
        param, message = broken
        raise ValidationError(message, param=param)


def check_thread(thread_id: str | None, multitask_strategy: str | None) -> None:
    """The server's rules for `thread_id` and `multitask_strategy`, checked before sending."""
    if thread_id is not None and not thread_id.strip():
        raise ValidationError("thread_id cannot be empty", param="thread_id")
    if multitask_strategy is None:
        return
    if multitask_strategy not in _STRATEGIES:
        raise ValidationError(
            f"multitask_strategy must be one of {', '.join(_STRATEGIES)} "
            f"(got {multitask_strategy!r})",
            param="multitask_strategy",
        )
    if thread_id is None:
        raise ValidationError(
            "multitask_strategy applies to a run on an existing thread: give thread_id too",
            param="multitask_strategy",
        )


def run_body(params: AgentRunParams) -> dict[str, Any]:
    """The request body of a validated `AgentRunParams`."""
    validate_params(params)
    return params.model_dump(exclude_none=True)


def invoke_body(
    agent: str,
    input: dict[str, Any] | str | None,
    *,
    tenant_id: str | None = None,
    thread_id: str | None = None,
    multitask_strategy: str | None = None,
) -> dict[str, Any]:
    """A FAOS invocation: `input` is a dict (A2A when it has a `task` key) or a message string;
    with `thread_id` the run continues that thread (see `check_thread`)."""
    if not isinstance(agent, str) or not agent.strip():
        raise ValidationError(
            "agent must be a non-empty string (a name or a shortcut)", param="agent"
        )
    body: dict[str, Any] = {"agent": agent}
    if isinstance(input, str):
        if not input.strip():
            raise ValidationError("input cannot be an empty string", param="input")
        body["message"] = input
    elif isinstance(input, dict):
        if "task" in input:
            task = input["task"]
            if not isinstance(task, dict):
                raise ValidationError("an A2A `task` must be an object", param="task")
            body["task"] = task
        else:
            body["input"] = input
    elif input is None:
        raise ValidationError("input is required (a dict, or a message string)", param="input")
    else:
        raise ValidationError(
            f"input must be a dict or a string (got {type(input).__name__})", param="input"
        )
    if tenant_id is not None:
        body["tenant_id"] = tenant_id
    check_thread(thread_id, multitask_strategy)
    if thread_id is not None:
        body["thread_id"] = thread_id
    if multitask_strategy is not None:
        body["multitask_strategy"] = multitask_strategy
    return body
