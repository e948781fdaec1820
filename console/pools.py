"""The overview of every pool, its live JSON, and the page of one pool with its controls
(pause, throttle, reset, and opening or closing its circuit breaker by hand)."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from dispatcher.dispatcher import Dispatcher
from dispatcher.message import AuditEntry, PoolInfo

from . import fmt
from .core import PREFIX, console_of, dispatcher_of, form_of, render, require, route
from .sampler import Sampler, sparkline

AUDIT_SCAN = 500  # audit entries searched for "who set this"; older changes show no author
_THROTTLES = ("rate", "burst", "concurrency")


def state_of(info: PoolInfo) -> str:
    """The pool's state badge: what holds its deliveries back, the strongest first."""
    if info.paused:
        return "paused"
    if info.circuit == "open":
        return "open"
    if info.circuit == "half_open":
        return "probing"
    if info.hold_seconds > 0:
        return "held"
    if any(key in info.overrides for key in _THROTTLES):
        return "throttled"
    return "running"


def protection(info: PoolInfo) -> str:
    """What keeps the pool from its receiver now, in words: the circuit and the hold."""
    if info.circuit == "open":
        if info.half_open_in_seconds is None:  # the reason names who opened it
            return f"circuit {info.circuit_reason}, until closed by hand"
        return f"circuit open, probing in {fmt.age(info.half_open_in_seconds)}"
    if info.circuit == "half_open":
        return "circuit half-open: probing"
    if info.hold_seconds > 0:
        return f"held {fmt.age(info.hold_seconds)} (Retry-After)"
    return "circuit closed" if info.circuit_enabled else "—"


def pool_row(info: PoolInfo, sampler: Sampler | None) -> dict[str, Any]:
    """One pool as the overview shows it; the same dict feeds the page and live.json."""
    delivered: list[float] = []
    failed: list[float] = []
    backlog: list[float] = []
    ratio = per_second = 0.0
    if sampler is not None:
        delivered, failed, backlog = sampler.series(info.name)
        rates = sampler.rates(info.name)
        per_second, ratio = rates.delivered_per_second, rates.failure_ratio
    top = max([*delivered, *failed, 0.0])
    return {
        "name": info.name,
        "state": state_of(info),
        "backlog": fmt.number(info.backlog),
        "scheduled": fmt.number(info.scheduled),
        "oldest": fmt.age(info.oldest_age_seconds) if info.oldest_age_seconds else "—",
        "in_flight": info.in_flight,
        "concurrency": info.concurrency,
        "limit": info.effective_concurrency,
        "busy": f"{info.in_flight} / {info.effective_concurrency}"
        + (f" of {info.concurrency}" if info.adaptive_enabled else ""),
        "circuit": info.circuit,
        "protection": protection(info),
        "held": info.hold_seconds > 0,
        "throughput": fmt.rate(per_second),
        "failure": fmt.percent(ratio),
        "failing": ratio >= 0.05,
        "dlq": fmt.number(info.dlq),
        "has_dlq": info.dlq > 0,
        "rate": fmt.rate(info.rate),
        "spark_delivered": sparkline(delivered, top=top),
        "spark_failed": sparkline(failed, top=top),
        "spark_backlog": sparkline(backlog),
    }


async def pool_changes(
    dispatcher: Dispatcher, pool: str | None = None, scan: int = AUDIT_SCAN
) -> list[AuditEntry]:
    """Recent `pool.*` audit entries (of one pool), newest first."""
    out: list[AuditEntry] = []
    cursor: str | None = None
    seen = 0
    while seen < scan:
        entries, cursor = await dispatcher.audit_list(limit=min(100, scan - seen), cursor=cursor)
        seen += len(entries)
        out.extend(
            e
            for e in entries
            if e.action.startswith("pool.") and (pool is None or e.target == pool)
        )
        if cursor is None:
            break
    return out


def setters(changes: list[AuditEntry]) -> dict[str, AuditEntry]:
    """Per setting (rate, burst, concurrency, paused): the change that set its value now."""
    out: dict[str, AuditEntry] = {}
    for entry in changes:  # newest first
        if entry.action == "pool.reset":
            break  # everything before a reset no longer holds
        for key in entry.detail:
            out.setdefault(key, entry)
    return out


@route
async def overview(request: web.Request) -> web.StreamResponse:
    dispatcher = dispatcher_of(request)
    sampler = console_of(request).sampler
    infos = await dispatcher.pool_infos()
    changes = await pool_changes(dispatcher)
    last_change: dict[str, AuditEntry] = {}
    for entry in changes:
        if entry.action != "pool.circuit":  # the hint explains a pause or a throttle
            last_change.setdefault(entry.target, entry)
    rows = [pool_row(info, sampler) for info in infos]
    context = {
        "rows": rows,
        "last_change": last_change,
        "dlq_total": sum(info.dlq for info in infos),
        "backlog_total": sum(info.backlog + info.scheduled for info in infos),
        "in_flight_total": sum(info.in_flight for info in infos),
        "paused_count": sum(info.paused for info in infos),
        "interval": sampler.interval if sampler else 0,
    }
    return render(request, "overview.html", context)


