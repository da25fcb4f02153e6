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

from templora_memory.errors import AgentBusyError, ConfigError, InvalidInputError, LeaseLostError, TemploraError

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
    """A library error as the client sees it: bad input or configuration is a 400, an agent another process writes a
    409 with Retry-After, anything else a logged 500."""
    if isinstance(exc, (InvalidInputError, ConfigError)):
        return ApiError(400, str(exc), param=param)
    if isinstance(exc, (AgentBusyError, LeaseLostError)):  # another process writes the agent: retry soon
        code = "agent_busy" if isinstance(exc, AgentBusyError) else "agent_moved"
        return ApiError(409, str(exc), code=code, headers={"Retry-After": "1"})
    log.error("library error", exc_info=exc)
    return ApiError(500, "the server failed to handle this request; its log has the details", code="server_error")


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
