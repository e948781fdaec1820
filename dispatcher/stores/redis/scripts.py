"""The Lua scripts of the Redis store. Each touches the keys of ONE pool (one hash tag), so
each runs as one atomic step on a single server and on a Redis Cluster alike.

Every script gets the pool's fixed keys as KEYS (in the order of `keys.POOL_KEYS`) and the
pool's key prefix `{prefix:pool}` as ARGV[1], from which it names the per-priority ready
sets `<prefix>:r:<priority>` (declared through the `prios` index, same slot).

A job's meta record is a MessagePack array (see codec.py for the Python side):

    [1] state   0 ready · 1 claimed · 2 delivered · 3 dead · 4 scheduled
    [2] attempts in this generation   [3] available_at   [4] priority   [5] created_at
    [6] claims  (counts every claim: a completion or release naming an older claim is stale)
    [7] finished_at or false   [8] dead reason or false   [9] last error or false
    [10] message id   [11] generations kept in the history

Times arrive as the shortest repr of a Python float; tonumber() parses them exactly and
cmsgpack packs doubles as float64, so no time loses a digit on the way through Lua (cjson,
which prints 14 digits, would).
"""

from __future__ import annotations

# Shared helpers, prepended to every script. KEYS: see keys.POOL_KEYS.
_PRELUDE = """
local META, MSG, IDS, SCHED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local LEASE, OWNER, LOG, HIST = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local LIVE, DONE, DLQ, PRIOS = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local DEDUP, DEDUPX, BUCKET = KEYS[13], KEYS[14], KEYS[15]
local PREFIX = ARGV[1]
local READY, CLAIMED, DELIVERED, DEAD, SCHEDULED = 0, 1, 2, 3, 4

local function get(k)
  local raw = redis.call('HGET', META, k)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end

local function put(k, m)
  redis.call('HSET', META, k, cmsgpack.pack(m))
end

local function ready_key(prio)
  return PREFIX .. ':r:' .. string.format('%d', prio)
end

-- Ready sets are one per priority, scored by available_at; equal times fall back to the
-- member, the zero-padded job key, so one instant is walked in enqueue order.
local function push_ready(k, m)
  m[1] = READY
  redis.call('ZADD', ready_key(m[4]), m[3], k)
  redis.call('ZADD', PRIOS, -m[4], string.format('%d', m[4]))
end

local function push(k, m, now)
  if m[3] > now then
    m[1] = SCHEDULED
    redis.call('ZADD', SCHED, m[3], k)
  else
    push_ready(k, m)
  end
end

local function unlease(k)
  redis.call('ZREM', LEASE, k)
  redis.call('HDEL', OWNER, k)
end
"""

# ARGV: prefix, mode ('w' write, 'c' only check ids), then per message: id, key, priority,
# available_at, created_at, digest ('' for none), dedup_until, message blob. Answers per
# message 1 stored or 0 duplicate (the id is held); or {'conflict', index} and nothing is
# written. Mode 'c' lets a batch that spans pools check every pool before writing any.
ENQUEUE = (
    _PRELUDE
    + """
local n = (#ARGV - 2) / 8
for i = 0, n - 1 do
  local b = 2 + i * 8
  local id, digest = ARGV[b + 1], ARGV[b + 6]
  if digest ~= '' then
    local held = redis.call('HGET', DEDUP, id)
    local created = tonumber(ARGV[b + 5])
    if held and held ~= digest then
      local untl = tonumber(redis.call('ZSCORE', DEDUPX, id))
      if untl > created then return {'conflict', i} end
    end
  end
end
if ARGV[2] == 'c' then return {} end
local out = {}
for i = 0, n - 1 do
  local b = 2 + i * 8
  local id, k, digest = ARGV[b + 1], ARGV[b + 2], ARGV[b + 6]
  local known = false
  if digest ~= '' then
    local held = redis.call('HGET', DEDUP, id)
    if held then
      local untl = tonumber(redis.call('ZSCORE', DEDUPX, id))
      known = untl > tonumber(ARGV[b + 5])
    end
  end
  if known or redis.call('HEXISTS', IDS, id) == 1 then
    out[#out + 1] = 0
  else
    if digest ~= '' then
      redis.call('HSET', DEDUP, id, digest)
      redis.call('ZADD', DEDUPX, ARGV[b + 7], id)
    end
    local m = {READY, 0, tonumber(ARGV[b + 4]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 5]),
               0, false, false, false, id, 0}
    redis.call('HSET', IDS, id, k)
    redis.call('HSET', MSG, k, ARGV[b + 8])
    redis.call('ZADD', LIVE, m[5], k)
    if m[3] > m[5] then
      m[1] = SCHEDULED
      redis.call('ZADD', SCHED, m[3], k)
    else
      push_ready(k, m)
    end
    put(k, m)
    out[#out + 1] = 1
  end
end
return out
"""
)

