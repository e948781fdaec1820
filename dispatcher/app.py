"""The whole web application: the HTTP API, the console and the Dispatcher's lifecycle in a
cleanup context (started before the first request, drained at shutdown).

This is the one module that composes the API (`dispatcher.http`) and the console; neither
imports the other, and nothing below them imports either (the layers in pyproject.toml).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from aiohttp import web

import console

from .auth import Authenticator
from .config import Settings
from .dispatcher import Dispatcher
from .http import api, observability, routes
from .http.middleware import edge_middleware
from .state import AUTH, DISPATCHER


def create_app(
    settings: Settings,
    *,
    dispatcher: Dispatcher | None = None,
    authenticator: Authenticator | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[edge_middleware],
        # A connection that has not sent a complete request line and headers this long
        # after opening (or after its last response) is closed: slow headers are cut off.
        # Slow bodies are bounded in ingest.read_body.
        handler_args={"keepalive_timeout": settings.server.request_timeout},
    )
    app[DISPATCHER] = dispatcher or Dispatcher(settings)
    app[AUTH] = authenticator or Authenticator(settings.auth, os.environ)
    app.cleanup_ctx.append(_run_dispatcher)
    app[api.SINGLES] = singles = api.Singles(app[DISPATCHER])
    app.cleanup_ctx.append(singles.run)  # after the dispatcher: stops before it
    routes.add_routes(app)
    observability.setup(app)  # request metrics and SERVER spans
    console.setup(app)
    return app


async def _run_dispatcher(app: web.Application) -> AsyncIterator[None]:
    dispatcher = app[DISPATCHER]
    if not dispatcher.started:
        await dispatcher.start()
    yield
    await dispatcher.stop()
