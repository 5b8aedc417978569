"""Reading a batch upload: JSONL streamed from the request (never whole in memory) or a
`{"requests": [...]}` JSON body, validated line by line and stored in chunks.

A line is one run request (the body of `POST /v1/runs`) with a `custom_id` unique in the batch
— or `{"custom_id", "body": {...}}` as the model providers' batch files have it — on top of the
batch's defaults (`agent`, `model_params`, `metadata`). A bad line is reported with its number,
its `custom_id` and the field and rule; the caller refuses the whole batch or skips them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from api_shim.errors import HTTPProblem, describe
from api_shim.quotas import reserve_tokens
from api_shim.state import ShimState
from runrelay.agent.config import AgentNotFound, AgentSpec
from runrelay.batch_types import LineError
from runrelay.server.batches import PENDING, parse_window
from runrelay.server.revisions import RevisionNotFound
from runrelay.types import ModelParams, RunCreate

CHUNK_LINES = 1000
# Errors kept to report (all are counted): enough to fix a file, bounded in memory.
MAX_REPORTED_ERRORS = 1000
# One line is one run request: held whole while it is read, so it has a bound of its own.
MAX_LINE_BYTES = 10 * 1024 * 1024
_NOT_IN_A_LINE = ("tenant_id", "idempotency_key", "thread_id", "multitask_strategy", "webhook")
_AGENT_FIELDS = ("agent", "agent_id", "revision", "tag")


class BatchOptions(BaseModel):
    """The batch-level part of `POST /v1/batches` (query string for JSONL, body for JSON)."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(None, min_length=1, max_length=200)
    agent_id: str | None = Field(None, min_length=1, max_length=200)
    revision: int | None = Field(None, ge=1)
    tag: str | None = Field(None, min_length=1, max_length=100)
    model_params: ModelParams | None = None
    metadata: dict[str, Any] | None = None
    completion_window: str = Field("24h", max_length=20)
    webhook: str | None = Field(None, pattern=r"^https?://", max_length=2000)
    on_invalid: Literal["fail", "skip"] = "fail"
    tenant_id: str | None = Field(None, min_length=1, max_length=100)

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_window(value)
        return value

    def defaults(self) -> dict[str, Any]:
        """What every line starts from."""
        given = self.model_dump(include=set(_AGENT_FIELDS), exclude_none=True)
        if self.model_params is not None:
            given["model_params"] = self.model_params.model_dump(exclude_none=True)
        return given


class JsonBatch(BatchOptions):
    requests: list[Any] = Field(min_length=1)


