"""HTTP handlers of the v1 API. They translate HTTP to Dispatcher calls and back, nothing more:
validation of the wire format lives in `ingest.py`, behaviour in the Dispatcher."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from .auth import requires
from .dispatcher import Accepted, Dispatcher
from .errors import NotFound
from .ingest import decode_single, read_body
from .message import MessageStatus, State
from .state import DISPATCHER
from .timefmt import rfc3339

_STATUS = {
    State.CLAIMED: "in_flight",
    State.DELIVERED: "delivered",
    State.DEAD: "dead",
}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(data),
        content_type="application/json",
        headers=headers,
    )


@requires("produce")
async def post_message(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    body = await read_body(request, dispatcher.settings.server.max_body_bytes)
    item = decode_single(body, request.headers)
    (accepted,) = await dispatcher.publish([item])
    return _accepted_response(accepted)


def _accepted_response(accepted: Accepted) -> web.Response:
    body = {
        "id": accepted.id,
        "tag": accepted.tag,
        "pools": list(accepted.pools),
        "status": "queued",
        "duplicate": accepted.duplicate,
    }
    location = f"/v1/messages/{accepted.id}"
    return _json(body, status=200 if accepted.duplicate else 202, headers={"Location": location})


@requires("read")
async def get_message(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    message_id = request.match_info["id"]
    status = await dispatcher.get_message(message_id)
    if status is None:
        raise NotFound(f"no message with id {message_id!r} (unknown, or delivered and expired)")
    return _json(message_view(status, time.time()))


def payload_value(payload: bytes) -> Any:
    """The payload as JSON to embed in a response: as is when it is JSON (no re-encoding),
    else as text."""
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload.decode("utf-8", "replace")
    return msgspec.Raw(payload)


def message_view(status: MessageStatus, now: float) -> dict[str, Any]:
    m = status.message
    pools: dict[str, Any] = {}
    for job in status.jobs:
        if job.state == State.QUEUED:
            state = "scheduled" if job.available_at > now else "queued"
            next_at: str | None = rfc3339(job.available_at)
        else:
            state = _STATUS[job.state]
            next_at = None
        pools[job.pool] = {
            "status": state,
            "next_attempt_at": next_at,
            "attempts": [_attempt_view(a) for a in job.attempts],
            "history": [[_attempt_view(a) for a in gen] for gen in job.history],
            "finished_at": rfc3339(job.finished_at),
            "dead_reason": job.dead_reason,
        }
    return {
        "id": m.id,
        "tag": m.tag,
        "created_at": rfc3339(m.created_at),
        "priority": m.priority,
        "headers": m.headers,
        "payload": payload_value(m.payload),
        "pools": pools,
    }


def _attempt_view(a: Any) -> dict[str, Any]:
    return {
        "n": a.n,
        "started_at": rfc3339(a.started_at),
        "duration": round(a.duration, 6),
        "outcome": a.outcome,
        "error": a.error,
    }


@requires(None)
async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


@requires(None)
async def readyz(request: web.Request) -> web.Response:
    dispatcher: Dispatcher = request.app[DISPATCHER]
    if await dispatcher.ready():
        return _json({"status": "ready"})
    reason = "draining" if dispatcher.draining else "store unavailable"
    return web.Response(
        status=503,
        body=msgspec.json.encode({"status": "unavailable", "reason": reason}),
        content_type="application/json",
        headers={"Retry-After": "5"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", post_message)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
