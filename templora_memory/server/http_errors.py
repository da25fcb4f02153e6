"""Every error the server answers, in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}.

Bad input is a 4xx naming the parameter; the server's own trouble is a 5xx whose traceback goes to the log,
never to the client. Messages quote at most a short prefix of what the client sent.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from templora_memory.errors import (
    AgentBusyError,
    ConfigError,
    DamagedAgentError,
    InvalidInputError,
    LeaseLostError,
    StoreError,
    StoreUnavailableError,
    TemploraError,
    WriteStopped,
)

log = logging.getLogger("templora_memory.server")

_TYPES = {429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "server_error"}
"""OpenAI's error type per status; every other 4xx is an "invalid_request_error"."""


class ApiError(HTTPException):
    """An error answered to the client as it is (a Starlette `HTTPException`, so FastAPI passes it through)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`status` and `message` as the client reads them; `param` names the offending parameter."""
        super().__init__(status, message, headers)
        self.param, self.code = param, code

    def body(self) -> dict[str, Any]:
        """The JSON the client receives."""
        return error_body(self.status_code, str(self.detail), self.param, self.code)

    def response(self) -> JSONResponse:
        """The error as a JSON response, with its headers (e.g. Retry-After)."""
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for `status`."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_library(exc: TemploraError, param: str | None = None) -> ApiError:
    """A library error as the client sees it: bad input or configuration is a 400; an agent another process writes
    a 409; a store that cannot be reached, or an agent whose stored files are damaged, a 503 (with Retry-After
    where retrying can help). Store errors are logged in full and answered in words that show no path or host."""
    if isinstance(exc, (InvalidInputError, ConfigError)):
        return ApiError(400, str(exc), param=param or getattr(exc, "param", None))
    for kind, (status, code, retry, message) in _KNOWN_ERRORS.items():
        if isinstance(exc, kind):
            log.warning("store: %s: %s", type(exc).__name__, exc)
            return ApiError(status, message, code=code, headers={"Retry-After": retry} if retry else None)
    log.error("library error", exc_info=exc)
    return ApiError(500, "the server failed to handle this request; its log has the details", code="server_error")


_KNOWN_ERRORS = {
    AgentBusyError: (
        409,
        "agent_busy",
        "1",
        "another server process is writing this agent (it holds the agent's lease); retry shortly, or send this "
        "agent's calls to the process that holds it",
    ),
    LeaseLostError: (
        409,
        "agent_moved",
        "1",
        "another server process took this agent over; this request's changes were not kept. Retry: the agent is "
        "loaded afresh from its last commit",
    ),
    StoreUnavailableError: (
        503,
        "store_unavailable",
        "5",
        "the agent store cannot be reached right now (or this server could not renew its hold on the agent); "
        "nothing was lost, retry shortly",
    ),
    DamagedAgentError: (
        503,
        "agent_damaged",
        None,
        "this agent's memory is damaged in the store and has no good version to fall back to; the server's log "
        "names the files (restore them from a backup, or DELETE the agent to start it afresh)",
    ),
    WriteStopped: (
        503,
        "stopped",
        "1",
        "the request was stopped before its reply (it timed out, or the server is shutting down); its turns are kept "
        "and written later",
    ),
    StoreError: (503, "store_error", None, "the agent store refused this operation; the server's log has the details"),
}
"""Status, code, Retry-After and the client's message per store or stop error (the first that matches wins)."""


def install_handlers(app: FastAPI) -> None:
    """Answer every exception in OpenAI's shape: HTTP errors as they are, validation as 400, the rest as 500."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TemploraError, _library_error)
    app.add_exception_handler(Exception, _unexpected)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """ApiError as it is; Starlette's own (404, 405) in the same shape."""
    if isinstance(exc, ApiError):
        return exc.response()
    message = f"unknown route {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    return ApiError(exc.status_code, message, headers=exc.headers).response()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that is not JSON, or not the expected shape: 400 naming the parameter (OpenAI answers 400, not 422)."""
    return validation_problem(exc.errors(), exc.body).response()


async def _library_error(request: Request, exc: TemploraError) -> JSONResponse:
    """A library error that reached a route unconverted."""
    return from_library(exc).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered without it."""
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "the server failed to handle this request; its log has the details").response()


def validation_problem(errors: list[dict[str, Any]], body: Any) -> ApiError:
    """The first pydantic error as one readable 400: which parameter, and what was wrong with it."""
    error = errors[0]
    if error["type"] == "json_invalid":
        reason = error.get("ctx", {}).get("error", "malformed")
        message = f"the request body is not valid JSON ({reason}); send one JSON object"
        return ApiError(400, message, code="invalid_json")
    param = _param(error["loc"][1:], body)
    if param is None:
        return ApiError(400, "the request body must be a JSON object (Content-Type: application/json)")
    reason = error["msg"].removeprefix("Value error, ")
    return ApiError(400, f"invalid '{param}': {reason}", param=param, code="invalid_value")


def _param(loc: tuple[Any, ...], body: Any) -> str | None:
    """The parameter's path in OpenAI's notation ("messages.[0].role"), following `loc` through the JSON sent
    (pydantic's union tags, such as "str", are not parameters and end the path)."""
    parts, value = [], body
    for part in loc:
        if isinstance(value, dict) and isinstance(part, str):
            parts.append(part)
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int):
            parts.append(f"[{part}]")
            value = value[part] if part < len(value) else None
        else:
            break
    return ".".join(parts) or None
