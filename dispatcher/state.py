"""Typed keys of the aiohttp application state (web.AppKey), shared by API and console."""

from __future__ import annotations

from aiohttp import web

from .auth import Authenticator, Principal
from .dispatcher import Dispatcher

DISPATCHER = web.AppKey("dispatcher", Dispatcher)
AUTH = web.AppKey("auth", Authenticator)
#: the token that authorised a request (set by the auth middleware; the actor of audits)
PRINCIPAL = web.RequestKey("principal", Principal)
