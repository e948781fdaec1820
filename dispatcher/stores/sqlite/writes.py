"""The writes, each a function of the writer's connection and the request's Delta (run
on the writer thread, inside its group transaction), with the statements of the hot path."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final

from ...errors import IdConflict
from ...message import AuditEntry, Job, Message
from .claims import ClaimBooks, Delta
from .rows import DELIVERED_FIRST, NewRows, to_json
from .schema import DEAD, DELIVERED, FANOUT_LIMIT, SCHEDULED

_INSERT_MESSAGE = ("INSERT INTO messages VALUES", "")
#: for ids nobody has checked: the rowcount tells whether one was already there
_INSERT_MESSAGE_NEW = ("INSERT OR IGNORE INTO messages VALUES", "")
#: the same for a plain batch (rows.NewRows.shared): (mid, id, tag, payload) rows, the
#: shared priority and time bound once; a bound value costs more than the SQL that copies it
_PLAIN = """INTO messages (mid, id, tag, payload, headers, priority, created_at, available_at,
    trace) SELECT column1, column2, column3, column4, NULL, ?1, ?2, ?2, NULL FROM (VALUES"""
_INSERT_PLAIN = (f"INSERT {_PLAIN}", ")")
_INSERT_PLAIN_NEW = (f"INSERT OR IGNORE {_PLAIN}", ")")
#: producer ids, remembered for their dedup window: (id, digest, until)
_INSERT_DEDUP = ("INSERT OR REPLACE INTO dedup (id, digest, until) VALUES", "")
_INSERT_JOB = (
    "INSERT INTO jobs (jid, mid, pool, state, priority, available_at, created_at) VALUES",
    "",
)
_ROWS_PER_STATEMENT: Final = 1024
_PROMOTE = "UPDATE jobs SET state = 0 WHERE state = 4 AND pool = ? AND available_at <= ?"
#: the jobs alone: their messages come from the store's `fresh`, or _MESSAGES
_CLAIM_COLUMNS = """j.jid, j.attempts, j.available_at, j.priority
    FROM jobs j WHERE j.state = 0 AND j.pool = ?1 AND j.available_at <= ?2"""
_MESSAGES = """SELECT mid, id, tag, payload, created_at, priority, available_at, headers, trace
    FROM messages WHERE mid IN (SELECT value FROM json_each(?))"""
#: the head of jobs_ready, in claim order
_CLAIM_HEAD = f"""SELECT {_CLAIM_COLUMNS}
    ORDER BY j.priority DESC, j.available_at, j.jid LIMIT ?3"""
#: what follows the cursor (?3, ?4, ?5) = (priority, available_at, jid), in three index
#: ranges, since the index mixes directions and a row-value bound (available_at, jid) > (a, j)
#: would only seek on available_at (a batch shares one time: it would rescan the batch)
_CLAIM_SAME_TIME = f"""SELECT {_CLAIM_COLUMNS}
    AND j.priority = ?3 AND j.available_at = ?4 AND j.jid > ?5
    ORDER BY j.jid LIMIT ?6"""
_CLAIM_LATER = f"""SELECT {_CLAIM_COLUMNS}
    AND j.priority = ?3 AND j.available_at > ?4
    ORDER BY j.available_at, j.jid LIMIT ?5"""
_CLAIM_LOWER = f"""SELECT {_CLAIM_COLUMNS}
    AND j.priority < ?3
    ORDER BY j.priority DESC, j.available_at, j.jid LIMIT ?4"""
_NEXT_AT = "SELECT min(available_at) FROM jobs WHERE state = 4 AND pool = ?"
#: of a pool's first ?3 scheduled jobs, how many are due after ?2, and the first one's time
_LATER = """SELECT count(*), min(available_at) FROM (SELECT available_at FROM jobs
    WHERE state = 4 AND pool = ?1 AND available_at > ?2 ORDER BY available_at LIMIT ?3)"""
#: up to how many queued jobs the writer looks at to find them all scheduled for later
_FEW: Final = 64
# Outcomes: (head, tail) around a multi-row VALUES list, for _many; the jid comes last.
_DELIVERED_SQL = (
    """UPDATE jobs SET state = 2, attempts = attempts + 1,
        attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json(v.column1)),
        finished_at = v.column2
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column3 AND jobs.state <= 1",
)
#: the common case, success at the first attempt: no log, its time and duration as numbers
#: (reads.message_status makes the attempt of them); finished_at is their sum, as for the rest
_DELIVERED_FIRST_SQL = (
    """UPDATE jobs SET state = 2, attempts = 1, first_started = v.column1,
        first_took = v.column2, finished_at = v.column1 + v.column2
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column3 AND jobs.state <= 1",
)
_RETRY_SQL = (
    """UPDATE jobs SET state = 4, attempts = attempts + 1,
        attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json(v.column1)),
        available_at = v.column2, last_error = v.column3
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column4 AND jobs.state <= 1",
)
_DEAD_SQL = (
    """UPDATE jobs SET state = 3, attempts = attempts + 1,
        attempt_log = json_insert(coalesce(attempt_log, '[]'), '$[#]', json(v.column1)),
        finished_at = v.column2, dead_reason = v.column3, last_error = v.column4
    FROM (VALUES""",
    ") AS v WHERE jobs.jid = v.column5 AND jobs.state <= 1",
)
_OUTCOME_SQL: Final = {
    DEAD: _DEAD_SQL,
    SCHEDULED: _RETRY_SQL,
    DELIVERED: _DELIVERED_SQL,
    DELIVERED_FIRST: _DELIVERED_FIRST_SQL,
}
_REPLAY = """
    UPDATE jobs SET
        state = CASE WHEN (c.key + ?2) * ?3 = 0 THEN 0 ELSE 4 END,
        available_at = ?1 + (c.key + ?2) * ?3,
        attempts = 0,
        history = json_insert(coalesce(history, '[]'), '$[#]', json(coalesce(attempt_log, '[]'))),
        attempt_log = NULL, finished_at = NULL, dead_reason = NULL, last_error = NULL
    FROM json_each(?4) AS c
    WHERE jobs.jid = c.value AND jobs.state = 3
    RETURNING jobs.pool"""
