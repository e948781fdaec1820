"""The API's one middleware: auth against the route's scope, and every error answered as
problem+json (bad input never becomes a 5xx)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import NotFound, Rejected, StoreError
from ..state import AUTH, DISPATCHER, PRINCIPAL
from . import observability
from .problem import problem

log = logging.getLogger("dispatcher.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the token against the route's scope, run the handler, and answer every error
    as problem+json; bad input never becomes a 5xx. An error answered before the body was
    read closes the connection rather than read the rest of it.

    One middleware for what could be three (errors, auth, counting refused messages): every
    level of middleware costs every request a coroutine and a resumption."""
    try:
        refused = _authorize(request)
        if refused is not None:
            return refused
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects
        _count_rejection(request, exc)
        response = _problem_for(exc)
    except Exception as exc:
        _count_rejection(request, exc)
        response = _problem_for(exc)
    if not request.content.is_eof():
        response.force_close()
    return response


def _count_rejection(request: web.Request, exc: Exception) -> None:
    if getattr(request.match_info.handler, "__scope__", None) == "produce":
        observability.count_rejection(request.config_dict[DISPATCHER].metrics, exc)


def _problem_for(exc: Exception) -> web.Response:
    if isinstance(exc, Rejected):
        return problem(exc.status, exc.detail, pointer=exc.pointer, retry_after=exc.retry_after)
    if isinstance(exc, NotFound):
        return problem(404, str(exc))
    if isinstance(exc, StoreError):
        # The store failed an operator's read or bulk action; ingest maps this to
        # Unavailable itself. Either way: try again later, not "the server is broken".
        log.warning("store error in %s: %s", exc.__class__.__name__, exc)
        return problem(503, f"the store is unavailable: {exc}", retry_after=5.0)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return problem(413, "the body is larger than server.max_body_bytes")
    if isinstance(exc, web.HTTPException):
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem(exc.status, exc.reason, headers=headers)
    if isinstance(exc, UnicodeDecodeError):
        return problem(400, f"invalid UTF-8: {exc.reason}")
    log.error("unhandled error in %s %s", exc.__class__.__name__, exc, exc_info=exc)
    return problem(500, "internal error; the server log has the details")


def _authorize(request: web.Request) -> web.Response | None:
    """None if the request may go on (and PRINCIPAL says who sent it), else the 401/403."""
    scope = _scope_of(request)
    if scope is None:
        return None
    principal = request.app[AUTH].from_header(request.headers.get("Authorization"))
    if principal is None:
        return problem(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not principal.allows(scope):
        return problem(403, f"this token lacks the {scope!r} scope")
    request[PRINCIPAL] = principal
    return None


def _scope_of(request: web.Request) -> str | None:
    info = request.match_info
    if info.http_exception is not None:
        return None  # 404/405: let the router answer
    return getattr(info.handler, "__scope__", "admin")  # unmarked handlers: admin only
