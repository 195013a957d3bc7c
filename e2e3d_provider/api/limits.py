"""Bounds on what a request to the results API may cost: its body's size, and the size of a 422's answer.

The API takes small JSON bodies only (upload grants, commits; the images themselves go straight to object
storage through pre-signed URLs), so a body over :data:`MAX_REQUEST_BYTES` is refused with 413 before it is
read whole: by its ``Content-Length``, or, for a chunked body, as soon as what was read passes the bound.
A validation error names where and what, never echoes the input (FastAPI's default answer repeats it).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from e2e3d_provider.api.errors import error_response

#: the largest request body the API reads (a grant for thousands of files is a few hundred kB)
MAX_REQUEST_BYTES = 1024 * 1024
#: at most this many validation errors are described, each message cut to this many characters
MAX_ERRORS, MAX_MESSAGE = 20, 200


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``limit`` bytes, declared or read.

    A body without a ``Content-Length`` (chunked) is read here first, at most ``limit`` bytes of it, then
    handed to the app as it came: an exception raised while the app parses a body becomes FastAPI's 400,
    so the bound must be enforced before the app reads anything."""

    def __init__(self, app: ASGIApp, limit: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.limit:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server delivers no more than it declared
            return
        buffered: list[Message] = []
        received = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body"):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body over {self.limit} bytes: the API takes small JSON bodies (images go to storage)"
        await error_response(413, "body_too_large", detail)(scope, receive, send)


async def validation_failed(request: Request, err: Exception) -> JSONResponse:
    """422 naming each problem's location and kind, without the input it was given (bounded in size)."""
    assert isinstance(err, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {"loc": list(e.get("loc", ()))[:10], "msg": str(e.get("msg", ""))[:MAX_MESSAGE], "type": e.get("type")}
        for e in err.errors()[:MAX_ERRORS]
    ]
    return error_response(422, "validation_failed", errors, errors=len(err.errors()))
