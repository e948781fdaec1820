"""HTTP handlers of the operator endpoints: pools, the DLQ, the audit log, and the WebSocket
subscription of the `websocket` sink. Bodies are strict JSON (see `strictjson`) decoded into
the structs below; unknown fields are refused. Every action names its actor: the name of the
token that authorised the request."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from aiohttp import web

from ..dispatcher import Dispatcher
from ..errors import BadRequest, InvalidMessage
from ..message import DlqFilter
from ..state import DISPATCHER, PRINCIPAL
from ..stores.base import parse_dlq_cursor
from ..tags import validate_pattern
from ..timefmt import parse_rfc3339
from . import ingest
from .views import (
    AuditPage,
    Count,
    DlqPage,
    PoolList,
    Time,
    audit_item,
    dlq_item,
    json_response,
    pool_view,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_IDS = 10_000
_AUDIT_CURSOR = re.compile(r"^[0-9]{1,18}$")

Rate = Annotated[float, msgspec.Meta(gt=0, le=1e9, description="messages per second")]
# The `limit` query parameter, as documented; `_limit` checks it.
Limit = Annotated[
    int,
    msgspec.Meta(
        ge=1, le=MAX_LIMIT, description="page size", extra_json_schema={"default": DEFAULT_LIMIT}
    ),
]


class PoolPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Changes to a pool's settings, applied at once, persisted and audited; `rate` null
    lifts the limit. `circuit` opens the pool's circuit breaker (it stays open until closed
    by hand) or closes it: audited, but not persisted (breaker state is per process)."""

    SCHEMA_EXTRA: ClassVar[dict[str, object]] = {"minProperties": 1}  # see changes()

    rate: Rate | msgspec.UnsetType | None = msgspec.UNSET
    burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)] | msgspec.UnsetType = msgspec.UNSET
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | msgspec.UnsetType = msgspec.UNSET
    paused: bool | msgspec.UnsetType = msgspec.UNSET
    circuit: Literal["open", "closed"] | msgspec.UnsetType = msgspec.UNSET

    def changes(self) -> dict[str, Any]:
        changes = {
            f: getattr(self, f)
            for f in self.__struct_fields__
            if getattr(self, f) is not msgspec.UNSET
        }
        if not changes:
            raise InvalidMessage(
                "give at least one of rate, burst, concurrency, paused, circuit", pointer=""
            )
        return changes


class FilterIn(msgspec.Struct, forbid_unknown_fields=True):
    """Dead messages matching all of the given fields."""

    pool: str | None = None
    tag: Annotated[str, msgspec.Meta(description="exact tag")] | None = None
    error: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=1000, description="substring of the last error, case-insensitive"
            ),
        ]
        | None
    ) = None
    since: Annotated[Time, msgspec.Meta(description="failed at or after")] | None = None


Ids = Annotated[
    list[Annotated[str, msgspec.Meta(min_length=1, max_length=255)]],
    msgspec.Meta(min_length=1, max_length=MAX_IDS),
]


