"""The DLQ browser: filter, group by error fingerprint, inspect one entry, and replay or purge
one, the selected or everything matching, always behind a dry-run count.

Selections travel as `sel=<pool>:<message id>` (pool names have no colon, ids may); a
filter travels as its fields, with `since` made absolute when the dry run is shown, so the
confirmed action selects by the same rule the operator saw counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web

from dispatcher import strictjson
from dispatcher.message import DlqEntry, DlqFilter

from . import fmt
from .core import PREFIX, dispatcher_of, form_list, form_of, render, require, route
from .fingerprint import Group, group_entries

PAGE = 50
GROUP_SAMPLE = 500  # latest matching entries grouped by fingerprint (view=groups)
MAX_SELECTED = 1000
# What JSON calls whitespace; the API would refuse a payload wrapped in any other (NBSP, say).
JSON_WHITESPACE = " \t\n\r"
WINDOWS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800}


def parse_filter(fields: Mapping[str, str], pools: list[str]) -> DlqFilter:
    """A DlqFilter from query or form fields; unknown pools and blank fields are ignored."""
    pool = fields.get("pool", "").strip()
    tag = fields.get("tag", "").strip()[:255]
    error = fields.get("error", "").strip()[:200]
    since: float | None = None
    if fields.get("since"):
        try:
            since = float(fields["since"])
        except ValueError:
            since = None
        if since is not None and not math.isfinite(since):
            since = None
    elif fields.get("window") in WINDOWS:
        since = time.time() - WINDOWS[fields["window"]]
    return DlqFilter(
        pool=pool if pool in pools else None,
        tag=tag or None,
        error=error or None,
        since=since,
    )


def filter_fields(selector: DlqFilter) -> dict[str, str]:
    fields = {"pool": selector.pool, "tag": selector.tag, "error": selector.error}
    out = {k: v for k, v in fields.items() if v}
    if selector.since is not None:
        out["since"] = repr(selector.since)
    return out


def describe(selector: DlqFilter) -> str:
    parts = [f"{k} = {v!r}" for k, v in filter_fields(selector).items() if k != "since"]
    if selector.since is not None:
        parts.append(f"failed since {fmt.when(selector.since)}")
    return ", ".join(parts) or "no filter (the whole DLQ)"


def dlq_url(selector: DlqFilter | None = None) -> str:
    fields = filter_fields(selector) if selector else {}
    return f"{PREFIX}/dlq" + (f"?{urlencode(fields)}" if fields else "")


def costly(selector: DlqFilter) -> bool:
    """Counting by tag or error text scans every dead entry; the page then leaves the count
    to count.json, so it renders fast however big the DLQ is."""
    return selector.tag is not None or selector.error is not None


@route
async def browse(request: web.Request) -> web.StreamResponse:
    """The entries matching a filter, a page at a time, or (view=groups) the latest
    GROUP_SAMPLE of them grouped by error fingerprint."""
    dispatcher = dispatcher_of(request)
    pools = dispatcher.pool_names()
    selector = parse_filter(request.query, pools)
    fields = filter_fields(selector)
    grouped = request.query.get("view") == "groups"
    cursor = request.query.get("cursor") or None
    entries: list[DlqEntry] = []
    groups: list[Group] = []
    next_cursor: str | None = None
    sampled = 0
    try:
        if grouped:
            sample, _ = await dispatcher.dlq_list(selector, limit=GROUP_SAMPLE)
            sampled = len(sample)
            groups = group_entries(sample)
        else:
            entries, next_cursor = await dispatcher.dlq_list(selector, limit=PAGE, cursor=cursor)
    except ValueError:
        raise web.HTTPBadRequest(text="that page link is no longer valid") from None
    total = None if costly(selector) else await dispatcher.dlq_count(selector)
    query = urlencode(fields)
    context = {
        "pools": pools,
        "selector": selector,
        "fields": fields,
        "window": request.query.get("window", ""),
        "windows": list(WINDOWS),
        "described": describe(selector),
        "grouped": grouped,
        "entries": entries,
        "total": total,
        "count_url": f"{PREFIX}/dlq/count.json?{query}",
        "list_url": dlq_url(selector),
        "groups_url": f"{PREFIX}/dlq?{urlencode({**fields, 'view': 'groups'})}",
        "groups": groups,
        "sampled": sampled,
        "group_sample": GROUP_SAMPLE,
        "next_url": f"{PREFIX}/dlq?{urlencode({**fields, 'cursor': next_cursor})}"
        if next_cursor
        else None,
        "first_url": dlq_url(selector) if cursor else None,
    }
    return render(request, "dlq.html", context)


@route
async def count(request: web.Request) -> web.StreamResponse:
    dispatcher = dispatcher_of(request)
    selector = parse_filter(request.query, dispatcher.pool_names())
    n = await dispatcher.dlq_count(selector)
    return web.json_response({"count": n, "text": fmt.number(n)})


@route
async def entry(request: web.Request) -> web.StreamResponse:
    dispatcher = dispatcher_of(request)
    pool, message_id = request.match_info["pool"], request.match_info["id"]
    selector = DlqFilter(ids=(message_id,), pool=pool)
    found, _ = await dispatcher.dlq_list(selector, limit=1)
    if not found:
        raise web.HTTPNotFound(text=f"message {message_id!r} is not in the DLQ of {pool!r}")
    dead = found[0]
    status = await dispatcher.get_message(message_id)
    job = next((j for j in status.jobs if j.pool == pool), None) if status else None
    payload, cut = fmt.payload_text(dead.message.payload)
    context = {
        "dead": dead,
        "message": dead.message,
        "payload": payload,
        "payload_cut": cut,
        "payload_is_json": fmt.is_json(dead.message.payload),
        "attempts": job.attempts if job else [],
        "history": job.history if job else [],
        "trace_url": trace_url(dispatcher.settings.console.trace_url, dead.message.trace),
        "sel": f"{pool}:{message_id}",
    }
    return render(request, "dlq_entry.html", context)


def trace_url(template: str | None, traceparent: str | None) -> str | None:
    """The configured trace link with the message's W3C trace id filled in."""
    if not template or not traceparent or not template.startswith(("https://", "http://")):
        return None
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32:
        return None
    return template.replace("{trace_id}", parts[1])


