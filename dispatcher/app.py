"""The aiohttp application: API routes, auth and error middleware, and the Dispatcher's
lifecycle in a cleanup context (started before the first request, drained at shutdown)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from . import api, observability
from .auth import Authenticator
from .config import Settings
from .dispatcher import Dispatcher
from .errors import NotFound, Rejected
from .problem import problem
from .state import AUTH, DISPATCHER

log = logging.getLogger("dispatcher.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes problem+json; bad input never becomes a 5xx."""
    try:
        return await handler(request)
    except Rejected as exc:
        return problem(exc.status, exc.detail, pointer=exc.pointer, retry_after=exc.retry_after)
    except NotFound as exc:
        return problem(404, str(exc))
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "the body is larger than server.max_body_bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return problem(exc.status, exc.reason, headers=headers)
    except UnicodeDecodeError as exc:
        return problem(400, f"invalid UTF-8: {exc.reason}")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    scope = _scope_of(request)
    if scope is None:
        return await handler(request)
    principal = request.app[AUTH].from_header(request.headers.get("Authorization"))
    if principal is None:
        return problem(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    if not principal.allows(scope):
        return problem(403, f"this token lacks the {scope!r} scope")
    request["principal"] = principal
    return await handler(request)


def _scope_of(request: web.Request) -> str | None:
    info = request.match_info
    if info.http_exception is not None:
        return None  # 404/405: let the router answer
    return getattr(info.handler, "__scope__", "admin")  # unmarked handlers: admin only


def create_app(
    settings: Settings,
    *,
    dispatcher: Dispatcher | None = None,
    authenticator: Authenticator | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[error_middleware, auth_middleware],
    )
    app[DISPATCHER] = dispatcher or Dispatcher(settings)
    app[AUTH] = authenticator or Authenticator(settings.auth, os.environ)
    app.cleanup_ctx.append(_run_dispatcher)
    api.add_routes(app)
    observability.setup(app)  # /metrics, /debug/tasks; request metrics and SERVER spans
    __import__("console").setup(app)  # the edge mounts the console; the core never imports it
    return app


async def _run_dispatcher(app: web.Application) -> AsyncIterator[None]:
    dispatcher = app[DISPATCHER]
    if not dispatcher.started:
        await dispatcher.start()
    yield
    await dispatcher.stop()
