"""The route table of the HTTP API: every operation's method, path, handler, scope, request
and response types, problem statuses and summary, in one place.

`add_routes` registers the table with aiohttp; each handler's scope, which the auth
middleware checks, is marked from it (openapi.Route); and `GET /openapi.json` serves the
document rendered from it. A route added here is routed, guarded and documented at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ..message import PoolInfo
from ..tags import MAX_TAG_LENGTH
from . import api, cloudevent, debug, ingest, observability, operations
from .cloudevent import CloudEvent
from .ingest import MessageIn
from .openapi import Param, Reply, Route, document
from .operations import Limit, PoolPatch, PurgeIn, ReplayIn
from .views import (
    JSON,
    AcceptedView,
    AuditPage,
    BatchAccepted,
    Count,
    DlqPage,
    MessageView,
    PoolList,
    Status,
    Time,
    json_response,
)

_INGEST_ERRORS = (400, 408, 413, 422, 429, 503)
_BODY_ERRORS = (400, 408, 413, 422)
# As documented: check_batch_size refuses an empty batch (422) and a larger one (413).
_BATCH = msgspec.Meta(min_length=1, max_length=ingest.MAX_BATCH)
_IDEMPOTENCY_KEY = Annotated[str, msgspec.Meta(min_length=1, max_length=ingest.MAX_IDEMPOTENCY_KEY)]
_LOCATION = (Param("Location", "header", description="the message's status URL"),)
_CURSOR = Param("cursor", "query", description="next_cursor of the previous page")
_LIMIT = Param("limit", "query", Limit, "page size")
_PATTERN = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TAG_LENGTH)]
_TEXT = "text/plain"


def _ok(body: Any, description: str = "OK") -> dict[int, Reply]:
    return {200: Reply(description, {JSON: body})}


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(_DOCUMENT)


ROUTES = (
    Route(
        "POST",
        "/v1/messages",
        api.post_message,
        "produce",
        "Publish one message (or one CloudEvent, structured or binary mode)",
        request={JSON: MessageIn, cloudevent.STRUCTURED: CloudEvent},
        params=(Param("Idempotency-Key", "header", _IDEMPOTENCY_KEY),),
        replies={
            202: Reply("Committed", {JSON: AcceptedView}, _LOCATION),
            200: Reply(
                "A duplicate of a message within the dedup window", {JSON: AcceptedView}, _LOCATION
            ),
        },
        errors=_INGEST_ERRORS,
    ),
    Route(
        "POST",
        "/v1/messages/batch",
        api.post_batch,
        "produce",
        f"Publish up to {ingest.MAX_BATCH} messages, all or nothing, in one commit",
        request={
            JSON: Annotated[list[MessageIn], _BATCH],
            cloudevent.BATCH: Annotated[list[CloudEvent], _BATCH],
        },
        replies={202: Reply("Committed (duplicates flagged per item)", {JSON: BatchAccepted})},
        errors=_INGEST_ERRORS,
    ),
    Route(
        "GET",
        "/v1/messages/{id}",
        api.get_message,
        "read",
        "A message's status in every pool, with every attempt",
        replies=_ok(MessageView),
        errors=(404,),
    ),
    Route(
        "GET",
        "/v1/pools",
        operations.list_pools,
        "read",
        "Every pool's settings and live stats",
        replies=_ok(PoolList),
    ),
    Route(
        "GET",
        "/v1/pools/{name}",
        operations.get_pool,
        "read",
        "One pool",
        replies=_ok(PoolInfo),
        errors=(404,),
    ),
    Route(
        "PATCH",
        "/v1/pools/{name}",
        operations.patch_pool,
        "operate",
        "Throttle, resize, pause or resume a pool, or open or close its circuit (audited)",
        request={JSON: PoolPatch},
        replies=_ok(PoolInfo),
        errors=(*_BODY_ERRORS, 404),
    ),
    Route(
        "GET",
        "/v1/dlq",
        operations.list_dlq,
        "read",
        "Dead-lettered messages, newest failure first",
        params=(
            Param("pool", "query", description="pool name"),
            Param("tag", "query", description="exact tag"),
            Param("error", "query", description="substring of the last error, case-insensitive"),
            Param("since", "query", Time, "failed at or after this RFC 3339 time"),
            _CURSOR,
            _LIMIT,
        ),
        replies=_ok(DlqPage),
        errors=(400,),
    ),
    Route(
        "POST",
        "/v1/dlq/replay",
        operations.replay_dlq,
        "operate",
        "Send dead messages back to their pools with fresh attempts (audited)",
        request={JSON: ReplayIn},
        replies=_ok(Count),
        errors=_BODY_ERRORS,
    ),
    Route(
        "POST",
        "/v1/dlq/purge",
        operations.purge_dlq,
        "operate",
        "Delete dead messages (audited)",
        request={JSON: PurgeIn},
        replies=_ok(Count),
        errors=_BODY_ERRORS,
    ),
    Route(
        "GET",
        "/v1/audit",
        operations.list_audit,
        "read",
        "Operator actions, newest first",
        params=(_CURSOR, _LIMIT),
        replies=_ok(AuditPage),
        errors=(400,),
    ),
    Route(
        "GET",
        "/v1/subscribe",
        operations.subscribe,
        "read",
        "WebSocket: receive messages routed to websocket pools; ack each by id",
        params=(Param("tag", "query", _PATTERN, "route pattern: * one token, > the rest", True),),
        replies={101: Reply("Switching to WebSocket")},
        errors=(400,),
    ),
    Route("GET", "/healthz", api.healthz, None, "Liveness", replies=_ok(Status)),
    Route(
        "GET",
        "/readyz",
        api.readyz,
        None,
        "Readiness: store reachable and not draining",
        replies={
            **_ok(Status),
            503: Reply(
                "Not ready", {JSON: Status}, (Param("Retry-After", "header", int, "seconds"),)
            ),
        },
    ),
    Route(
        "GET",
        "/openapi.json",
        openapi_json,
        None,
        "This document",
        replies=_ok(dict[str, Any]),
    ),
    Route(
        "GET",
        "/metrics",
        observability.metrics_handler,
        None,
        "Prometheus metrics",
        replies={200: Reply("Prometheus text, or OpenMetrics when asked", {_TEXT: None})},
    ),
    Route(
        "GET",
        "/debug/tasks",
        debug.tasks,
        "admin",
        "Live asyncio tasks with their stacks",
        params=(Param("format", "query", Literal["text", "json"], "json for JSON"),),
        replies={
            200: Reply("text, or JSON with ?format=json", {_TEXT: None, JSON: debug.TaskList})
        },
    ),
)

DOCUMENT = document(ROUTES)
_DOCUMENT = msgspec.Raw(msgspec.json.encode(DOCUMENT))


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler)  # and HEAD
        else:
            app.router.add_route(route.method, route.path, route.handler)
