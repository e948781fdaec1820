"""The ops console: a server-rendered web UI mounted at /console on the dispatcher's app.

It calls only the Dispatcher's public methods (the ones the HTTP API calls), so it works the
same on every store, and the core never imports it. `setup(app)` mounts it: a sub-app with
its own session and security middleware, a redirect from /console, and a cleanup context
on the main app that loads templates and static files off the loop, then runs the sampler
behind the live overview (after the Dispatcher has started, and stopped before it stops).

Markup contract (DESIGN.md): GET /console/login has a `token` field; every element showing
a pool carries data-pool="<name>"; every action form carries data-action and a hidden
csrf_token.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from importlib import resources

import aiohttp_jinja2
import jinja2
from aiohttp import web

from dispatcher.auth import requires
from dispatcher.state import DISPATCHER

from . import debug, dlq, fmt, login, messages, pools
from .core import CONSOLE, PREFIX, Console, middleware
from .sampler import Sampler

__all__ = ["CONSOLE", "Console", "setup"]

_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def setup(app: web.Application, *, sample_interval: float = 2.0) -> web.Application:
    """Mount the console on `app` (which holds DISPATCHER and AUTH); returns the sub-app."""
    console = Console(sample_interval=sample_interval)
    sub = web.Application(middlewares=[middleware])
    sub[CONSOLE] = console
    aiohttp_jinja2.setup(
        sub,
        loader=jinja2.DictLoader(console.templates),
        autoescape=True,
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
        filters=fmt.FILTERS,
        default_helpers=False,
    )
    r = sub.router
    r.add_get("/login", login.login_page)
    r.add_post("/login", login.login)
    r.add_post("/logout", login.logout)
    r.add_get("/static/{name}", login.static)
    r.add_get("/", pools.overview)
    r.add_get("/live.json", pools.live)
    r.add_get("/pools/{name}", pools.pool_page)
    r.add_post("/pools/{name}/pause", pools.pause)
    r.add_post("/pools/{name}/resume", pools.resume)
    r.add_post("/pools/{name}/throttle", pools.throttle)
    r.add_post("/pools/{name}/reset", pools.reset)
    r.add_post("/pools/{name}/circuit", pools.circuit)
    r.add_get("/dlq", dlq.browse)
    r.add_get("/dlq/count.json", dlq.count)
    r.add_post("/dlq/preview", dlq.preview)
    r.add_post("/dlq/act", dlq.act)
    r.add_post("/dlq/edit", dlq.edit)
    r.add_get("/dlq/{pool}/{id}", dlq.entry)
    r.add_get("/messages", messages.search)
    r.add_get("/messages/{id}", messages.message_page)
    r.add_get("/audit", messages.audit)
    r.add_get("/debug/tasks", debug.tasks)
    app.router.add_get(PREFIX, _to_console)  # before the sub-app, which would answer 404
    app.add_subapp(PREFIX, sub)
    app.cleanup_ctx.append(_lifecycle(console, sub))
    return sub


@requires(None)
async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect(f"{PREFIX}/")


def _lifecycle(
    console: Console, sub: web.Application
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        env = sub[aiohttp_jinja2.APP_KEY]
        await asyncio.to_thread(_load, console, env)
        console.sessions.shared = app[DISPATCHER].shared_sessions
        sampler = console.sampler = Sampler(app[DISPATCHER], interval=console.sample_interval)
        task = asyncio.create_task(sampler.run(), name="console:sampler")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return lifecycle


def _load(console: Console, env: jinja2.Environment) -> None:
    """Read every template and static file, and compile the templates: no file I/O and no
    compiling once requests are served."""
    root = resources.files(__package__)
    for item in root.joinpath("templates").iterdir():
        if item.name.endswith(".html"):
            console.templates[item.name] = item.read_text(encoding="utf-8")
    for item in root.joinpath("static").iterdir():
        suffix = item.name[item.name.rfind(".") :]
        if suffix in _TYPES:
            console.static[item.name] = (item.read_bytes(), _TYPES[suffix])
    for name in console.templates:
        env.get_template(name)
