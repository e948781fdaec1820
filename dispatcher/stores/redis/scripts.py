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
    [10] message id   [11] generations kept in the history   [12] consumer holding it

Times travel as MessagePack float64 or the shortest repr of a Python float; cmsgpack packs
doubles as float64, so no time loses a digit on the way through Lua (cjson, which prints
14 digits, would).

The hot scripts write in bulk: `later` gathers the writes to one key and `flush` sends each
key one command with many members (HSET, ZADD, ZREM), and meta records are read with HMGET.
Each command a script runs costs the server about a microsecond and an entry in the AOF,
so one per key per batch instead of one per job and key made enqueue, claim and complete
each about four times cheaper for the server (tests/bench/bench_redis.py).
"""

from __future__ import annotations

# Shared helpers, prepended to every script. KEYS: see keys.POOL_KEYS.
_PRELUDE = """
local META, MSG, IDS, SCHED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local LEASE, LOG, HIST = KEYS[5], KEYS[6], KEYS[7]
local LIVE, DONE, DLQ, PRIOS = KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local DEDUP, DEDUPX, BUCKET = KEYS[12], KEYS[13], KEYS[14]
local PREFIX = ARGV[1]
local READY, CLAIMED, DELIVERED, DEAD, SCHEDULED = 0, 1, 2, 3, 4
local STEP = 4000  -- arguments per command (Lua's unpack has a limit)

-- Writes gathered per (command, key), sent by flush() in the order first asked for. The
-- hot loops take a command's argument list once (`args_of`, again after each flush) and
-- append to it inline: a Lua call per write cost the server a third of a microsecond.
local pending, groups = {}, {}
local function args_of(cmd, key)
  local by_key = groups[cmd]
  if not by_key then
    by_key = {}
    groups[cmd] = by_key
  end
  local g = by_key[key]
  if not g then
    g = {cmd, key, {}}
    by_key[key] = g
    pending[#pending + 1] = g
  end
  return g[3]
end

local function later(cmd, key, a, b)
  local args = args_of(cmd, key)
  args[#args + 1] = a
  if b ~= nil then args[#args + 1] = b end
end

-- A score as text, printed once per distinct value: the jobs of a batch share their
-- times, and Redis would otherwise print the number (%.17g, slow) for every argument.
local last_score, last_text
local function score(x)
  if x ~= last_score then
    last_score, last_text = x, string.format('%.17g', x)
  end
  return last_text
end

-- Meta records read in this script, and those changed (written by flush).
local metas, dirty = {}, {}

local function get_many(keys)
  local missing = {}
  for _, k in ipairs(keys) do
    if metas[k] == nil then missing[#missing + 1] = k end
  end
  for i = 1, #missing, STEP do
    local raws = redis.call('HMGET', META, unpack(missing, i, math.min(i + STEP - 1, #missing)))
    for j, raw in ipairs(raws) do
      metas[missing[i + j - 1]] = raw and cmsgpack.unpack(raw) or false
    end
  end
  local out = {}
  for i, k in ipairs(keys) do out[i] = metas[k] end  -- false where there is none
  return out
end

local function get(k)
  return get_many({k})[1]
end

local function put(k, m)
  metas[k] = m
  if not dirty[k] then
    dirty[k] = true
    local args = args_of('HSET', META)
    local n = #args
    args[n + 1], args[n + 2] = k, false  -- the value is packed at flush, from metas[k]
  end
end

local packed = {}  -- meta records as flush wrote them, by key
local function flush()
  for _, g in ipairs(pending) do
    local cmd, key, args = g[1], g[2], g[3]
    if key == META and cmd == 'HSET' then
      for i = 1, #args, 2 do
        local raw = cmsgpack.pack(metas[args[i]])
        args[i + 1] = raw
        packed[args[i]] = raw
      end
    end
    for i = 1, #args, STEP do
      redis.call(cmd, key, unpack(args, i, math.min(i + STEP - 1, #args)))
    end
  end
  pending, groups, dirty = {}, {}, {}
end

-- Ready sets are one per priority, scored by available_at; equal times fall back to the
-- member, the zero-padded job key, so one instant is walked in enqueue order.
local ready_keys = {}
local function push_ready(k, m)
  m[1] = READY
  local rk = ready_keys[m[4]]
  if not rk then
    local name = string.format('%d', m[4])
    rk = PREFIX .. ':r:' .. name
    ready_keys[m[4]] = rk
    later('ZADD', PRIOS, -m[4], name)
  end
  local args = args_of('ZADD', rk)
  local n = #args
  args[n + 1], args[n + 2] = score(m[3]), k
end

-- Drop a job and everything it holds (its message, attempts, history, its id's entry).
local function forget(k, m)
  if m then redis.call('HDEL', IDS, m[10]) end
  for _, hash in ipairs({META, MSG, LOG, HIST}) do redis.call('HDEL', hash, k) end
end

local function push(k, m, now)
  if m[3] > now then
    m[1] = SCHEDULED
    later('ZADD', SCHED, m[3], k)
  else
    push_ready(k, m)
  end
end
"""

# ARGV: prefix, mode ('w' write, 'c' only check ids), the messages as one MessagePack array
# of [id, key, priority, available_at, created_at, digest ('' for none), dedup_until,
# length of its blob], and the message blobs one after another (cmsgpack cannot read
# MessagePack's bin type). Two arguments for a batch, not eight per message: packing
# thousands of arguments cost the client more than the script cost the server. Answers
# per message 1 stored or 0 duplicate (the id is held); or {'conflict', index} and nothing
# is written. Mode 'c' lets a batch that spans pools check every pool before writing any.
ENQUEUE = (
    _PRELUDE
    + """
local records, blobs = cmsgpack.unpack(ARGV[3]), ARGV[4]
-- Producer ids still in their window: known (a duplicate), or a conflict (other content).
local known = {}
for i, r in ipairs(records) do
  if r[6] ~= '' then
    local held = redis.call('HGET', DEDUP, r[1])
    if held and tonumber(redis.call('ZSCORE', DEDUPX, r[1])) > r[5] then
      if held ~= r[6] then return {'conflict', i - 1} end
      known[i] = true
    end
  end
end
if ARGV[2] == 'c' then return {} end
local ids = {}
for i, r in ipairs(records) do ids[i] = r[1] end
local held = {}
for i = 1, #ids, STEP do
  local found = redis.call('HMGET', IDS, unpack(ids, i, math.min(i + STEP - 1, #ids)))
  for j, k in ipairs(found) do held[i + j - 1] = k end
end
local out = {}
local at = 1
local w_ids, w_msg, w_live = args_of('HSET', IDS), args_of('HSET', MSG), args_of('ZADD', LIVE)
for i, r in ipairs(records) do
  local id, k = r[1], r[2]
  local blob = string.sub(blobs, at, at + r[8] - 1)
  at = at + r[8]
  if known[i] or held[i] then
    out[i] = 0
  else
    if r[6] ~= '' then
      later('HSET', DEDUP, id, r[6])
      later('ZADD', DEDUPX, r[7], id)
    end
    local m = {READY, 0, r[4], r[3], r[5], 0, false, false, false, id, 0, false}
    local n = #w_ids
    w_ids[n + 1], w_ids[n + 2] = id, k
    w_msg[n + 1], w_msg[n + 2] = k, blob  -- the three lists grow in step
    w_live[n + 1], w_live[n + 2] = score(m[5]), k
    if m[3] > m[5] then
      m[1] = SCHEDULED
      later('ZADD', SCHED, m[3], k)
    else
      push_ready(k, m)
    end
    put(k, m)
    out[i] = 1
  end
end
flush()
return out
"""
)

# ARGV: prefix, now, limit, consumer, lease seconds, promote limit, rate (0: none), burst.
# Moves due scheduled jobs and jobs whose lease ran out (their process died or stalled) back
# to ready, then claims up to `limit` ready jobs, highest priority first, then oldest, and
# no more than the pool's token bucket holds: one bucket for every process, so `rate` holds
# for the pool's claims across the cluster. Answers {next_at or false, {{key, meta, blob}...},
# seconds until the bucket has a token when it ran dry, else false}. Leases and the bucket
# run on the server's clock, so processes with skewed clocks agree on both.
CLAIM = (
    _PRELUDE
    + """
local now, limit, consumer = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local server_now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local most = tonumber(ARGV[6])
-- The lowest scores come first, so what ZRANGEBYSCORE -inf x found is ranks 0..n-1.
local function take(key, upto, n)
  local keys = redis.call('ZRANGEBYSCORE', key, '-inf', upto, 'LIMIT', 0, n)
  if #keys > 0 then redis.call('ZREMRANGEBYRANK', key, 0, #keys - 1) end
  return keys
end
local due = take(SCHED, now, most)
for i, m in ipairs(get_many(due)) do
  if m and m[1] == SCHEDULED then push_ready(due[i], m); put(due[i], m) end
end
local expired = take(LEASE, server_now, most)
for i, m in ipairs(get_many(expired)) do
  if m and m[1] == CLAIMED then push_ready(expired[i], m); put(expired[i], m) end
end
flush()
local deadline = server_now + tonumber(ARGV[5])
local rate, burst, level = tonumber(ARGV[7]), tonumber(ARGV[8]), 0
local wanted = limit
if rate > 0 then
  local b = redis.call('HMGET', BUCKET, 'level', 'at')
  level = tonumber(b[1]) or burst
  level = math.min(burst, level + math.max(0, server_now - (tonumber(b[2]) or server_now)) * rate)
  limit = math.min(limit, math.floor(level))
end
local claimed = {}
local until_text, leases = string.format('%.17g', deadline), args_of('ZADD', LEASE)
for _, p in ipairs(redis.call('ZRANGE', PRIOS, 0, -1)) do
  if #claimed >= limit then break end
  local rk = PREFIX .. ':r:' .. p
  local keys = take(rk, now, limit - #claimed)
  for i, m in ipairs(get_many(keys)) do
    if m and m[1] == READY then
      local k = keys[i]
      m[1], m[6], m[12] = CLAIMED, m[6] + 1, consumer
      put(k, m)
      local n = #leases
      leases[n + 1], leases[n + 2] = until_text, k
      claimed[#claimed + 1] = k
    end
  end
  if redis.call('EXISTS', rk) == 0 then redis.call('ZREM', PRIOS, p) end
end
flush()
local jobs = {}
for i = 1, #claimed, STEP do
  local part = {unpack(claimed, i, math.min(i + STEP - 1, #claimed))}
  local blobs = redis.call('HMGET', MSG, unpack(part))
  for j, k in ipairs(part) do jobs[#jobs + 1] = {k, packed[k], blobs[j]} end
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

# ARGV: prefix, the completions as one MessagePack array of [key, claims, fate (d delivered,
# r retry, x dead), when (finished_at, or retry_at), dead reason, last error or nil, length
# of its attempt's blob], and the attempt blobs one after another. A completion of a claim
# that is no longer current (released, reclaimed) changes nothing.
COMPLETE = (
    _PRELUDE
    + """
local records, blobs = cmsgpack.unpack(ARGV[2]), ARGV[3]
local keys = {}
for i, r in ipairs(records) do keys[i] = r[1] end
local found = get_many(keys)
local at = 1
local leases, logs = args_of('ZREM', LEASE), args_of('HSET', LOG)
local done, live = args_of('ZADD', DONE), args_of('ZREM', LIVE)
for i, r in ipairs(records) do
  local k, m = r[1], found[i]
  local attempt = string.sub(blobs, at, at + r[7] - 1)
  at = at + r[7]
  if m and m[1] == CLAIMED and m[6] == r[2] then
    leases[#leases + 1] = k
    -- A first attempt starts the log; a later one (a retry) appends to it.
    if m[2] > 0 then attempt = (redis.call('HGET', LOG, k) or '') .. attempt end
    local n = #logs
    logs[n + 1], logs[n + 2] = k, attempt
    m[2], m[12] = m[2] + 1, false
    local fate, when = r[3], r[4]
    if fate == 'd' then
      m[1], m[7] = DELIVERED, when
      n = #done
      done[n + 1], done[n + 2] = when, k
      live[#live + 1] = k
    elseif fate == 'r' then
      m[1], m[3], m[9] = SCHEDULED, when, r[6] or false
      later('ZADD', SCHED, when, k)
    else
      m[1], m[7], m[8], m[9] = DEAD, when, r[5], r[6] or false
      later('ZADD', DLQ, when, k)
      later('ZREM', LIVE, k)
    end
    put(k, m)
  end
end
flush()
return #records
"""
)

# ARGV: prefix, consumer ('' for any), then (key, claims) pairs, or none with a consumer:
# every job that consumer holds (a restarted process taking its own claims back first).
# Answers how many jobs went back to ready.
RELEASE = (
    _PRELUDE
    + """
local consumer = ARGV[2]
local keys, claims = {}, {}
if #ARGV > 2 then
  for i = 3, #ARGV, 2 do
    keys[#keys + 1] = ARGV[i]
    claims[#keys] = tonumber(ARGV[i + 1])
  end
else
  keys = redis.call('ZRANGE', LEASE, 0, -1)
end
local n = 0
for i, m in ipairs(get_many(keys)) do
  local k = keys[i]
  if m and m[1] == CLAIMED and (claims[i] == nil and m[12] == consumer or m[6] == claims[i]) then
    later('ZREM', LEASE, k)
    m[12] = false
    push_ready(k, m)
    put(k, m)
    n = n + 1
  end
end
flush()
return n
"""
)

# ARGV: prefix, lease seconds, then (key, claims) pairs: jobs this process holds. Extends
# the lease of each that is still its claim, so a job that waits long in a pool's window (a
# slow receiver) is not taken over by another process while its own is alive. Answers how
# many leases were extended.
RENEW = (
    _PRELUDE
    + """
local t = redis.call('TIME')
local deadline = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[2])
local keys, claims = {}, {}
for i = 3, #ARGV, 2 do
  keys[#keys + 1] = ARGV[i]
  claims[#keys] = tonumber(ARGV[i + 1])
end
local n = 0
for i, m in ipairs(get_many(keys)) do
  if m and m[1] == CLAIMED and m[6] == claims[i] then
    later('ZADD', LEASE, deadline, keys[i])
    n = n + 1
  end
end
flush()
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
flush()
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
    forget(k, m)
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
  redis.call('ZREM', DONE, k)
  forget(k, get(k))
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
    "renew": RENEW,
    "counts": COUNTS,
    "status": STATUS,
    "dead_page": DEAD_PAGE,
    "replay": REPLAY,
    "purge": PURGE,
    "expire": EXPIRE,
}
