"""Error responses: every failure is `{"error": {type, code, message, param, request_id}}`.

HTTPProblem                 raised by routes: an HTTP status and the body fields (the SDK's
                            `runrelay.APIError` is what a client sees of it)
ServerError                 the server side's domain errors (runrelay/server/errors.py); their
                            kind gives the status, here and only here (`_STATUS_OF_KIND`)
RequestValidationError      FastAPI's; answered 422 naming the field and the rule
HTTPException               Starlette's (404 route, 405 …); answered in the same shape
store unavailable           Redis or the database cannot be reached (connection refused or
                            dropped, timeout, Redis still loading), or the broker refuses a task:
                            503 `store_unavailable` with Retry-After; the pools reconnect by
                            themselves once the store is back (redis-py's retry on a dropped
                            connection, SQLAlchemy's pre-ping), so the next try succeeds
anything else               a bug: 500, logged with the request id
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from runrelay.server.errors import Conflict, Invalid, NotFound, ServerError, Unauthorized
from runrelay.server.outages import TRANSIENT, is_transient

log = logging.getLogger(__name__)
# How long a client should wait before trying again while a store is down: reconnecting takes
# about that long once the store is back.
STORE_RETRY_AFTER_S = 2
# kombu's OperationalError: the broker (Redis) refused the task.
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (*TRANSIENT, BrokerError)


def is_store_outage(exc: BaseException) -> bool:
    """Whether `exc` says a store is unreachable (not a bug, not a bad request)."""
    return is_transient(exc) or isinstance(exc, BrokerError)


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
    504: "timeout_error",
}


# FastAPI's HTTPException detail when parsing the body raised something other than a JSON error.
_UNPARSABLE_BODY = "There was an error parsing the body"

# The one place the server side's domain errors get HTTP statuses.
_STATUS_OF_KIND: dict[type[ServerError], int] = {
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    Unauthorized: 401,
}


class HTTPProblem(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "type": _TYPES.get(status, "api_error"),
            "code": code,
            "message": message,
            "param": param,
            "request_id": request_id_of(request),
        }
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def store_unavailable(request: Request) -> JSONResponse:
    return error_response(
        request,
        503,
        "store_unavailable",
        "Redis or the database is unavailable; try again shortly",
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


def describe(error: Mapping[str, Any]) -> tuple[str | None, str]:
    """`(param, message)` for one pydantic error: the field it names and the rule, readable."""
    loc = [
        str(part)
        for part in error.get("loc", ())
        if part not in ("body", "query", "header", "path")
    ]
    # A validator may name the nested field it checked (e.g. `model_params.temperature`).
    param = error.get("ctx", {}).get("param") or ".".join(loc) or None
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    if error.get("type") == "json_invalid":
        return None, f"the request body is not valid JSON ({error.get('ctx', {}).get('error', '')})"
    if error.get("type") == "missing":
        return param, f"{param} is required"
    if error.get("type") == "extra_forbidden":
        return param, f"{param} is not a known field"
    if param is None:
        return None, message
    value = error.get("input")
    shown = (
        f" (got {value!r})"
        if isinstance(value, (int, float, str, bool)) and len(repr(value)) < 80
        else ""
    )
    return param, f"{param}: {message[0].lower() + message[1:]}{shown}"


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def _api_error(request: Request, exc: HTTPProblem) -> JSONResponse:
        return error_response(
            request, exc.status, exc.code, exc.message, param=exc.param, headers=exc.headers
        )

    @app.exception_handler(ServerError)
    async def _domain(request: Request, exc: ServerError) -> JSONResponse:
        status = next((s for kind, s in _STATUS_OF_KIND.items() if isinstance(exc, kind)), None)
        if status is None:  # a worker-side signal (`Fenced`) reaching a route is a bug
            return await _bug(request, exc)
        return error_response(request, status, exc.code, str(exc), param=exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        described = [describe(error) for error in exc.errors()]
        param = described[0][0] if described else None
        message = "; ".join(text for _, text in described) or "invalid request"
        code = (
            "invalid_json"
            if any(e.get("type") == "json_invalid" for e in exc.errors())
            else "validation_error"
        )
        status = 400 if code == "invalid_json" else 422
        return error_response(request, status, code, message, param=param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code == 400 and message == _UNPARSABLE_BODY:
            # FastAPI's answer when the JSON parser itself fails (e.g. RecursionError on JSON
            # nested 100,000 deep): the same error as any other unparsable body.
            code, message = "invalid_json", "the request body is not valid JSON (nested too deep)"
        return error_response(request, exc.status_code, code, message, headers=exc.headers)

    async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if not is_store_outage(exc):  # an IntegrityError, say: a bug
            return await _bug(request, exc)
        log.warning(
            "%s %s: a store is unavailable (%s: %s); answered 503",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
        )
        return store_unavailable(request)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception(
            "unhandled error in %s %s (request %s)",
            request.method,
            request.url.path,
            request_id_of(request),
        )
        return error_response(
            request, 500, "internal_error", "internal error; report it with the request id"
        )

    for kind in (*STORE_UNAVAILABLE, DBAPIError):
        app.add_exception_handler(kind, _store_unavailable)