async def _selectors(request: web.Request) -> tuple[list[DlqFilter], str, DlqFilter | None]:
    """What a dry-run or action form selects: the filter, or the `sel` entries by pool."""
    dispatcher = dispatcher_of(request)
    form = await form_of(request)
    if form.get("scope") == "selected":
        by_pool: dict[str, list[str]] = {}
        selected = (await form_list(request, "sel"))[:MAX_SELECTED]
        for item in selected:
            pool, sep, message_id = item.partition(":")
            if sep and pool in dispatcher.pool_names():
                by_pool.setdefault(pool, []).append(message_id)
        if not by_pool:
            raise web.HTTPBadRequest(text="select at least one message first")
        selectors = [DlqFilter(ids=tuple(ids), pool=pool) for pool, ids in by_pool.items()]
        n = sum(len(ids) for ids in by_pool.values())
        return selectors, f"{n} selected message{'s' if n != 1 else ''}", None
    selector = parse_filter(form, dispatcher.pool_names())
    return [selector], f"every message matching {describe(selector)}", selector


def _op(form: Mapping[str, str]) -> str:
    op = form.get("op", "")
    if op not in ("replay", "purge"):
        raise web.HTTPBadRequest(text="op must be replay or purge")
    return op


@route
async def preview(request: web.Request) -> web.StreamResponse:
    """The dry run: how many entries the action would touch, and the form to confirm it."""
    session = require(request, "operate")
    dispatcher = dispatcher_of(request)
    form = await form_of(request)
    op = _op(form)
    selectors, described, selector = await _selectors(request)
    count = 0
    for s in selectors:
        if op == "replay":
            count += await dispatcher.dlq_replay(s, actor=session.user, dry_run=True)
        else:
            count += await dispatcher.dlq_purge(s, actor=session.user, dry_run=True)
    hidden: list[tuple[str, str]] = [("op", op), ("scope", form.get("scope", "filter"))]
    if selector is not None:
        hidden += list(filter_fields(selector).items())
    else:
        hidden += [("sel", v) for v in (await form_list(request, "sel"))[:MAX_SELECTED]]
    context = {
        "op": op,
        "count": count,
        "described": described,
        "hidden": hidden,
        "cancel": dlq_url(selector),
    }
    return render(request, "confirm.html", context)


@route
async def act(request: web.Request) -> web.StreamResponse:
    session = require(request, "operate")
    dispatcher = dispatcher_of(request)
    form = await form_of(request)
    op = _op(form)
    rate: float | None = None
    if op == "replay" and form.get("rate", "").strip():
        try:
            rate = float(form["rate"])
        except ValueError:
            rate = -1.0
        if not 0 < rate <= 1_000_000:
            session.flash("The replay rate must be a number above 0.", "error")
            raise web.HTTPSeeOther(dlq_url())
    selectors, described, selector = await _selectors(request)
    total = 0
    for s in selectors:
        if op == "replay":
            total += await dispatcher.dlq_replay(s, actor=session.user, rate=rate)
        else:
            total += await dispatcher.dlq_purge(s, actor=session.user)
    verb = "Replayed" if op == "replay" else "Purged"
    paced = f" at {fmt.rate(rate)}" if rate else ""
    session.flash(f"{verb} {total} message{'s' if total != 1 else ''}{paced} ({described}).")
    raise web.HTTPSeeOther(dlq_url(selector))


@route
async def edit(request: web.Request) -> web.StreamResponse:
    """Replay one entry with a corrected payload (validated JSON); see
    Dispatcher.dlq_replay_edited for why this makes a new message."""
    session = require(request, "operate")
    dispatcher = dispatcher_of(request)
    form = await form_of(request)
    pool, message_id = form.get("pool", ""), form.get("id", "")
    back = f"{PREFIX}/dlq/{pool}/{message_id}"
    text = form.get("payload", "")
    try:
        payload = validate_json(text, dispatcher.settings.server.max_body_bytes)
    except ValueError as exc:
        session.flash(f"Not replayed: {exc}", "error")
        raise web.HTTPSeeOther(back) from None
    new_id = await dispatcher.dlq_replay_edited(message_id, pool, payload, actor=session.user)
    session.flash(f"Replayed with the edited payload as new message {new_id}.")
    raise web.HTTPSeeOther(f"{PREFIX}/messages/{new_id}")


def validate_json(text: str, max_bytes: int) -> bytes:
    """The edited payload as bytes, if the API would take it as a message's payload (the
    ingest rule: strict JSON, nesting and digit limits) within the ingest size limit."""
    body = text.strip(JSON_WHITESPACE).encode("utf-8", "surrogatepass")
    if len(body) > max_bytes:
        raise ValueError(f"the payload is larger than {max_bytes:,} bytes")
    try:
        strictjson.check_payload(body)
    except strictjson.JsonError as exc:
        raise ValueError(f"the payload is not valid JSON: {exc}") from None
    return body
