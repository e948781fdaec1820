"""Redis store: several dispatcher processes share one Redis or Valkey server, or a Redis
Cluster (`redis://host:6379/0`, `rediss://` for TLS).

Key layout (`P` is `store.prefix`; every key of a pool carries the hash tag `{P:pool}`, so
on a cluster a pool lives in one slot and each Lua script, which touches one pool, runs on
one node)::

    {P}:pools            SET     names of the pools that ever had a job
    {P}:seq              STRING  counter of job numbers (each process takes 4096 at a time)
    {P}:settings         HASH    pool -> JSON of its runtime overrides
    {P}:audit            STREAM  one entry per operator action, field e = JSON

    {P:pool}:meta        HASH    job -> meta record (MessagePack array, see scripts.py)
    {P:pool}:msg         HASH    job -> the message (MessagePack, payload bytes as sent)
    {P:pool}:ids         HASH    message id -> job (duplicates, status look-ups)
    {P:pool}:r:<prio>    ZSET    ready jobs of one priority, scored by available_at
    {P:pool}:prios       ZSET    priorities that have ready jobs, scored -priority
    {P:pool}:sched       ZSET    scheduled jobs (delays, retries, paced replays) by due time
    {P:pool}:lease       ZSET    claimed jobs by the end of their lease (server time)
    {P:pool}:log         HASH    job -> this generation's attempts (MessagePack, appended)
    {P:pool}:hist        HASH    job -> earlier generations' attempts (after DLQ replays)
    {P:pool}:live        ZSET    undone jobs by created_at (oldest_message_age)
    {P:pool}:done        ZSET    delivered jobs by finished_at (expiry after retention)
    {P:pool}:dlq         ZSET    dead jobs by failed_at (DLQ pages, newest first)
    {P:pool}:dedup       HASH    producer id -> digest of tag and payload
    {P:pool}:dedupx      ZSET    producer id by the end of its dedup window

A job is named by its number, zero-padded hex, so that equal scores order by enqueue.

Why sorted sets and not one stream per pool: a stream is append-ordered, but the Store
contract claims the highest priority first, then the oldest available_at (a retry due now
goes ahead of younger messages, a replayed message keeps its place), and a stream can do
neither. Leases give what a consumer group's pending entries list gives: a claimed job
stays in `lease` until its outcome is written (its process extends the lease every
lease/3 seconds while it holds the job); a claim by any process first moves back jobs
whose lease ended (their process died or stalled) and due scheduled jobs, so nothing waits
for a particular process, and each job moves once because each move is one atomic script.
A restarted process (same consumer name) takes its own claims back at once on open.

Scheduled work lives in `sched` and moves to the ready sets inside the claim script of
whichever process claims first. Message ids dedup per pool: a message's id is checked in
the first pool of its fan-out (where its producer id and digest are kept too).

Durability: a 2xx means on disk only with `appendonly yes` and `appendfsync always`; the
store reads both at open, warns otherwise, and says so in `durable` (the metric
dispatcher_store_durable). Every write is confirmed by the server before the call returns,
and a lost connection is a StoreError (503 at the API), never a silent retry.
"""

from .store import RedisStore

__all__ = ["RedisStore"]
