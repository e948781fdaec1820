"""What the API answers: every JSON response body as a msgspec Struct built from the
Dispatcher's values, and `json_response`, the one way the HTTP edge answers JSON.

The structs are the response schemas of the OpenAPI document (openapi.py derives them), so
what a handler sends and what the document promises cannot drift apart. Field order is the
order on the wire; docstrings and `Meta` descriptions are what an API user reads. A struct
encodes faster than the dict it replaces, and to the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ..message import (
    Accepted,
    Attempt,
    AuditEntry,
    DeadReason,
    DlqEntry,
    MessageStatus,
    Outcome,
    PoolInfo,
    State,
)
from ..timefmt import rfc3339

JSON = "application/json"
_encode = msgspec.json.Encoder().encode

Time = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]
Payload = Annotated[
    Any, msgspec.Meta(description="the payload: the JSON value as sent, else its text")
]


def json_response(
    data: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    content_type: str = JSON,
) -> web.Response:
    """The one way the HTTP edge answers JSON; `data` is a struct below, `msgspec.Raw` (JSON
    already encoded) or builtins."""
    return web.Response(
        status=status, body=_encode(data), content_type=content_type, headers=headers
    )


class AcceptedView(msgspec.Struct, gc=False):
    """A message committed, or found to repeat one within the dedup window (`duplicate`)."""

    id: str
    tag: str
    pools: tuple[str, ...]
    status: Literal["queued"]
    duplicate: bool


class BatchAccepted(msgspec.Struct, gc=False):
    results: list[AcceptedView]


def accepted(a: Accepted) -> AcceptedView:
    return AcceptedView(a.id, a.tag, a.pools, "queued", a.duplicate)


class AttemptView(msgspec.Struct):
    n: int
    started_at: Time
    duration: Annotated[float, msgspec.Meta(description="seconds")]
    outcome: Outcome
    error: str | None


JobState = Literal["queued", "scheduled", "in_flight", "delivered", "dead"]
_STATE: dict[State, JobState] = {
    State.CLAIMED: "in_flight",
    State.DELIVERED: "delivered",
    State.DEAD: "dead",
}


class JobView(msgspec.Struct):
    """One pool's delivery of a message; `history` holds the attempts of each generation
    before a replay, oldest first."""

    status: JobState
    next_attempt_at: Time | None
    attempts: list[AttemptView]
    history: list[list[AttemptView]]
    finished_at: Time | None
    dead_reason: DeadReason | None


class MessageView(msgspec.Struct):
    """A message and its delivery in every pool it was routed to, with every attempt."""

    id: str
    tag: str
    created_at: Time
    priority: int
    headers: dict[str, str]
    payload: Payload
    pools: dict[str, JobView]


def message_view(status: MessageStatus, now: float) -> MessageView:
    m = status.message
    pools: dict[str, JobView] = {}
    for job in status.jobs:
        if job.state == State.QUEUED:
            state: JobState = "scheduled" if job.available_at > now else "queued"
            next_at: str | None = rfc3339(job.available_at)
        else:
            state = _STATE[job.state]
            next_at = None
        pools[job.pool] = JobView(
            state,
            next_at,
            [_attempt(a) for a in job.attempts],
            [[_attempt(a) for a in gen] for gen in job.history],
            rfc3339(job.finished_at),
            job.dead_reason,
        )
    return MessageView(
        m.id,
        m.tag,
        rfc3339(m.created_at),
        m.priority,
        m.headers,
        payload_value(m.payload),
        pools,
    )


def _attempt(a: Attempt) -> AttemptView:
    return AttemptView(a.n, rfc3339(a.started_at), round(a.duration, 6), a.outcome, a.error)


def payload_value(payload: bytes) -> Any:
    """The payload as JSON to embed in a response: as is when it is JSON (no re-encoding),
    else as text."""
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return payload.decode("utf-8", "replace")
    return msgspec.Raw(payload)


class PoolList(msgspec.Struct):
    pools: list[PoolInfo]


def pool_view(info: PoolInfo) -> PoolInfo:
    half_open_in = info.half_open_in_seconds
    return msgspec.structs.replace(
        info,
        oldest_age_seconds=round(info.oldest_age_seconds, 3),
        hold_seconds=round(info.hold_seconds, 3),
        half_open_in_seconds=None if half_open_in is None else round(half_open_in, 3),
    )


class DlqItem(msgspec.Struct):
    """A dead-lettered delivery: the message, its pool, and why it died."""

    id: str
    pool: str
    tag: str
    attempts: int
    error: str | None
    failed_at: Time
    payload: Payload
    reason: DeadReason
    created_at: Time


class DlqPage(msgspec.Struct):
    items: list[DlqItem]
    next_cursor: str | None


def dlq_item(e: DlqEntry) -> DlqItem:
    m = e.message
    return DlqItem(
        m.id,
        e.pool,
        m.tag,
        e.attempts,
        e.error,
        rfc3339(e.failed_at),
        payload_value(m.payload),
        e.reason,
        rfc3339(m.created_at),
    )


class Count(msgspec.Struct):
    """How many dead messages the action touched (or would have, with `dry_run`)."""

    count: int
    dry_run: bool


class AuditItem(msgspec.Struct):
    """One operator action: who (the token's name), what, on what, and its details."""

    at: Time
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    count: int | None


class AuditPage(msgspec.Struct):
    items: list[AuditItem]
    next_cursor: str | None


def audit_item(e: AuditEntry) -> AuditItem:
    return AuditItem(rfc3339(e.at), e.actor, e.action, e.target, e.detail, e.count)


class Status(msgspec.Struct):
    status: Literal["ok", "ready", "unavailable"]
    reason: str | msgspec.UnsetType = msgspec.UNSET
