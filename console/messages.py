"""Message search by id, a message's timeline, and the audit log."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

import msgspec
from aiohttp import web

from dispatcher.message import Attempt, JobStatus, MessageStatus, State

from . import fmt
from .core import PREFIX, dispatcher_of, render, route
from .dlq import trace_url

REPLAY_OF = "dispatcher-replay-of"  # header set by Dispatcher.dlq_replay_edited


@dataclass(frozen=True)
class Step:
    kind: str  # accepted, attempt, dead, replayed, delivered, waiting, running
    at: float | None
    title: str
    detail: str = ""
    outcome: str = ""
    error: str | None = None


def timeline(job: JobStatus, now: float) -> list[Step]:
    """One pool's story of a message, in order: every generation's attempts, its dead-
    lettering and replay, then the current generation and where it stands."""
    steps: list[Step] = []
    for generation in job.history:
        steps.extend(_attempt(a) for a in generation)
        end = generation[-1].started_at + generation[-1].duration if generation else None
        steps.append(Step("dead", end, "Dead-lettered"))
        # The store keeps no replay time; the next generation's first attempt bounds it.
        steps.append(Step("replayed", None, "Replayed by an operator", "fresh attempts"))
    steps.extend(_attempt(a) for a in job.attempts)
    if job.state == State.DELIVERED:
        steps.append(Step("delivered", job.finished_at, "Delivered", outcome="success"))
    elif job.state == State.DEAD:
        reason = job.dead_reason or "max_attempts"
        detail = "a permanent failure" if reason == "permanent" else "attempts used up"
        steps.append(Step("dead", job.finished_at, "Dead-lettered", detail, "failure"))
    elif job.state == State.CLAIMED:
        steps.append(Step("running", None, "Claimed by its pool; an attempt is due or running"))
    else:
        when = "now" if job.available_at <= now else fmt.when(job.available_at)
        steps.append(Step("waiting", job.available_at, "Waiting", f"next attempt {when}"))
    return steps


def _attempt(a: Attempt) -> Step:
    detail = f"{a.outcome} in {fmt.duration(a.duration)}"
    return Step("attempt", a.started_at, f"Attempt {a.n}", detail, str(a.outcome), a.error)


def status_word(job: JobStatus, now: float) -> str:
    if job.state == State.QUEUED:
        return "scheduled" if job.available_at > now else "queued"
    return {State.CLAIMED: "in_flight", State.DELIVERED: "delivered", State.DEAD: "dead"}.get(
        job.state, str(job.state)
    )


@route
async def search(request: web.Request) -> web.StreamResponse:
    message_id = request.query.get("id", "").strip()
    if message_id:
        raise web.HTTPSeeOther(f"{PREFIX}/messages/{quote(message_id, safe='')}")
    return render(request, "search.html", {})


@route
async def message_page(request: web.Request) -> web.StreamResponse:
    dispatcher = dispatcher_of(request)
    message_id = request.match_info["id"]
    status: MessageStatus | None = await dispatcher.get_message(message_id)
    if status is None:
        return render(request, "search.html", {"missing": message_id}, status=404)
    now = time.time()
    m = status.message
    payload, cut = fmt.payload_text(m.payload)
    context: dict[str, object] = {
        "message": m,
        "payload": payload,
        "payload_cut": cut,
        "jobs": [(job, status_word(job, now), timeline(job, now)) for job in status.jobs],
        "replay_of": m.headers.get(REPLAY_OF),
        "trace_url": trace_url(dispatcher.settings.console.trace_url, m.trace),
    }
    return render(request, "message.html", context)


@route
async def audit(request: web.Request) -> web.StreamResponse:
    cursor = request.query.get("cursor") or None
    try:
        entries, next_cursor = await dispatcher_of(request).audit_list(limit=50, cursor=cursor)
    except ValueError:
        raise web.HTTPBadRequest(text="that page link is no longer valid") from None
    rows = [(e, msgspec.json.encode(e.detail).decode() if e.detail else "") for e in entries]
    context = {
        "rows": rows,
        "next_url": f"{PREFIX}/audit?cursor={quote(next_cursor)}" if next_cursor else None,
        "first_url": f"{PREFIX}/audit" if cursor else None,
    }
    return render(request, "audit.html", context)
