"""Logging in and out with an API token, and the console's static files."""

from __future__ import annotations

from aiohttp import web

from dispatcher.state import AUTH

from .core import COOKIE, PREFIX, SESSION, back, console_of, public, render, route, session_of


@route
@public
async def login_page(request: web.Request) -> web.StreamResponse:
    if request.get(SESSION) is not None:
        raise web.HTTPSeeOther(back(request, f"{PREFIX}/"))
    return render(request, "login.html", {"error": None, "next": request.query.get("next", "")})


@route
@public
async def login(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    client = request.remote or "unknown"
    wait = console.limiter.retry_after(client)
    if wait > 0:
        response = _login_failed(request, 429, "Too many failed logins; try again shortly.")
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    form = await request.post()
    token = form.get("token")
    principal = request.config_dict[AUTH].authenticate(token if isinstance(token, str) else None)
    if principal is None:
        console.limiter.failed(client)
        return _login_failed(request, 401, "That token is not valid.")
    if not principal.allows("read"):
        return _login_failed(request, 403, "That token has no 'read' scope.")
    console.limiter.succeeded(client)
    # A fresh id at every login: a session id planted before login is worth nothing after.
    session = await console.sessions.open(
        principal.name, principal.scopes, replaces=request.cookies.get(COOKIE)
    )
    response = web.HTTPSeeOther(back(request, f"{PREFIX}/"))
    response.set_cookie(
        COOKIE,
        session.id,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


def _login_failed(request: web.Request, status: int, message: str) -> web.Response:
    context = {"error": message, "next": request.query.get("next", "")}
    return render(request, "login.html", context, status=status)


@route
async def logout(request: web.Request) -> web.StreamResponse:
    await console_of(request).sessions.close(session_of(request).id)
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    response.del_cookie(COOKIE, path=PREFIX)
    raise response


@route
@public
async def static(request: web.Request) -> web.StreamResponse:
    found = console_of(request).static.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    return web.Response(
        body=body, content_type=content_type, headers={"Cache-Control": "max-age=300"}
    )