class PurgeIn(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of `ids` (message ids) and `filter`."""

    ids: Ids | None = None
    filter: FilterIn | None = None
    dry_run: bool = False


class ReplayIn(PurgeIn, forbid_unknown_fields=True):
    """Exactly one of `ids` (message ids) and `filter`; `rate` spreads the replay out."""

    rate: Rate | None = None


def _bad_query(name: str, detail: str) -> BadRequest:
    return BadRequest(f"query parameter {name}: {detail}", pointer=f"?{name}")


async def _decode(request: web.Request, kind: type[Any]) -> Any:
    server = request.app[DISPATCHER].settings.server
    body = await ingest.read_body(request, server.max_body_bytes, server.request_timeout)
    ingest.check_json(body)
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise ingest.schema_error(exc) from None


# --- pools --------------------------------------------------------------------------------


async def list_pools(request: web.Request) -> web.Response:
    infos = await request.app[DISPATCHER].pool_infos()
    return json_response(PoolList([pool_view(i) for i in infos]))


async def get_pool(request: web.Request) -> web.Response:
    info = await request.app[DISPATCHER].pool_info(request.match_info["name"])
    return json_response(pool_view(info))


async def patch_pool(request: web.Request) -> web.Response:
    dispatcher: Dispatcher = request.app[DISPATCHER]
    name = request.match_info["name"]
    await dispatcher.pool_info(name)  # 404 before reading the body
    patch: PoolPatch = await _decode(request, PoolPatch)
    changes = patch.changes()
    info = await dispatcher.update_pool(name, actor=request[PRINCIPAL].name, **changes)
    return json_response(pool_view(info))


# --- dead-letter queue --------------------------------------------------------------------


def _limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    # isascii: str.isdigit() also accepts "²", which int() refuses (a 500, not a 400)
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise _bad_query("limit", f"an integer from 1 to {MAX_LIMIT}")
    return int(text)


def _since(text: str | None, error: Exception) -> float | None:
    if text is None:
        return None
    try:
        since = parse_rfc3339(text)
    except (ValueError, OverflowError):
        raise error from None
    if not math.isfinite(since):
        raise error
    return since


async def list_dlq(request: web.Request) -> web.Response:
    q = request.query
    cursor = q.get("cursor")
    if cursor is not None:
        try:
            parse_dlq_cursor(cursor)
        except ValueError:
            raise _bad_query("cursor", "not a cursor this API returned") from None
    selector = DlqFilter(
        pool=q.get("pool"),
        tag=q.get("tag"),
        error=q.get("error"),
        since=_since(q.get("since"), _bad_query("since", "an RFC 3339 time with an offset")),
    )
    entries, next_cursor = await request.app[DISPATCHER].dlq_list(
        selector, limit=_limit(request), cursor=cursor
    )
    return json_response(DlqPage([dlq_item(e) for e in entries], next_cursor))


def _selector(body: PurgeIn) -> DlqFilter:
    if (body.ids is None) == (body.filter is None):
        raise InvalidMessage("give exactly one of ids and filter", pointer="/ids")
    if body.ids is not None:
        return DlqFilter(ids=tuple(body.ids))
    f = body.filter
    assert f is not None
    error = InvalidMessage("an RFC 3339 time with an offset", pointer="/filter/since")
    return DlqFilter(pool=f.pool, tag=f.tag, error=f.error, since=_since(f.since, error))


async def replay_dlq(request: web.Request) -> web.Response:
    body: ReplayIn = await _decode(request, ReplayIn)
    count = await request.app[DISPATCHER].dlq_replay(
        _selector(body), actor=request[PRINCIPAL].name, dry_run=body.dry_run, rate=body.rate
    )
    return json_response(Count(count, body.dry_run))


async def purge_dlq(request: web.Request) -> web.Response:
    body: PurgeIn = await _decode(request, PurgeIn)
    count = await request.app[DISPATCHER].dlq_purge(
        _selector(body), actor=request[PRINCIPAL].name, dry_run=body.dry_run
    )
    return json_response(Count(count, body.dry_run))


# --- audit and subscriptions --------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    cursor = request.query.get("cursor")
    if cursor is not None and not _AUDIT_CURSOR.match(cursor):
        raise _bad_query("cursor", "not a cursor this API returned")
    entries, next_cursor = await request.app[DISPATCHER].audit_list(
        limit=_limit(request), cursor=cursor
    )
    return json_response(AuditPage([audit_item(e) for e in entries], next_cursor))


async def subscribe(request: web.Request) -> web.StreamResponse:
    """WebSocket: receive the messages of `websocket` pools whose tag matches `tag` (a route
    pattern); ack each with {"ack": id} (see sinks/websocket.py for the frames)."""
    pattern = request.query.get("tag")
    if not pattern:
        raise _bad_query("tag", "a tag pattern is required")
    try:
        validate_pattern(pattern)
    except ValueError as exc:
        raise _bad_query("tag", str(exc)) from None
    ws: web.WebSocketResponse = web.WebSocketResponse(heartbeat=30.0)
    if not ws.can_prepare(request).ok:
        raise _bad_query("tag", "this endpoint speaks WebSocket only (send Upgrade: websocket)")
    await ws.prepare(request)
    await request.app[DISPATCHER].sink_context.hub.serve(ws, pattern)
    return ws