@route
async def live(request: web.Request) -> web.StreamResponse:
    """The overview's numbers for the page's poller, from the sampler's latest sample."""
    sampler = console_of(request).sampler
    latest = sampler.latest if sampler else None
    if latest is None:
        infos = await dispatcher_of(request).pool_infos()
    else:
        infos = list(latest.infos.values())
    return web.json_response(
        {
            "pools": [pool_row(info, sampler) for info in infos],
            "dlq_total": fmt.number(sum(info.dlq for info in infos)),
            "backlog_total": fmt.number(sum(info.backlog + info.scheduled for info in infos)),
            "in_flight_total": fmt.number(sum(info.in_flight for info in infos)),
            "paused_count": fmt.number(sum(info.paused for info in infos)),
        }
    )


@route
async def pool_page(request: web.Request) -> web.StreamResponse:
    dispatcher = dispatcher_of(request)
    name = request.match_info["name"]
    info = await dispatcher.pool_info(name)
    changes = await pool_changes(dispatcher, name)
    configured = dispatcher.settings.pools[name]
    context = {
        "info": info,
        "row": pool_row(info, console_of(request).sampler),
        "configured": {
            "rate": configured.rate,
            "burst": configured.effective_burst if configured.rate else None,
            "concurrency": configured.concurrency,
        },
        "setters": setters(changes),
        "changes": changes[:20],
    }
    return render(request, "pool.html", context)


def _pool_url(name: str) -> str:
    return f"{PREFIX}/pools/{name}"


@route
async def pause(request: web.Request) -> web.StreamResponse:
    return await _set_paused(request, True)


@route
async def resume(request: web.Request) -> web.StreamResponse:
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, paused: bool) -> web.StreamResponse:
    session = require(request, "operate")
    name = request.match_info["name"]
    await dispatcher_of(request).update_pool(name, actor=session.user, paused=paused)
    session.flash(f"Pool {name} {'paused' if paused else 'resumed'}.")
    raise web.HTTPSeeOther(_next(await form_of(request), _pool_url(name)))


@route
async def throttle(request: web.Request) -> web.StreamResponse:
    session = require(request, "operate")
    name = request.match_info["name"]
    form = await form_of(request)
    try:
        changes = parse_throttle(form)
    except ValueError as exc:
        session.flash(str(exc), "error")
        raise web.HTTPSeeOther(_pool_url(name)) from None
    dispatcher = dispatcher_of(request)
    info = await dispatcher.pool_info(name)
    # The form sends every field; audit (and "set by") only what the operator changed.
    changes = {k: v for k, v in changes.items() if getattr(info, k) != v}
    if not changes:
        session.flash(f"Pool {name}: nothing changed.")
        raise web.HTTPSeeOther(_pool_url(name))
    await dispatcher.update_pool(name, actor=session.user, **changes)
    shown = ", ".join(f"{k} {'unlimited' if v is None else v}" for k, v in changes.items())
    session.flash(f"Pool {name}: {shown}.")
    raise web.HTTPSeeOther(_pool_url(name))


def parse_throttle(form: dict[str, str]) -> dict[str, Any]:
    """rate (blank: unlimited), burst and concurrency (blank: unchanged)."""
    out: dict[str, Any] = {}
    if "rate" in form:
        text = form["rate"].strip()
        if not text:
            out["rate"] = None
        else:
            value = _number(text, "rate")
            if not 0 < value <= 1_000_000:
                raise ValueError("rate must be above 0 and at most 1,000,000 per second")
            out["rate"] = value
    for key, top in (("burst", 1_000_000), ("concurrency", 10_000)):
        text = form.get(key, "").strip()
        if text:
            value = _number(text, key)
            if value != int(value) or not 1 <= value <= top:
                raise ValueError(f"{key} must be a whole number from 1 to {top:,}")
            out[key] = int(value)
    if not out:
        raise ValueError("nothing to change")
    return out


def _number(text: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{key} must be a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number")
    return value


@route
async def circuit(request: web.Request) -> web.StreamResponse:
    """Open the pool's circuit by hand (it stays open until closed by hand) or close it."""
    session = require(request, "operate")
    name = request.match_info["name"]
    form = await form_of(request)
    state = form.get("state")
    if state not in ("open", "closed"):
        session.flash("The circuit is either open or closed.", "error")
        raise web.HTTPSeeOther(_pool_url(name))
    opened = state == "open"
    await dispatcher_of(request).update_pool(
        name, actor=session.user, circuit="open" if opened else "closed"
    )
    if opened:
        session.flash(f"Pool {name}: circuit open; nothing is attempted until you close it.")
    else:
        session.flash(f"Pool {name}: circuit closed; deliveries resume.")
    raise web.HTTPSeeOther(_next(form, _pool_url(name)))


@route
async def reset(request: web.Request) -> web.StreamResponse:
    session = require(request, "operate")
    name = request.match_info["name"]
    await dispatcher_of(request).reset_pool(name, actor=session.user)
    session.flash(f"Pool {name} is back to its configured settings and running.")
    raise web.HTTPSeeOther(_pool_url(name))


def _next(form: dict[str, str], default: str) -> str:
    target = form.get("next", "")
    return target if target.startswith(f"{PREFIX}/") and "//" not in target else default
