"""The reads, each a function of a connection (the store runs them on its reader thread;
a test can call them on any connection to the file)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from ...message import (
    Attempt,
    AuditEntry,
    DeadReason,
    DlqEntry,
    DlqFilter,
    JobStatus,
    Message,
    MessageStatus,
    Outcome,
    PoolCounts,
    State,
)
from ..base import format_dlq_cursor, parse_dlq_cursor
from .rows import to_json
from .schema import FANOUT_LIMIT, READY, SCHEDULED

_DLQ_COLUMNS = """j.jid, j.pool, j.attempts, j.last_error, j.finished_at, j.dead_reason,
    m.id, m.tag, m.payload, m.created_at, m.priority, m.available_at, m.headers, m.trace"""

_decode_headers = msgspec.json.Decoder(dict[str, str]).decode
_decode_attempts = msgspec.json.Decoder(list[Attempt]).decode
_decode_history = msgspec.json.Decoder(list[list[Attempt]]).decode
_decode_object = msgspec.json.Decoder(dict[str, Any]).decode

#: a message's row and its jobs' rows, as message_rows reads them
MessageRows = tuple[Any, list[Any]]


def message(row: Sequence[Any], i: int) -> Message:
    """A Message from row[i:i+8] = id, tag, payload, created_at, priority, available_at,
    headers, trace."""
    headers = row[i + 6]
    return Message(
        row[i],
        row[i + 1],
        row[i + 2],
        row[i + 3],
        row[i + 4],
        row[i + 5],
        _decode_headers(headers) if headers else {},
        row[i + 7],
    )


#: where a job row of `message_rows` holds its jid
JID = 7


def message_rows(db: sqlite3.Connection, message_id: str) -> MessageRows | None:
    """The message's row and its jobs' rows, from one snapshot."""
    db.execute("BEGIN")
    try:
        row = db.execute(
            "SELECT mid, id, tag, payload, created_at, priority, available_at, headers,"
            " trace FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            return None
        jobs = db.execute(
            "SELECT pool, state, available_at, attempt_log, history, finished_at,"
            " dead_reason, jid, first_started, first_took"
            " FROM jobs WHERE jid BETWEEN ? AND ? ORDER BY jid",
            (row[0] * FANOUT_LIMIT, row[0] * FANOUT_LIMIT + FANOUT_LIMIT - 1),
        ).fetchall()
    finally:
        db.execute("COMMIT")
    return row, jobs


def _first(started: float | None, took: float | None) -> list[Attempt]:
    """The attempts of a job delivered at its first attempt, as writes keep them."""
    if started is None or took is None:
        return []
    return [Attempt(1, started, took, Outcome.SUCCESS)]


def message_status(found: MessageRows, held: set[int]) -> MessageStatus:
    """The status of the message of `found`, calling the jobs in `held` claimed."""
    row, jobs = found
    return MessageStatus(
        message=message(row, 1),
        jobs=[
            JobStatus(
                pool=pool,
                state=State.CLAIMED
                if jid in held
                else State(READY if state == SCHEDULED else state),
                available_at=available_at,
                attempts=_decode_attempts(log) if log else _first(*first),
                history=_decode_history(history) if history else [],
                finished_at=finished_at,
                dead_reason=DeadReason(reason) if reason is not None else None,
            )
            for pool, state, available_at, log, history, finished_at, reason, jid, *first in jobs
        ],
    )


def counts(
    db: sqlite3.Connection, counters: list[tuple[str, list[int]]], now: float
) -> dict[str, PoolCounts]:
    """PoolCounts from the writer's counters (pool, [queued, claimed, dead]) and the index
    ranges that tell scheduled jobs and the oldest undone one."""
    out: dict[str, PoolCounts] = {}
    for pool, (queued, claimed, dead) in counters:
        scheduled = 0
        oldest_at = None
        if queued:
            scheduled = db.execute(
                "SELECT count(*) FROM jobs WHERE state = 4 AND pool = ? AND available_at > ?",
                (pool, now),
            ).fetchone()[0]
        if queued or claimed:
            oldest_at = db.execute(
                "SELECT min(created_at) FROM jobs WHERE finished_at IS NULL AND pool = ?",
                (pool,),
            ).fetchone()[0]
        out[pool] = PoolCounts(
            ready=max(queued - scheduled, 0),
            scheduled=scheduled,
            claimed=claimed,
            dead=dead,
            oldest_at=oldest_at,
        )
    return out


def _dlq_where(sel: DlqFilter) -> tuple[str, list[object], bool]:
    """SQL conditions on `jobs j` (and `messages m` when the bool says a join is needed)."""
    where = ["j.state = 3"]
    params: list[object] = []
    join = False
    if sel.ids is not None:
        where.append("m.id IN (SELECT value FROM json_each(?))")
        params.append(to_json(list(sel.ids)))
        join = True
    if sel.pool is not None:
        where.append("j.pool = ?")
        params.append(sel.pool)
    if sel.tag is not None:
        where.append("m.tag = ?")
        params.append(sel.tag)
        join = True
    if sel.error is not None:
        where.append("contains_ci(j.last_error, ?)")
        params.append(sel.error)
    if sel.since is not None:
        where.append("j.finished_at >= ?")
        params.append(sel.since)
    return " AND ".join(where), params, join


def dlq_list(
    db: sqlite3.Connection, sel: DlqFilter, limit: int, cursor: str | None
) -> tuple[list[DlqEntry], str | None]:
    where, params, _ = _dlq_where(sel)
    if cursor is not None:
        where += " AND (j.finished_at, j.jid) < (?, ?)"
        params.extend(parse_dlq_cursor(cursor))
    rows = db.execute(
        f"SELECT {_DLQ_COLUMNS} FROM jobs j JOIN messages m ON m.mid = j.mid"  # noqa: S608
        f" WHERE {where} ORDER BY j.finished_at DESC, j.jid DESC LIMIT ?",
        (*params, max(limit, 0) + 1),
    ).fetchall()
    more = len(rows) > limit > 0
    rows = rows[: max(limit, 0)]
    entries = [
        DlqEntry(
            message=message(r, 6),
            pool=r[1],
            attempts=r[2],
            error=r[3],
            failed_at=r[4],
            reason=DeadReason(r[5]),
        )
        for r in rows
    ]
    return entries, (format_dlq_cursor(rows[-1][4], rows[-1][0]) if more else None)


def dlq_count(db: sqlite3.Connection, sel: DlqFilter) -> int:
    where, params, join = _dlq_where(sel)
    source = "jobs j JOIN messages m ON m.mid = j.mid" if join else "jobs j"
    row = db.execute(
        f"SELECT count(*) FROM {source} WHERE {where}",  # noqa: S608
        params,
    ).fetchone()
    return int(row[0])


def dlq_jids(db: sqlite3.Connection, sel: DlqFilter) -> list[int]:
    """Matching DEAD jobs, oldest failure first."""
    where, params, join = _dlq_where(sel)
    source = "jobs j JOIN messages m ON m.mid = j.mid" if join else "jobs j"
    return [
        jid
        for (jid,) in db.execute(
            f"SELECT j.jid FROM {source} WHERE {where}"  # noqa: S608
            " ORDER BY j.finished_at, j.jid",
            params,
        )
    ]


def expiry_range(db: sqlite3.Connection, before: float) -> tuple[int, int]:
    """The lowest mid, and the highest mid of a message created before `before` (found
    by bisection on the rowid: mids are assigned in creation order). (1, 0) if none."""
    low_row = db.execute("SELECT min(mid), max(mid) FROM messages").fetchone()
    if low_row[0] is None:
        return 1, 0
    low, high = int(low_row[0]), int(low_row[1])
    first = low

    def created(mid: int) -> float | None:
        row = db.execute(
            "SELECT created_at FROM messages WHERE mid >= ? ORDER BY mid LIMIT 1", (mid,)
        ).fetchone()
        return None if row is None else float(row[0])

    # Invariant: messages from mid `high + 1` on were created at or after `before`.
    if (created(low) or before) >= before:
        return first, first - 1
    while low < high:
        mid = (low + high + 1) // 2
        at = created(mid)
        if at is not None and at < before:
            low = mid
        else:
            high = mid - 1
    return first, low


def pool_settings(db: sqlite3.Connection) -> dict[str, dict[str, object]]:
    rows = db.execute("SELECT pool, settings FROM pool_settings").fetchall()
    return {pool: _decode_object(settings) for pool, settings in rows}


def audit_list(
    db: sqlite3.Connection, limit: int, cursor: str | None
) -> tuple[list[AuditEntry], str | None]:
    before = int(cursor) if cursor is not None else None
    rows = db.execute(
        "SELECT aid, at, actor, action, target, detail, count FROM audit"
        " WHERE ?1 IS NULL OR aid < ?1 ORDER BY aid DESC LIMIT ?2",
        (before, max(limit, 0) + 1),
    ).fetchall()
    more = len(rows) > limit > 0
    rows = rows[: max(limit, 0)]
    entries = [
        AuditEntry(
            at=at,
            actor=actor,
            action=action,
            target=target,
            detail=_decode_object(detail),
            count=count,
        )
        for _, at, actor, action, target, detail, count in rows
    ]
    return entries, (str(rows[-1][0]) if more else None)
