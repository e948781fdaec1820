"""SQLite store: the embedded, durable default (`sqlite:///path/to/file.db`).

Storage layout, schema version 4 (`PRAGMA user_version`; schema.py migrates in order)::

    messages                      one row per accepted message
      mid INTEGER PRIMARY KEY       assigned by the writer thread (max + 1 at open)
      id TEXT UNIQUE                the message id: dedup
      tag, payload BLOB (the producer's bytes), headers (JSON object, NULL when empty),
      priority, created_at, available_at (as sent: created_at + delay), trace

    jobs                          one row per (message, pool)
      jid INTEGER PRIMARY KEY       Job.key: mid * 1024 + the pool's place in the fan-out
      mid, pool                     the message and the pool; jid = mid * 1024 + k, so a
                                    message's jobs are one rowid range (no extra index)
      state                         0 ready · 1 handed over · 2 delivered · 3 dead ·
                                    4 scheduled (1: a new job written claimed for its pool's
                                    window, see below; open() readies such rows)
      priority                      the message's, for jobs_ready
      available_at                  when it became or becomes ready: max(created_at,
                                    message.available_at), retry_at, or now + k*interval on
                                    replay; also Job.enqueued_at
      created_at                    the message's, for jobs_undone (oldest_at)
      attempts                      attempts in the current generation
      attempt_log                   JSON array of this generation's attempts (NULL: none, or
                                    a success at the first attempt, kept as the two below)
      first_started, first_took     (version 4) that first attempt's start and duration
      history                       JSON array of earlier generations' arrays (NULL: none)
      finished_at                   set when delivered or dead, NULL while undone
      dead_reason, last_error

      jobs_ready      (pool, priority DESC, available_at, jid) WHERE state = 0   claim order
      jobs_scheduled  (pool, available_at) WHERE state = 4     promote due jobs, next_at
      jobs_undone     (pool, created_at) WHERE finished_at IS NULL    oldest_at in O(log n)
      jobs_dead       (finished_at DESC, jid DESC) WHERE state = 3   DLQ pages
      jobs_dead_pool  (pool, finished_at DESC, jid DESC) WHERE state = 3

    pool_settings(pool TEXT PRIMARY KEY, settings TEXT)      JSON object per pool
    audit(aid INTEGER PRIMARY KEY, at, actor, action, target, detail JSON, count)

    dedup (version 2)             producer-given ids, remembered for the dedup window
      id TEXT PRIMARY KEY           the message id (WITHOUT ROWID)
      digest BLOB                   of tag and payload: the same id with another is refused
      until REAL                    end of the window; `expire` deletes rows past it

States 0 and 4 are both `State.QUEUED` outside. A job written with its available_at ahead
(a delayed message, a retry, a paced replay) is stored as 4; `claim` first moves the pool's
due 4s to 0 (one range on jobs_scheduled), then reads jobs_ready on from where the last claim
stopped, so scheduled jobs never sit in the way of a claim however many there are.

Claims are not written: a claimed job stays 0 and the writer keeps the claimed jids in
memory (claims.py, which the reader consults to show a job in flight). Those books change
as each request runs, so a later request of the same group sees them, and every change
keeps its inverse in the request's undo log for when the request or its group is rolled
back. Writing them cost a
row and an index update per message, only for a crash to make them ready again anyway.

Handoff (Store.hand_off): a pool that keeps up has nothing queued when new work arrives,
and a claim would only read back what was just written. So an enqueue asks each pool for
room in its window (on the loop, as the rows are built) and writes that many of the new
jobs as 1, claimed, when the writer finds nothing queued that a claim would return first
(else they are written 0 after all): nothing at all, or only jobs scheduled after the batch
(retries pending on a flaky receiver; a few are counted, up to writes._FEW). Such a job
never enters jobs_ready (no index entry written, none deleted on completion), and once the
commit is done the store hands the pool Jobs made from the Message objects it was given,
reading nothing back.

Threading model:

- `dispatcher-sqlite-writer`: one plain thread owns the only writing connection and does
  every write. A coroutine puts (function, future) on a SimpleQueue and awaits the future.
  The thread takes everything queued, runs it in ONE transaction (a SAVEPOINT per request,
  so a failing request is rolled back alone and its future gets a StoreError), commits
  once, then settles all futures with one `call_soon_threadsafe` per event loop. Whatever
  arrives during a commit goes into the next one: group commit. `commits` counts them.
- `dispatcher-sqlite-reader`: a one-thread executor owning a read-only connection; WAL lets
  it read while the writer writes. The event loop never touches SQLite.
- Counts: queued, claimed and dead per pool are counters the writer keeps in memory (loaded
  by one scan at open, changed after each commit by what it wrote), so `counts()` stays
  cheap with a million queued jobs; scheduled and oldest_at are index range reads.

Durability: with the default synchronous=FULL, every group that holds a durable write
(enqueue, outcomes, operator actions) is fsynced before any of its futures resolve, so a 2xx
means on disk. A group of only claims and releases (whose only write is promoting due
scheduled jobs, which a restart's claim would redo) commits without an fsync.

The writer's Python is kept small, because it competes for the GIL with the event loop:
rows are built on the loop (rows.py) and inserted with multi-row statements
(`writes._many`), each running in C without the GIL, instead of one step per row.

Bulk operations (DLQ replay and purge, expire) run as chunks of `store._CHUNK` rows, each its
own write request, so the hot path keeps flowing between chunks; a failure part-way leaves
the earlier chunks done.

The modules, inward first: `schema` (tables, migrations, connections), `claims` (the claim
books and their undo log), `rows` (rows built on the loop), `reads` and `writes` (functions
of a connection), `writer` (the group-commit thread), `store` (SqliteStore, composing them).
"""

from .schema import FANOUT_LIMIT, SCHEMA_VERSION
from .store import SqliteStore

__all__ = ["FANOUT_LIMIT", "SCHEMA_VERSION", "SqliteStore"]