# ARGV: prefix, now, limit, consumer, lease seconds, promote limit. Moves due scheduled jobs
# and jobs whose lease ran out (their process died or stalled) back to ready, then claims up
# to `limit` ready jobs, highest priority first, then oldest. Answers {next_at or false,
# {key, meta, blob}...}. The lease runs on the server's clock, so
# processes with skewed clocks agree on when a lease ends.
CLAIM = (
    _PRELUDE
    + """
local now, limit, consumer = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local server_now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local most = tonumber(ARGV[6])
for _, k in ipairs(redis.call('ZRANGEBYSCORE', SCHED, '-inf', now, 'LIMIT', 0, most)) do
  local m = get(k)
  redis.call('ZREM', SCHED, k)
  if m and m[1] == SCHEDULED then push_ready(k, m); put(k, m) end
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', LEASE, '-inf', server_now, 'LIMIT', 0, most)) do
  local m = get(k)
  unlease(k)
  if m and m[1] == CLAIMED then push_ready(k, m); put(k, m) end
end
local deadline = server_now + tonumber(ARGV[5])
local rate, burst, level = tonumber(ARGV[7]), tonumber(ARGV[8]), 0
local wanted = limit
if rate > 0 then
  local b = redis.call('HMGET', BUCKET, 'level', 'at')
  level = tonumber(b[1]) or burst
  level = math.min(burst, level + math.max(0, server_now - (tonumber(b[2]) or server_now)) * rate)
  limit = math.min(limit, math.floor(level))
end
local jobs = {}
for _, p in ipairs(redis.call('ZRANGE', PRIOS, 0, -1)) do
  if #jobs >= limit then break end
  local rk = PREFIX .. ':r:' .. p
  local keys = redis.call('ZRANGEBYSCORE', rk, '-inf', now, 'LIMIT', 0, limit - #jobs)
  for _, k in ipairs(keys) do
    redis.call('ZREM', rk, k)
    local m = get(k)
    if m and m[1] == READY then
      m[1] = CLAIMED
      m[6] = m[6] + 1
      local raw = cmsgpack.pack(m)
      redis.call('HSET', META, k, raw)
      redis.call('ZADD', LEASE, deadline, k)
      redis.call('HSET', OWNER, k, consumer)
      jobs[#jobs + 1] = {k, raw, redis.call('HGET', MSG, k)}
    end
  end
  if redis.call('EXISTS', rk) == 0 then redis.call('ZREM', PRIOS, p) end
end
local wait = false
if rate > 0 then
  level = level - #jobs
  redis.call('HSET', BUCKET, 'level', level, 'at', server_now)
  if #jobs == limit and limit < wanted then wait = tostring((1 - level) / rate) end
end
local first = redis.call('ZRANGE', SCHED, 0, 0, 'WITHSCORES')
return {first[2] or false, jobs, wait}
"""
)

# ARGV: prefix, then per completion: key, claims, fate (d delivered, r retry, x dead), when
# (finished_at, or retry_at), reason, error ('' for none, else '+' .. text), attempt blob.
# A completion of a claim that is no longer current (released, reclaimed) changes nothing.
COMPLETE = (
    _PRELUDE
    + """
local n = (#ARGV - 1) / 7
for i = 0, n - 1 do
  local b = 1 + i * 7
  local k = ARGV[b + 1]
  local m = get(k)
  if m and m[1] == CLAIMED and m[6] == tonumber(ARGV[b + 2]) then
    unlease(k)
    redis.call('HSET', LOG, k, (redis.call('HGET', LOG, k) or '') .. ARGV[b + 7])
    m[2] = m[2] + 1
    local fate, at, err = ARGV[b + 3], tonumber(ARGV[b + 4]), ARGV[b + 6]
    if err == '' then err = false else err = string.sub(err, 2) end
    if fate == 'd' then
      m[1] = DELIVERED
      m[7] = at
      redis.call('ZADD', DONE, at, k)
      redis.call('ZREM', LIVE, k)
    elseif fate == 'r' then
      m[1] = SCHEDULED
      m[3] = at
      m[9] = err
      redis.call('ZADD', SCHED, at, k)
    else
      m[1] = DEAD
      m[7] = at
      m[8] = ARGV[b + 5]
      m[9] = err
      redis.call('ZADD', DLQ, at, k)
      redis.call('ZREM', LIVE, k)
    end
    put(k, m)
  end
end
return n
"""
)

# ARGV: prefix, consumer ('' for any), then (key, claims) pairs, or none with a consumer:
# every job that consumer holds (a restarted process taking its own claims back first).
# Answers how many jobs went back to ready.
RELEASE = (
    _PRELUDE
    + """
local consumer = ARGV[2]
local pairs_ = {}
if #ARGV > 2 then
  for i = 3, #ARGV, 2 do pairs_[#pairs_ + 1] = {ARGV[i], tonumber(ARGV[i + 1])} end
else
  local held = redis.call('HGETALL', OWNER)
  for i = 1, #held, 2 do
    if held[i + 1] == consumer then pairs_[#pairs_ + 1] = {held[i], false} end
  end
end
local n = 0
for _, pair in ipairs(pairs_) do
  local k = pair[1]
  local m = get(k)
  if m and m[1] == CLAIMED and (not pair[2] or m[6] == pair[2]) then
    unlease(k)
    push_ready(k, m)
    put(k, m)
    n = n + 1
  end
end
return n
"""
)

