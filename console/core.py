"""Console plumbing shared by every view: state, the security middleware, rendering.

The middleware is where the console's promises are kept for every page at once: no page
without a session (GET redirects to the login, anything else is refused), no state change
without a POST from our own origin carrying the session's CSRF token, and every answer
carries a Content-Security-Policy without 'unsafe-inline', X-Frame-Options and
Referrer-Policy. Views then only check the role an action needs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from dispatcher.auth import requires
from dispatcher.dispatcher import Dispatcher
from dispatcher.errors import NotFound, Rejected, StoreError
from dispatcher.state import DISPATCHER

from .sampler import Sampler
from .sessions import LoginLimiter, Session, Sessions

log = logging.getLogger("console")

PREFIX = "/console"
COOKIE = "dispatcher_console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on
    # POST, and the Origin check below needs the real one.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)


@dataclass
class Console:
    """Everything the console keeps; created at setup, filled in at startup (file reads and
    template compilation happen off the event loop, before the first request)."""

    sample_interval: float
    sessions: Sessions = field(default_factory=Sessions)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    templates: dict[str, str] = field(default_factory=dict)  # the DictLoader's mapping
    static: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # name -> body, type
    sampler: Sampler | None = None


CONSOLE = web.AppKey("console", Console)
SESSION = web.RequestKey("console.session", Session)


def public(handler: H) -> H:
    """A console page reachable without a session (login, static files)."""
    handler.__console_public__ = True  # type: ignore[attr-defined]
    return handler


def route(handler: H) -> H:
    """Every console handler: the API's bearer-token middleware steps aside (the console
    authenticates by session, in `middleware`)."""
    return requires(None)(handler)


def dispatcher_of(request: web.Request) -> Dispatcher:
    return request.config_dict[DISPATCHER]


def console_of(request: web.Request) -> Console:
    return request.config_dict[CONSOLE]


def session_of(request: web.Request) -> Session:
    return request[SESSION]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as exc:
        if exc.status >= 400:
            response = error_page(request, exc.status, exc.text or exc.reason)
        else:
            exc.headers.update(SECURITY_HEADERS)
            raise
    except NotFound as exc:
        response = error_page(request, 404, str(exc))
    except Rejected as exc:
        response = error_page(request, exc.status, exc.detail)
    except StoreError as exc:  # a DLQ action that failed part-way says how far it got
        response = error_page(request, 503, f"The store failed; try again shortly. ({exc})")
        response.headers["Retry-After"] = "5"
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = console_of(request)
    session = await console.sessions.find(request.cookies.get(COOKIE))
    is_public = getattr(handler, "__console_public__", False)
    if request.method not in ("GET", "HEAD"):
        if not same_origin(request):
            return error_page(request, 403, "this request did not come from the console")
        if not is_public:
            form = await request.post()
            if session is None or not session.csrf_ok(_text(form, "csrf_token")):
                return error_page(request, 403, "the form's CSRF token is missing or stale")
    if session is None:
        if is_public:
            return await handler(request)
        if request.method in ("GET", "HEAD") and not request.path.endswith(".json"):
            target = request.path_qs
            raise web.HTTPSeeOther(f"{PREFIX}/login?next={quote(target, safe='')}")
        return error_page(request, 401, "log in first")
    request[SESSION] = session
    return await handler(request)


def same_origin(request: web.Request) -> bool:
    """Origin (or, lacking it, Referer) must name this host; a browser always sends Origin
    on a POST, so a request with neither is not from our pages."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    if request.secure and parts.scheme != "https":
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.host.lower()


def require(request: web.Request, scope: str) -> Session:
    session = session_of(request)
    if not session.allows(scope):
        raise web.HTTPForbidden(text=f"your token lacks the {scope!r} scope")
    return session


def render(
    request: web.Request, template: str, context: Mapping[str, Any], status: int = 200
) -> web.Response:
    session = request.get(SESSION)
    full = {
        "session": session,
        "csrf": session.csrf if session else "",
        "flashes": session.take_flashes() if session else [],
        "prefix": PREFIX,
        "path": request.path,
        **context,
    }
    return aiohttp_jinja2.render_template(template, request, full, status=status)


def error_page(request: web.Request, status: int, text: str) -> web.Response:
    if request.path.endswith(".json"):
        return web.json_response({"error": text}, status=status)
    return render(request, "error.html", {"status": status, "message": text}, status=status)


def back(request: web.Request, default: str) -> str:
    """Where to go after a form: its `next` field when it is a console path, else default."""
    target = request.query.get("next", "")
    if target.startswith(f"{PREFIX}/") and not target.startswith("//"):
        return target
    return default


def _text(form: MultiDictProxy[Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def form_of(request: web.Request) -> dict[str, str]:
    """The POSTed form's text fields (last value wins); see `form_list` for repeated ones."""
    form = await request.post()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def form_list(request: web.Request, name: str) -> list[str]:
    form = await request.post()
    return [v for v in form.getall(name, []) if isinstance(v, str)]