_DROP_ORPHANS = """
    DELETE FROM messages WHERE mid IN (SELECT value FROM json_each(?))
    AND NOT EXISTS (
        SELECT 1 FROM jobs WHERE jobs.jid BETWEEN messages.mid * 1024 AND messages.mid * 1024 + 1023
    )"""


@functools.lru_cache(maxsize=128)
def _values(sql: tuple[str, str], width: int, n: int) -> str:
    row = f"({', '.join('?' * width)})"
    return f"{sql[0]} {', '.join([row] * n)}{sql[1]}"


def _many(
    db: sqlite3.Connection,
    sql: tuple[str, str],
    rows: Sequence[tuple[Any, ...]],
    shared: Sequence[Any] = (),
) -> int:
    """Run `sql` = (head, tail) over `rows` (all as wide as the first) as head, a multi-row
    VALUES list, tail: an INSERT ... VALUES, or an UPDATE ... FROM (VALUES ...) AS v; the
    `shared` values are bound first, as ?1, ?2, ... of the head. Not executemany: that
    steps once per row, and each step gives the GIL up and must win it back from the event
    loop; behind a busy loop that waiting, not SQLite, was most of the writer's time. Here
    each statement binds up to _ROWS_PER_STATEMENT rows, then runs them in C in one step.
    Returns the rows changed."""
    if not rows:
        return 0
    width = len(rows[0])
    # SQLite before 3.32 binds at most 999 parameters per statement
    limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - len(shared)
    per = min(_ROWS_PER_STATEMENT, limit // width)
    done = 0
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        params = [*shared]
        params += [v for row in part for v in row]
        done += db.execute(_values(sql, width, len(part)), params).rowcount
    return done


def _insert_messages(db: sqlite3.Connection, rows: NewRows, new: bool) -> int:
    """INSERT (OR IGNORE, when `new`) the messages of `rows`."""
    if rows.shared is None:
        return _many(db, _INSERT_MESSAGE_NEW if new else _INSERT_MESSAGE, rows.messages)
    return _many(db, _INSERT_PLAIN_NEW if new else _INSERT_PLAIN, rows.messages, rows.shared)


def _ids_json(ids: Sequence[int]) -> str:
    return f"[{','.join(map(str, ids))}]"


#: how many unclaimed jobs a pool has queued, as of the running request (the writer's counters)
Queued = Callable[[str], int]


def enqueue(
    db: sqlite3.Connection,
    d: Delta,
    claims: ClaimBooks,
    rows: NewRows,
    queued: Queued,
    each: bool = False,
) -> list[bool | IdConflict]:
    """True for each message stored, False for a duplicate. An id that conflicts raises
    IdConflict (the writer rolls the request back), or with `each` (Store.enqueue_each)
    answers its own item, which is left out, and the rest is stored. Jobs `rows.taken`
    are written claimed only for pools with nothing else queued (see _hand_over)."""
    conflicts: dict[int, IdConflict] = {}
    held = _known_ids(db, rows, conflicts if each else None) if rows.keyed else set()
    if not held and not conflicts:
        # No id is remembered: they are most likely all new (the dispatcher made them, or
        # producers did). Try them all, and only if one was already taken (an id reused
        # without a digest, or repeated in the batch) go back and sort them out.
        db.execute("SAVEPOINT enqueue")
        if _insert_messages(db, rows, new=True) == len(rows.messages):
            db.execute("RELEASE enqueue")
            _hand_over(db, d, claims, rows, queued)
            _many(db, _INSERT_JOB, rows.jobs)
            _many(db, _INSERT_DEDUP, [k[1:] for k in rows.keyed])
            _arrived(d, claims, rows)
            return [True] * len(rows.messages)
        db.execute("ROLLBACK TO enqueue")
        db.execute("RELEASE enqueue")
    seen = held | {
        row[0]
        for row in db.execute(
            "SELECT id FROM messages WHERE id IN (SELECT value FROM json_each(?))",
            (to_json([m[1] for m in rows.messages]),),
        )
    }
    out: list[bool | IdConflict] = []
    kept: set[int] = set()
    for index, m in enumerate(rows.messages):
        conflict = conflicts.get(index)
        if conflict is not None:
            out.append(conflict)
            continue
        is_new = m[1] not in seen
        out.append(is_new)
        if is_new:
            seen.add(m[1])
            kept.add(m[0])
    given = rows
    if len(kept) < len(rows.messages):
        rows = rows.keep(kept)
        given.taken = rows.taken  # what the store hands over
    _hand_over(db, d, claims, rows, queued)
    given.jobs = rows.jobs  # and what it keeps for claims
    _insert_messages(db, rows, new=False)
    _many(db, _INSERT_JOB, rows.jobs)
    _many(db, _INSERT_DEDUP, [k[1:] for k in rows.keyed])
    _arrived(d, claims, rows)
    return out


def _hand_over(
    db: sqlite3.Connection, d: Delta, claims: ClaimBooks, rows: NewRows, queued: Queued
) -> None:
    """Book the jobs `rows.taken` as claimed, or, for a pool whose queue holds a job a
    claim would return first, write them ready after all. A pool whose queue holds nothing
    but jobs scheduled after this batch (retries pending on a flaky receiver) is as good as
    empty: the new jobs sort ahead of them. Such pools go in `rows.opens` with their
    ready_gen and the time their next scheduled job is due: the store may keep their
    queue's head in memory from this batch on (SqliteStore._tails)."""
    # Scheduled jobs must be due after the last of the new ready jobs (a batch given
    # through the Store API may span several times; the publisher's share one).
    after = rows.now if rows.first_ready is None else max(rows.now, rows.first_ready[2])
    for pool in rows.counts:
        waiting = queued(pool)
        idle, next_at = waiting == 0, None
        if 0 < waiting <= _FEW:
            later, next_at = db.execute(_LATER, (pool, after, waiting)).fetchone()
            idle = later == waiting
        if idle:
            rows.opens[pool] = (claims.of(pool).ready_gen, next_at)
        jids = rows.taken.get(pool)
        if jids and idle:
            d.undo.append(claims.of(pool).handed(jids))
        elif jids:
            rows.untake(pool)


def _arrived(d: Delta, claims: ClaimBooks, rows: NewRows) -> None:
    taken = rows.taken
    for pool, n in rows.counts.items():
        handed = len(taken.get(pool, ()))
        d[pool] = [n - handed, handed, 0]
        if rows.first_ready is not None and handed < n:
            d.undo.append(claims.of(pool).arrived(*rows.first_ready))


def _known_ids(
    db: sqlite3.Connection, rows: NewRows, conflicts: dict[int, IdConflict] | None
) -> set[str]:
    """Ids remembered within their dedup window. One that comes back (or repeats within
    the batch) with another digest raises IdConflict, or with `conflicts` is put there by
    its index. Runs before anything is written."""
    held: dict[str, bytes] = dict(
        db.execute(
            "SELECT id, digest FROM dedup WHERE id IN (SELECT value FROM json_each(?))"
            " AND until > ?",
            (to_json([m_id for _, m_id, _, _ in rows.keyed]), rows.now),
        ).fetchall()
    )
    first: dict[str, bytes] = {}
    for index, m_id, digest, _ in rows.keyed:
        # A conflicting item never becomes the `first` of its id: what it conflicts with is.
        if held.get(m_id, digest) != digest or first.setdefault(m_id, digest) != digest:
            if conflicts is None:
                raise IdConflict(m_id, index)
            conflicts[index] = IdConflict(m_id, index)
    return set(held)


def claim(
    db: sqlite3.Connection,
    d: Delta,
    claims: ClaimBooks,
    fresh: dict[int, Message],
    pool: str,
    limit: int,
    now: float,
) -> tuple[list[tuple[Any, ...]], float | None]:
    """Up to `limit` claimable jobs as (jid, attempts, available_at, message), and the next
    scheduled job's time; the store builds the Jobs, off this thread. The message is the
    one `fresh` kept by mid (taken out here), else its row as reads.message reads it, read
    in one query for all that missed."""
    books = claims.of(pool)
    held = books.held
    cursor = books.cursor
    if db.execute(_PROMOTE, (pool, now)).rowcount:
        cursor = None
        books.readied()
        # Due by `now`: a claim with an earlier clock must not leave its cursor past them
        # (never undone: too late a future_at only costs a claim a read from the head).
        books.future_at = max(books.future_at, now)
    rows: list[tuple[Any, ...]] = []
    while len(rows) < limit:
        want = limit - len(rows)
        if cursor is None:
            seen = db.execute(_CLAIM_HEAD, (pool, now, want)).fetchall()
        else:
            priority, available_at, _ = cursor
            seen = db.execute(_CLAIM_SAME_TIME, (pool, now, *cursor, want)).fetchall()
            if len(seen) < want:
                seen += db.execute(
                    _CLAIM_LATER, (pool, now, priority, available_at, want - len(seen))
                ).fetchall()
            if len(seen) < want:
                seen += db.execute(_CLAIM_LOWER, (pool, now, priority, want - len(seen))).fetchall()
        if not seen:
            break
        last = seen[-1]
        cursor = (last[3], last[2], last[0])
        # Held jobs are skipped: after a rewind, and jobs claimed from the store's tail
        # (they stay 0 in the file) until their outcomes are written.
        rows.extend(r for r in seen if r[0] not in held)
        if len(seen) < want:
            break
    if now < books.future_at:
        cursor = None  # a ready job due after `now` may sit behind it, unseen
    added, undo = books.claimed([r[0] for r in rows], cursor)
    d.undo.append(undo)
    if len(added) < len(rows):  # taken from the store's tail meanwhile
        rows = [r for r in rows if r[0] in added]
    if rows:
        d[pool] = [-len(rows), len(rows), 0]
    next_at = db.execute(_NEXT_AT, (pool,)).fetchone()[0]
    return _with_messages(db, rows, fresh), next_at


def _with_messages(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]], fresh: dict[int, Message]
) -> list[tuple[Any, ...]]:
    """Claimed (jid, attempts, available_at, priority) rows as (jid, attempts,
    available_at, message): a Message from `fresh`, or a message row. Reading a message
    back costs the writer a row of Python objects while it holds the GIL; most claimed
    messages were enqueued moments before, and are still in `fresh`."""
    out: list[tuple[Any, ...]] = []
    missed: list[int] = []
    take = fresh.pop
    for jid, attempts, available_at, _ in rows:
        m = take(jid // FANOUT_LIMIT, None)
        if m is None:
            missed.append(len(out))
        out.append((jid, attempts, available_at, m))
    if missed:
        mids = [out[i][0] // FANOUT_LIMIT for i in missed]
        found = {r[0]: r[1:] for r in db.execute(_MESSAGES, (_ids_json(mids),))}
        for i, mid in zip(missed, mids, strict=True):
            jid, attempts, available_at, _ = out[i]
            out[i] = (jid, attempts, available_at, found[mid])
    return out


def complete(
    db: sqlite3.Connection,
    d: Delta,
    claims: ClaimBooks,
    groups: dict[tuple[int, str], list[tuple[Any, ...]]],
) -> None:
    """Apply outcome rows grouped by (fate, pool), as rows.outcome_rows prepared them; the
    jid is the last column. Jobs not held (released meanwhile) are left alone."""
    for (fate, pool), rows in groups.items():
        books = claims.get(pool)
        if books is None:
            continue
        done, undo = books.finished([row[-1] for row in rows])
        d.undo.append(undo)
        if not done:
            continue
        mine = rows if len(done) == len(rows) else [row for row in rows if row[-1] in done]
        n = _many(db, _OUTCOME_SQL[fate], mine)
        delta = d.setdefault(pool, [0, 0, 0])
        delta[1] -= n
        if fate == SCHEDULED:
            delta[0] += n
            books.readied()  # a scheduled job the store's tail does not know the time of
        elif fate == DEAD:
            delta[2] += n


def release(db: sqlite3.Connection, d: Delta, claims: ClaimBooks, jobs: Sequence[Job]) -> None:
    by_pool: dict[str, list[int]] = {}
    for job in jobs:
        by_pool.setdefault(job.pool, []).append(job.key)
    for pool, jids in by_pool.items():
        books = claims.get(pool)
        if books is None:
            continue
        held = books.held
        mine = [jid for jid in set(jids) if jid in held]
        # When the last of them is due (read before `released` lets go of them)
        latest = max((job.enqueued_at for job in jobs if job.key in held), default=0.0)
        # Jobs handed over at enqueue were written claimed: ready them (others match nothing).
        db.execute(
            "UPDATE jobs SET state = 0 WHERE jid IN (SELECT value FROM json_each(?)) AND state = 1",
            (_ids_json(mine),),
        )
        d[pool] = [len(mine), -len(mine), 0]
        d.undo.append(books.released(mine, latest))


def replay(
    db: sqlite3.Connection,
    d: Delta,
    claims: ClaimBooks,
    jids: Sequence[int],
    now: float,
    first: int,
    interval: float,
) -> dict[str, int]:
    out: dict[str, int] = {}
    for (pool,) in db.execute(_REPLAY, (now, first, interval, _ids_json(jids))):
        out[pool] = out.get(pool, 0) + 1
    for pool, n in out.items():
        d[pool] = [n, 0, -n]
        books = claims.get(pool)
        if books is not None:
            d.undo.append(books.rewind(now))  # ready ones are due at `now`
    return out


def purge(db: sqlite3.Connection, d: Delta, jids: Sequence[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    mids: set[int] = set()
    deleted = db.execute(
        "DELETE FROM jobs WHERE jid IN (SELECT value FROM json_each(?)) AND state = 3"
        " RETURNING pool, mid",
        (_ids_json(jids),),
    ).fetchall()
    for pool, mid in deleted:
        out[pool] = out.get(pool, 0) + 1
        mids.add(mid)
    db.execute(_DROP_ORPHANS, (_ids_json(list(mids)),))
    for pool, n in out.items():
        d[pool] = [0, 0, -n]
    return out


def expire(db: sqlite3.Connection, d: Delta, before: float, first_mid: int, last_mid: int) -> int:
    """Forget delivered jobs finished before `before` among the messages numbered
    first_mid..last_mid: a rowid range, so no index is needed (or paid for by every
    completion). The state and time test makes any range safe; a range only decides
    what is looked at."""
    mids = db.execute(
        "DELETE FROM jobs WHERE jid BETWEEN ? AND ? AND state = 2 AND finished_at < ?"
        " RETURNING mid",
        (first_mid * FANOUT_LIMIT, last_mid * FANOUT_LIMIT + FANOUT_LIMIT - 1, before),
    ).fetchall()
    if mids:
        db.execute(_DROP_ORPHANS, (_ids_json(list({m for (m,) in mids})),))
    return len(mids)


def forget_ids(db: sqlite3.Connection, d: Delta, before: float) -> None:
    db.execute("DELETE FROM dedup WHERE until < ?", (before,))


def save_settings(db: sqlite3.Connection, d: Delta, pool: str, settings: str) -> None:
    db.execute(
        "INSERT INTO pool_settings (pool, settings) VALUES (?, ?)"
        " ON CONFLICT (pool) DO UPDATE SET settings = excluded.settings",
        (pool, settings),
    )


def audit(db: sqlite3.Connection, d: Delta, e: AuditEntry, detail: str) -> None:
    db.execute(
        "INSERT INTO audit (at, actor, action, target, detail, count) VALUES (?, ?, ?, ?, ?, ?)",
        (e.at, e.actor, e.action, e.target, detail, e.count),
    )
