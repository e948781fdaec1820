"""Requests aiohttp's own parser refuses (a CR, LF or NUL in a header value, a bad request
line, a Content-Length that is not a number) as problem+json, like every other error.

These never reach the application, its middleware or its signals: aiohttp answers them in
`RequestHandler.handle_error` with a text/plain echo of the offending line, and logs it at
ERROR with a traceback (aiohttp issue #3287 asks for a hook; there is none). The echoed line
may be an `Authorization` header, so neither the answer nor the log repeats it here.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web, web_protocol

from .problem import problem

log = logging.getLogger("dispatcher.http")

_aiohttp_handle_error = web_protocol.RequestHandler.handle_error


def _handle_error(
    self: web_protocol.RequestHandler,
    request: Any,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    if status >= 500 or request.writer.output_size > 0:
        # A failure of ours (aiohttp logs it with its traceback), or an answer already
        # under way (aiohttp drops the connection).
        return _aiohttp_handle_error(self, request, status, exc, message)
    reason = type(exc).__name__ if exc is not None else "malformed request"
    log.debug("refused a malformed HTTP request from %s: %s", request.remote, reason)
    response = problem(status, f"the HTTP request is malformed ({reason})")
    response.force_close()  # the parser has lost its place in the stream
    return response


def install() -> None:
    """Answer malformed requests as problem+json in every aiohttp server of this process
    (idempotent). A class attribute, as aiohttp creates one handler per connection itself,
    so only `dispatcher serve` calls this: a program that embeds the app keeps aiohttp's."""
    web_protocol.RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]


def uninstall() -> None:
    """aiohttp's own handler again (for tests)."""
    web_protocol.RequestHandler.handle_error = _aiohttp_handle_error  # type: ignore[method-assign]
