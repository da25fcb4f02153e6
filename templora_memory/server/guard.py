"""ASGI middleware run before any route: the bearer API key (when one is set) and the request body size limit.

The key is compared in constant time (`hmac.compare_digest`). A body announced larger than the limit is refused
before it is read; a chunked one is counted as it arrives and refused once it passes the limit (413 either way).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from templora_memory.server.http_errors import ApiError

OPEN_PATHS = frozenset({"/health"})
"""Paths answered without the API key (they reveal nothing but that the server is up)."""


class Guard:
    """Refuses requests without the right key, and bodies over the limit for their path."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int, max_import_bytes: int) -> None:
        """Wrap `app`; `api_key` None means no key is needed."""
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._limits = (max_body_bytes, max_import_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse now (401, 413) or pass the request on with its body counted."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self._limits[1] if scope["path"].endswith("/import") else self._limits[0]
        try:
            self._check_key(scope["path"], headers.get(b"authorization"))
            _check_length(headers.get(b"content-length"), limit)
        except ApiError as refused:
            await refused.response()(scope, receive, send)
            return
        await self.app(scope, _counted(receive, limit), send)

    def _check_key(self, path: str, authorization: bytes | None) -> None:
        """401 unless the request carries `Authorization: Bearer <key>` (when the server has a key)."""
        if self._key is None or path in OPEN_PATHS:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        scheme, _, credentials = (authorization or b"").strip().partition(b" ")
        if scheme.lower() != b"bearer":  # the scheme is case-insensitive (RFC 9110, 11.1)
            message = "no API key: send the header 'Authorization: Bearer <key>' (the key the server was started with)"
            raise ApiError(401, message, code="invalid_api_key", headers=challenge)
        if not hmac.compare_digest(credentials.strip(), self._key):
            raise ApiError(401, "incorrect API key", code="invalid_api_key", headers=challenge)


def _check_length(content_length: bytes | None, limit: int) -> None:
    """413 when the announced body is over the limit; 400 when the announcement is not a number."""
    if content_length is None:
        return
    if not content_length.isdigit():
        raise ApiError(400, "the Content-Length header is not a number")
    if int(content_length) > limit:
        raise _too_large(int(content_length), limit)


def _counted(receive: Receive, limit: int) -> Receive:
    """`receive` that raises 413 once the body read so far passes `limit` (for bodies sent in chunks)."""
    seen = 0

    async def counted() -> Message:
        """The next message, its bytes added to the count."""
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _too_large(seen, limit)
        return message

    return counted


def _too_large(size: int, limit: int) -> ApiError:
    """The 413, naming the limit and the option that sets it."""
    return ApiError(
        413,
        f"the request body ({size} bytes or more) is over the server's limit of {limit} bytes "
        "(--max-body-bytes; --max-import-bytes for imports)",
        code="body_too_large",
    )