@dataclass
class LineValidator:
    """Validates lines one chunk at a time (in a worker thread: it reads the agent catalog);
    keeps the custom_ids seen, the agents resolved and the first errors."""

    state: ShimState
    batch_id: str
    options: BatchOptions
    valid: int = 0
    invalid: int = 0
    errors: list[LineError] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    _agents: dict[tuple[Any, ...], AgentSpec | str] = field(default_factory=dict)

    def validate(self, lines: Iterable[tuple[int, Any]]) -> list[dict[str, Any]]:
        """Rows for `batch_items` of the good lines of `lines` ((number, raw bytes or parsed))."""
        rows = []
        for number, raw in lines:
            try:
                rows.append(self._row(number, raw))
                self.valid += 1
            except _LineRefused as refused:
                self.invalid += 1
                if len(self.errors) < MAX_REPORTED_ERRORS:
                    self.errors.append(refused.error)
        return rows

    def _row(self, number: int, raw: Any) -> dict[str, Any]:
        if isinstance(raw, bytes):
            try:
                raw = json.loads(raw)
            except ValueError as exc:
                raise _LineRefused(number, None, None, f"not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise _LineRefused(number, None, None, "must be a JSON object")
        custom_id = raw.get("custom_id")
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 64:
            shown = None if not isinstance(custom_id, str) else custom_id[:64]
            raise _LineRefused(
                number, shown, "custom_id", "custom_id is required: a string of 1 to 64 characters"
            )
        earlier = self._seen.get(custom_id)
        if earlier is not None:
            raise _LineRefused(
                number, custom_id, "custom_id", f"custom_id is already used by line {earlier}"
            )
        body = self._body(number, custom_id, raw)
        agent = self._agent(number, custom_id, body)
        self._seen[custom_id] = number
        return {
            "batch_id": self.batch_id,
            "line": number,
            "custom_id": custom_id,
            "status": PENDING,
            "request": body.model_dump(mode="json", exclude_none=True, exclude={"task"}),
            "agent_name": agent.name,
            "agent_id": agent.id,
            "agent_revision": agent.revision,
            "reserve_tokens": reserve_tokens(body, agent, self.state.settings),
            "run_id": None,
            "error": None,
        }

    def _body(self, number: int, custom_id: str, raw: dict[str, Any]) -> RunCreate:
        given: dict[str, Any] = raw["body"] if isinstance(raw.get("body"), dict) else raw
        fields = {k: v for k, v in given.items() if k not in ("custom_id", "method", "url")}
        for name in _NOT_IN_A_LINE:
            if name in fields:
                raise _LineRefused(
                    number, custom_id, name, f"{name} is not allowed in a batch line"
                )
        defaults = self.options.defaults()
        merged = dict(fields)
        if not any(name in fields for name in _AGENT_FIELDS):
            merged.update({k: v for k, v in defaults.items() if k in _AGENT_FIELDS})
        for name, base in (
            ("model_params", defaults.get("model_params")),
            ("metadata", self.options.metadata),
        ):
            own = fields.get(name)
            if base and (own is None or isinstance(own, dict)):
                merged[name] = {**base, **(own or {})}
        try:
            body = RunCreate.model_validate(merged)
        except ValidationError as exc:
            param, message = describe(exc.errors()[0])
            raise _LineRefused(number, custom_id, param, message) from None
        limit = self.state.settings.max_run_timeout_s
        if body.timeout_s is not None and body.timeout_s > limit:
            raise _LineRefused(
                number, custom_id, "timeout_s", f"timeout_s must be at most {limit:g} s"
            )
        return body

    def _agent(self, number: int, custom_id: str, body: RunCreate) -> AgentSpec:
        key = (body.agent, body.agent_id, body.revision, body.tag)
        if key not in self._agents:
            self._agents[key] = self._resolve(body)
        found = self._agents[key]
        if isinstance(found, str):
            param = "tag" if body.tag else "agent_id" if body.agent_id else "agent"
            raise _LineRefused(number, custom_id, param, found)
        return found

    def _resolve(self, body: RunCreate) -> AgentSpec | str:
        catalog = self.state.catalog
        try:
            return catalog.for_request(body)
        except (AgentNotFound, RevisionNotFound) as exc:
            return str(exc)


class _LineRefused(Exception):
    def __init__(self, line: int, custom_id: str | None, param: str | None, message: str) -> None:
        super().__init__(message)
        self.error = LineError(
            line=line, custom_id=custom_id, param=param, message=f"line {line}: {message}"
        )


async def jsonl_lines(
    chunks: AsyncIterator[bytes], *, max_bytes: int, max_lines: int
) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Numbered non-blank lines of a streamed body, a list at a time; 413 past the limits."""
    size, number, rest = 0, 0, b""
    batch: list[tuple[int, bytes]] = []
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise HTTPProblem(
                413, "body_too_large", f"the batch file is larger than {max_bytes} bytes"
            )
        *complete, rest = (rest + chunk).split(b"\n")
        if len(rest) > MAX_LINE_BYTES:
            raise HTTPProblem(
                413,
                "line_too_long",
                f"line {number + len(complete) + 1} is longer than {MAX_LINE_BYTES} bytes",
            )
        for line in complete:
            number += 1
            if line.strip():
                batch.append((number, line))
        if number > max_lines:
            raise HTTPProblem(413, "too_many_lines", f"a batch has at most {max_lines} lines")
        if len(batch) >= CHUNK_LINES:
            yield batch
            batch = []
    if rest.strip():
        number += 1
        batch.append((number, rest))
    if number > max_lines:
        raise HTTPProblem(413, "too_many_lines", f"a batch has at most {max_lines} lines")
    if batch:
        yield batch


async def store_lines(
    state: ShimState, validator: LineValidator, chunks: AsyncIterator[list[tuple[int, Any]]]
) -> None:
    """Validate and store every chunk. Once a line is bad and the batch is refused whole
    (`on_invalid: fail`), the rest is only validated (to report every bad line), not stored."""
    store = state.batches
    async for chunk in chunks:
        rows = await asyncio.to_thread(validator.validate, chunk)
        if validator.invalid and validator.options.on_invalid == "fail":
            continue
        await asyncio.to_thread(store.add_items, rows)