# ARGV: prefix, now. Answers {ready, scheduled, claimed, dead, oldest created_at or false}.
COUNTS = (
    _PRELUDE
    + """
local now = ARGV[2]
local ready = redis.call('ZCOUNT', SCHED, '-inf', now)
for _, p in ipairs(redis.call('ZRANGE', PRIOS, 0, -1)) do
  ready = ready + redis.call('ZCARD', PREFIX .. ':r:' .. p)
end
local oldest = redis.call('ZRANGE', LIVE, 0, 0, 'WITHSCORES')
return {ready, redis.call('ZCOUNT', SCHED, '(' .. now, '+inf'), redis.call('ZCARD', LEASE),
        redis.call('ZCARD', DLQ), oldest[2] or false}
"""
)

# ARGV: prefix, then message ids. Answers per id: false, or {key, meta, blob, log, history}.
STATUS = (
    _PRELUDE
    + """
local out = {}
for i = 2, #ARGV do
  local k = redis.call('HGET', IDS, ARGV[i])
  if k then
    out[#out + 1] = {k, redis.call('HGET', META, k), redis.call('HGET', MSG, k),
                     redis.call('HGET', LOG, k) or '', redis.call('HGET', HIST, k) or ''}
  else
    out[#out + 1] = false
  end
end
return out
"""
)

# ARGV: prefix, max score (inclusive), offset, count. One page of the DLQ, newest failure
# first (equal times: the higher key first): {{key, failed_at, meta, blob}...}.
DEAD_PAGE = (
    _PRELUDE
    + """
local rows = redis.call('ZREVRANGEBYSCORE', DLQ, ARGV[2], '-inf', 'WITHSCORES',
                       'LIMIT', ARGV[3], ARGV[4])
local out = {}
for i = 1, #rows, 2 do
  local k = rows[i]
  out[#out + 1] = {k, rows[i + 1], redis.call('HGET', META, k), redis.call('HGET', MSG, k)}
end
return out
"""
)

# ARGV: prefix, now, then (key, available_at) pairs. Dead jobs go back with a fresh attempt
# count; this generation's attempts join the history. Answers how many were replayed.
REPLAY = (
    _PRELUDE
    + """
local now = tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 2 do
  local k = ARGV[i]
  local m = get(k)
  if m and m[1] == DEAD then
    redis.call('ZREM', DLQ, k)
    -- The history is a run of MessagePack arrays, one per generation.
    local log = redis.call('HGET', LOG, k)
    local gen = {}
    if log then gen = {cmsgpack.unpack(log)} end
    redis.call('HSET', HIST, k, (redis.call('HGET', HIST, k) or '') .. cmsgpack.pack(gen))
    redis.call('HDEL', LOG, k)
    m[2], m[7], m[8], m[9], m[11] = 0, false, false, false, m[11] + 1
    m[3] = tonumber(ARGV[i + 1])
    redis.call('ZADD', LIVE, m[5], k)
    push(k, m, now)
    put(k, m)
    n = n + 1
  end
end
return n
"""
)

# ARGV: prefix, then keys of dead jobs to delete with everything they hold.
PURGE = (
    _PRELUDE
    + """
local n = 0
for i = 2, #ARGV do
  local k = ARGV[i]
  local m = get(k)
  if m and m[1] == DEAD then
    redis.call('ZREM', DLQ, k)
    redis.call('HDEL', IDS, m[10])
    redis.call('HDEL', META, k)
    redis.call('HDEL', MSG, k)
    redis.call('HDEL', LOG, k)
    redis.call('HDEL', HIST, k)
    n = n + 1
  end
end
return n
"""
)

# ARGV: prefix, delivered_before, ids_before, chunk. Forgets up to `chunk` delivered jobs
# finished before the cutoff, and remembered ids whose window ended; answers {jobs, ids}.
EXPIRE = (
    _PRELUDE
    + """
local keys = redis.call('ZRANGEBYSCORE', DONE, '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[4])
for _, k in ipairs(keys) do
  local m = get(k)
  redis.call('ZREM', DONE, k)
  if m then redis.call('HDEL', IDS, m[10]) end
  redis.call('HDEL', META, k)
  redis.call('HDEL', MSG, k)
  redis.call('HDEL', LOG, k)
  redis.call('HDEL', HIST, k)
end
local ids = redis.call('ZRANGEBYSCORE', DEDUPX, '-inf', '(' .. ARGV[3], 'LIMIT', 0, ARGV[4])
for _, id in ipairs(ids) do
  redis.call('ZREM', DEDUPX, id)
  redis.call('HDEL', DEDUP, id)
end
return {#keys, #ids}
"""
)


#: the scripts by the name the store calls them with
ALL = {
    "enqueue": ENQUEUE,
    "claim": CLAIM,
    "complete": COMPLETE,
    "release": RELEASE,
    "counts": COUNTS,
    "status": STATUS,
    "dead_page": DEAD_PAGE,
    "replay": REPLAY,
    "purge": PURGE,
    "expire": EXPIRE,
}
