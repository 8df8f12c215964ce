"""The task store for workers on many machines: Redis (or Redis Cluster), one Lua script
per state change.

``RedisBackend("redis://[[user]:password@]host:6379/0")``, or ``rediss://`` for TLS. Query
options: ``prefix`` (default ``poolsim``: applications sharing a server use different
prefixes and see nothing of each other), ``timeout`` (seconds, default 5: the socket
connect and read timeout, so the bound of every call's waiting), ``history_retention``
(seconds, default 7 days, ``inf`` keeps history for ever), ``cluster`` (``1``: the URL
names one node of a Redis Cluster) and, with ``rediss://`` only, redis-py's
``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``
(``none``/``optional``/``required``) and ``ssl_check_hostname``. Anything else is a
:class:`~poolsim.errors.ConfigError` naming it. ``self.url`` is the URL with its password
replaced by ``***`` (:func:`~poolsim.queue.backends.base.redact_url`): no message, error or
repr ever carries the password. The userinfo ends at the URL's last ``@``, so a password may
hold ``/ ? # @ :`` unencoded (``%`` escapes are decoded); an ``@`` in an option's value must
be written ``%40``.

Key layout. Every key of one queue starts with ``<prefix>:{<queue>}:`` — the braces are a
Redis hash tag, so a whole queue lives in one cluster slot and each script touches one slot.
The queue name inside the tag is percent-encoded (``%``, ``{``, ``}``, ``:`` and everything
but ``A-Z a-z 0-9 _ . - ~``; the empty name is ``%``, which no encoded name can be), so two
queues never share keys. With ``T`` = ``<prefix>:{<queue>}:``:

- ``T:t:<id>`` a hash: every :class:`~poolsim.queue.task.TaskInfo` field (``None`` ones
  absent) and ``seq``, the insertion order drawn from ``T:seq``;
- ``T:s:<state>`` one sorted set per state, scored by ``process_at``, members
  ``%016d(seq) + id``: so equal scores sort by insertion, and the set's order is SQLite's
  "oldest first" (``process_at``, ``seq``);
- ``T:lease`` the active tasks scored by ``lease_until`` (for :meth:`recover`);
  ``T:expire`` the completed ones scored by their expiry (for :meth:`forward`);
- ``T:u:<unique_key>`` a hash (``until``, ``id``): a unique lock, judged against the
  caller's clock, with a Redis TTL of ``until - now`` that only collects garbage;
- ``T:history`` one member per ended attempt (``%016d(T:hseq) + JSON row``) scored by
  ``ended_at``, pruned by :meth:`forward`; ``T:daily`` the processed/failed counters per
  UTC day for :meth:`stats` (kept two days);
- ``T:paused`` exists while the queue is paused; ``<prefix>:queues`` (outside any queue's
  slot) is the set of known queues, added to before a queue's script runs (idempotent).

Every state change of one queue is one Lua script (loaded once, called by SHA): atomic.
Times are always the caller's ``now`` passed in (never Redis ``TIME``), so tests move the
clock; times are passed and stored as Python's exact float text. Lease tokens are fresh per
claim: ``<encoded queue>/<nonce>:<rank>``, a random 128-bit nonce made in Python per claim
call and queue, after the queue's encoded name (no ``/`` in it), so a call given tokens sends
each to its own queue. :meth:`recover` and :meth:`forward` move at most ``BATCH`` (1000)
tasks or history rows per script and step, calling a queue's script again while a batch
came back full, so Redis never blocks long on a backlog. Nothing ever runs a payload: it is
stored as the JSON text given.

Differences from the SQLite store (the contract suite states each explicitly):

- **Task ids and unique keys are unique per queue**, not per store (as in Asynq: a queue
  is one slot, and one script cannot check another slot atomically). The client's unique
  keys name their queue, and the scheduler's ids always go to the same queue, so this
  changes nothing for them; a caller reusing an id in two queues gets two tasks, and the
  id-only methods (:meth:`get`, :meth:`act`...) then find the one in the queue it
  enqueued or claimed it in, else the first queue by name.
- :meth:`renew`, :meth:`finish_many` and :meth:`hand_back` given ``leases`` find each
  task's queue in its token (so a server holding one id from two queues reaches both).
  Without tokens (tools, tests), and in :meth:`get` and :meth:`act`, each id's queue comes
  from an in-process cache (filled by :meth:`enqueue` and :meth:`claim`) or else is looked
  up across the known queues, one pipelined round trip.
- Calls that span queues are atomic **per queue**, not as a whole: :meth:`claim` (one script
  per queue in the order given, until ``limit`` is filled), :meth:`finish_many`,
  :meth:`renew` and :meth:`hand_back` (one script per queue, pipelined), :meth:`recover`,
  :meth:`forward` and :meth:`stats`. A crash between two queues' scripts leaves each
  queue consistent. If a later queue's claim script fails, :meth:`claim` returns what the
  earlier queues gave (logging a warning); it raises only when nothing was taken.
- **A claim whose reply is lost** (the read timed out, or the connection broke, after the
  script ran) cannot be told from one that never ran: nothing is retried, and its tasks stay
  ``active`` under the worker with tokens nobody knows until the lease lapses; then
  :meth:`recover` moves them to retry **with an attempt counted** (a task with
  ``max_retry=0`` is archived without having run). SQLite has no such window.
- :meth:`history` is ordered by ``ended_at`` (ties: by queue name, then insertion); SQLite
  orders by insertion, which is the same whenever the workers' clocks agree. Ties across
  queues in :meth:`list_tasks` (equal ``process_at``) are ordered by queue name.
- Expired unique locks are dropped by their Redis TTL, not by :meth:`forward`.
- Durability is the server's: run it with ``appendonly yes`` (``appendfsync always`` for
  every acknowledged call to survive a crash of the server's machine).
- With ``cluster=1``, redis-py follows ``MOVED``/``ASK`` redirections, but never runs a
  command again after a timeout or connection error (``cluster_error_retry_attempts=0``: a
  script's first run may have happened): a call that timed out is not run a second time,
  nor waits four timeouts.
- **Resharding a Redis Cluster slot while workers run is not supported**: a script declares
  only its queue's tag key (``KEYS[1]``), not the keys it touches, so while the queue's slot
  migrates Redis routes the script by that one key, and it may find part of the queue's keys
  on the other node (missing, or written on the wrong side). Pause the queue's workers while
  its slot moves.

Connections: redis-py's pool, shared by threads; after ``fork`` the child's pool opens its
own connections (redis-py checks the pid). Connection and timeout errors, cluster-down,
``LOADING``, ``BUSY`` (a long script runs), ``MASTERDOWN``, ``READONLY``, out-of-memory,
``NOPERM`` and authentication failures are raised as
:class:`~poolsim.errors.BackendUnavailable` naming the redacted URL: transient, so the
server's loops and acknowledgements retry them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import json
import logging
import math
import re
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import redis
import redis.cluster
from redis import exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from poolsim.errors import BackendUnavailable, ConfigError, TaskAlreadyExists, TaskNotFound
from poolsim.queue.backends.base import (
    RECOVER_BACKOFF_CAP_S,
    HistoryRow,
    Outcome,
    QueueStats,
    as_stored,
    recover_backoff,
    redact_url,
    split_userinfo,
)
from poolsim.queue.task import State, TaskInfo

__all__ = ["RedisBackend", "RedisURL", "parse_url", "redact_url"]

HISTORY_RETENTION_S = 7 * 86400.0  # history rows older than this are pruned by forward()
DAILY_KEEP_DAYS = 2  # daily counters kept (today and yesterday): stats reads only today
ID_CACHE_SIZE = 100_000  # id → queue entries kept in process (oldest dropped first)
BATCH = 1000  # the most tasks (or history rows) one recover/forward script moves per step
_OPTIONS = ("prefix", "timeout", "history_retention", "cluster")
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                "ssl_check_hostname")
_CERT_REQS = ("none", "optional", "required")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,100}")  # no braces: the hash tag is the queue's
_FIELDS = tuple(f.name for f in dataclasses.fields(TaskInfo))
_INTS = frozenset({"max_retry", "retried"})
_FLOATS = frozenset({"timeout", "deadline", "process_at", "unique_until", "retention",
                     "created_at", "last_failed_at", "lease_until", "completed_at",
                     "started_at"})
# The retried counts after which recover_backoff stops growing: the recover script gets one
# due time for each.
_BACKOFF_STEPS = 1 + next(k for k in range(65) if recover_backoff(k) >= RECOVER_BACKOFF_CAP_S)
_SEQ_WIDTH = 16  # "%016d": a sorted-set member's insertion-order prefix
# Errors that mean "the store cannot serve us now", not "this call is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError, rexc.TimeoutError, rexc.ClusterError, rexc.RedisClusterException,
    rexc.ReadOnlyError, rexc.OutOfMemoryError, rexc.TryAgainError, rexc.NoPermissionError)
# Plain error replies that mean the same: a long script runs (BUSY), a replica lost its
# master (MASTERDOWN), the dataset is loading (LOADING: redis-py maps it already).
_REDIS_PY = int(redis.__version__.split(".")[0])  # the installed redis-py's major version
_UNAVAILABLE_REPLIES = frozenset({"BUSY", "MASTERDOWN", "LOADING"})
_log = logging.getLogger("poolsim.queue")


# -- Lua --------------------------------------------------------------------------------
# Every script starts with _LIB. KEYS[1] is the queue's key prefix "<prefix>:{<queue>}:": it is
# never itself a key; it routes the script to the queue's cluster slot, and every key a script
# touches starts with it. Optional ARGV values are '' for nil, else '=' followed by the text.
_LIB = r"""
local base = KEYS[1]
local function task_key(id) return base .. 't:' .. id end
local function state_key(state) return base .. 's:' .. state end
local function member(seq, id) return string.format('%016d', tonumber(seq)) .. id end
local function id_of(m) return string.sub(m, 17) end
local function opt(text) if text == '' then return false end return string.sub(text, 2) end
-- What ending an attempt needs of a task's hash (false where a field is absent).
local ENDING = {'state', 'lease', 'worker', 'seq', 'type', 'queue', 'process_at',
                'started_at', 'retried', 'max_retry', 'retention', 'lease_until'}
local function read(key, names)
  local values = redis.call('HMGET', key, unpack(names))
  local t = {}
  for i, name in ipairs(names) do t[name] = values[i] end
  return t
end
-- Whether the claim holds the task: by its token (mode 'lease') or by worker name.
local function held(t, mode, token, worker)
  if t.state ~= 'active' then return false end
  if mode == 'lease' then return t.lease == token end
  return t.worker == worker
end
local function leave_active(key, m)
  redis.call('ZREM', state_key('active'), m)
  redis.call('ZREM', base .. 'lease', m)
  redis.call('HDEL', key, 'lease_until', 'worker', 'lease')
end
local function set_opt(key, name, value)
  if value then redis.call('HSET', key, name, value) else redis.call('HDEL', key, name) end
end
-- The ended attempt's history row (the jobs frame) and the day's counters.
local function record(t, id, now, day, status, err)
  local n = redis.call('INCR', base .. 'hseq')
  local row = cjson.encode({id, t.type, t.queue, t.process_at, t.started_at, now, status,
                            t.worker, tostring(tonumber(t.retried) + 1), err})
  redis.call('ZADD', base .. 'history', now, string.format('%016d', n) .. row)
  if status ~= 'returned' then
    redis.call('HINCRBY', base .. 'daily', day .. ':processed', 1)
    if status ~= 'completed' then redis.call('HINCRBY', base .. 'daily', day .. ':failed', 1) end
  end
end
"""

# Store a new task unless its unique key is live or its id exists (both checked before any
# write). ARGV: id, now, state, process_at, unique_key (opt), unique_until, lock TTL in ms,
# then the hash's field/value pairs. Returns 'ok', 'unique' or 'id'.
_ENQUEUE = _LIB + r"""
local id, now = ARGV[1], tonumber(ARGV[2])
local key, ukey = task_key(id), opt(ARGV[5])
if ukey then
  local lock_until = redis.call('HGET', base .. 'u:' .. ukey, 'until')
  if lock_until and tonumber(lock_until) > now then return 'unique' end
end
if redis.call('EXISTS', key) == 1 then return 'id' end
if ukey and tonumber(ARGV[7]) > 0 then
  local lock = base .. 'u:' .. ukey
  redis.call('HSET', lock, 'until', ARGV[6], 'id', id)
  redis.call('PEXPIRE', lock, ARGV[7])
end
local seq = redis.call('INCR', base .. 'seq')
redis.call('HSET', key, 'seq', seq, unpack(ARGV, 8))
redis.call('ZADD', state_key(ARGV[3]), ARGV[4], member(seq, id))
return 'ok'
"""

# Lease up to ARGV[4] pending tasks, oldest first (none while the queue is paused); the n-th
# gets the token ARGV[5] .. ':' .. n. ARGV: worker, now, lease_until, limit, nonce. Returns
# each claimed task's hash (HGETALL), in claim order.
_CLAIM = _LIB + r"""
if redis.call('EXISTS', base .. 'paused') == 1 then return {} end
local popped = redis.call('ZPOPMIN', state_key('pending'), ARGV[4])
local out = {}
for i = 1, #popped, 2 do
  local m, at = popped[i], popped[i + 1]
  local key = task_key(id_of(m))
  redis.call('HSET', key, 'state', 'active', 'worker', ARGV[1], 'lease_until', ARGV[3],
             'started_at', ARGV[2], 'lease', ARGV[5] .. ':' .. ((i + 1) / 2))
  redis.call('ZADD', state_key('active'), at, m)
  redis.call('ZADD', base .. 'lease', ARGV[3], m)
  out[#out + 1] = redis.call('HGETALL', key)
end
return out
"""

# Extend the leases still held to ARGV[1] (a lapsed, unrecovered lease counts as held).
# ARGV: until, mode, worker, then (id, token) pairs. Returns 1 or 0 per pair.
_RENEW = _LIB + r"""
local out = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local key = task_key(id)
  local t = read(key, {'state', 'lease', 'worker', 'seq'})
  if held(t, ARGV[2], ARGV[i + 1], ARGV[3]) then
    redis.call('HSET', key, 'lease_until', ARGV[1])
    redis.call('ZADD', base .. 'lease', ARGV[1], member(t.seq, id))
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# Acknowledge attempts still held, each with its history row: completed (deleted at once
# without retention), retry (archived instead past max_retry) or archived, the last two
# counting the attempt. ARGV: now, day, mode, worker, then per task: id, token, state,
# status, error (opt), retry_at (opt). Returns 1 or 0 per task.
_FINISH = _LIB + r"""
local now = ARGV[1]
local out = {}
local function complete(key, t, m)
  if tonumber(t.retention) <= 0 then redis.call('DEL', key) return end
  redis.call('HSET', key, 'state', 'completed', 'completed_at', now)
  redis.call('ZADD', state_key('completed'), t.process_at, m)
  redis.call('ZADD', base .. 'expire', tonumber(now) + tonumber(t.retention), m)
end
local function fail(key, t, m, wanted, err, retry_at)
  local state, at = 'archived', t.process_at
  if wanted == 'retry' and tonumber(t.retried) < tonumber(t.max_retry) then
    state, at = 'retry', retry_at or now
  end
  redis.call('HSET', key, 'state', state, 'process_at', at, 'last_failed_at', now)
  redis.call('HINCRBY', key, 'retried', 1)
  set_opt(key, 'last_error', err)
  redis.call('ZADD', state_key(state), at, m)
end
for i = 5, #ARGV, 6 do
  local id = ARGV[i]
  local key = task_key(id)
  local t = read(key, ENDING)
  if held(t, ARGV[3], ARGV[i + 1], ARGV[4]) then
    local m, err = member(t.seq, id), opt(ARGV[i + 4])
    record(t, id, now, ARGV[2], ARGV[i + 3], err)
    leave_active(key, m)
    if ARGV[i + 2] == 'completed' then complete(key, t, m)
    else fail(key, t, m, ARGV[i + 2], err, opt(ARGV[i + 5])) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# Return held tasks to pending at their old place, attempt not counted (history: returned).
# ARGV: now, day, mode, worker, then (id, token) pairs. Returns how many.
_HAND_BACK = _LIB + r"""
local n = 0
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local key = task_key(id)
  local t = read(key, ENDING)
  if held(t, ARGV[3], ARGV[i + 1], ARGV[4]) then
    local m = member(t.seq, id)
    record(t, id, ARGV[1], ARGV[2], 'returned', false)
    leave_active(key, m)
    redis.call('HSET', key, 'state', 'pending')
    redis.call('ZADD', state_key('pending'), t.process_at, m)
    n = n + 1
  end
end
return n
"""

# Tasks whose lease ended before ARGV[1] go to retry, due at ARGV[4 + min(retried, last)]
# (now + recover_backoff(retried), made in Python), or out of retries to archived; the
# attempt counts and the token is cleared. At most ARGV[3] tasks, the earliest lapsed: the
# caller calls again while a batch came back full. ARGV: now, day, batch, due times.
# Returns how many.
_RECOVER = _LIB + r"""
local now = ARGV[1]
local lapsed = redis.call('ZRANGEBYSCORE', base .. 'lease', '-inf', '(' .. now,
                          'LIMIT', 0, ARGV[3])
for _, m in ipairs(lapsed) do
  local id = id_of(m)
  local key = task_key(id)
  local t = read(key, ENDING)
  local retried = tonumber(t.retried)
  local err = string.format(
    'lease lapsed: worker %s presumed dead (its lease ended at %.3f, recovered at %.3f)',
    t.worker or 'None', tonumber(t.lease_until), tonumber(now))
  local state, at = 'archived', t.process_at
  if retried + 1 <= tonumber(t.max_retry) then
    state, at = 'retry', ARGV[4 + math.min(retried, #ARGV - 4)]
  end
  record(t, id, now, ARGV[2], state == 'retry' and 'retried' or 'failed', err)
  leave_active(key, m)
  redis.call('HSET', key, 'state', state, 'process_at', at, 'last_error', err,
             'last_failed_at', now)
  redis.call('HINCRBY', key, 'retried', 1)
  redis.call('ZADD', state_key(state), at, m)
end
return #lapsed
"""

# The janitor: scheduled and retry tasks due by ARGV[1] become pending; completed tasks past
# their retention are deleted; history that ended before ARGV[2] (if given) is pruned, and
# daily counters of days before ARGV[3]. Each step takes at most ARGV[4] (the batch) of the
# earliest (the lowest ranks of its sorted set), so one call blocks Redis briefly; the
# caller calls again while a step came back full. Returns {tasks moved, 1 if a step was full}.
_FORWARD = _LIB + r"""
local now, batch = ARGV[1], tonumber(ARGV[4])
local moved, full = 0, 0
for _, state in ipairs({'scheduled', 'retry'}) do
  local due = redis.call('ZRANGEBYSCORE', state_key(state), '-inf', now, 'WITHSCORES',
                         'LIMIT', 0, batch)
  for i = 1, #due, 2 do
    redis.call('HSET', task_key(id_of(due[i])), 'state', 'pending')
    redis.call('ZADD', state_key('pending'), due[i + 1], due[i])
  end
  if #due > 0 then redis.call('ZREMRANGEBYRANK', state_key(state), 0, #due / 2 - 1) end
  if #due / 2 >= batch then full = 1 end
  moved = moved + #due / 2
end
local expired = redis.call('ZRANGEBYSCORE', base .. 'expire', '-inf', now, 'LIMIT', 0, batch)
for _, m in ipairs(expired) do
  redis.call('DEL', task_key(id_of(m)))
  redis.call('ZREM', state_key('completed'), m)
end
if #expired > 0 then redis.call('ZREMRANGEBYRANK', base .. 'expire', 0, #expired - 1) end
if #expired >= batch then full = 1 end
if ARGV[2] ~= '' then
  local old = redis.call('ZCOUNT', base .. 'history', '-inf', '(' .. ARGV[2])
  if old > 0 then redis.call('ZREMRANGEBYRANK', base .. 'history', 0, math.min(old, batch) - 1) end
  if old > batch then full = 1 end
end
for _, field in ipairs(redis.call('HKEYS', base .. 'daily')) do
  if tonumber(string.match(field, '^%d+')) < tonumber(ARGV[3]) then
    redis.call('HDEL', base .. 'daily', field)
  end
end
return {moved, full}
"""

# The inspector's verbs on one task (an active one only once its lease lapsed). ARGV: id,
# action, now. Returns {'missing'}, {'live', worker, lease_until}, {'deleted'} or
# {'ok', the task's hash}.
_ACT = _LIB + r"""
local id, action, now = ARGV[1], ARGV[2], ARGV[3]
local key = task_key(id)
local t = read(key, {'state', 'seq', 'worker', 'lease_until', 'unique_key', 'process_at'})
if not t.state then return {'missing'} end
if t.state == 'active' and t.lease_until and tonumber(t.lease_until) >= tonumber(now) then
  return {'live', t.worker or '', t.lease_until}
end
local m = member(t.seq, id)
redis.call('ZREM', state_key(t.state), m)
redis.call('ZREM', base .. 'lease', m)
redis.call('ZREM', base .. 'expire', m)
if action == 'delete' then
  redis.call('DEL', key)
  if t.unique_key then
    local lock = base .. 'u:' .. t.unique_key
    if redis.call('HGET', lock, 'id') == id then redis.call('DEL', lock) end
  end
  return {'deleted'}
end
redis.call('HDEL', key, 'lease_until', 'worker', 'lease')
if action == 'requeue' then
  redis.call('HSET', key, 'state', 'pending', 'retried', 0, 'process_at', now)
  redis.call('HDEL', key, 'completed_at')
  redis.call('ZADD', state_key('pending'), now, m)
else
  redis.call('HSET', key, 'state', 'archived')
  redis.call('ZADD', state_key('archived'), t.process_at, m)
end
return {'ok', redis.call('HGETALL', key)}
"""

# One queue at one moment: the count of each state in ARGV[2..], the pause flag, the oldest
# pending task's process_at (or nil) and day ARGV[1]'s processed and failed counters.
_STATS = _LIB + r"""
local out = {}
for i = 2, #ARGV do out[#out + 1] = redis.call('ZCARD', state_key(ARGV[i])) end
out[#out + 1] = redis.call('EXISTS', base .. 'paused')
out[#out + 1] = redis.call('ZRANGE', state_key('pending'), 0, 0, 'WITHSCORES')[2] or false
local daily = redis.call('HMGET', base .. 'daily', ARGV[1] .. ':processed', ARGV[1] .. ':failed')
out[#out + 1] = daily[1]
out[#out + 1] = daily[2]
return out
"""

# The tasks in state ARGV[1] from rank ARGV[2] to ARGV[3], oldest first, as hashes: one
# consistent snapshot of one queue.
_LIST = _LIB + r"""
local out = {}
for _, m in ipairs(redis.call('ZRANGE', state_key(ARGV[1]), ARGV[2], ARGV[3])) do
  out[#out + 1] = redis.call('HGETALL', task_key(id_of(m)))
end
return out
"""


class _Script(NamedTuple):
    """A Lua script and its SHA1 (EVALSHA; loaded on the first NOSCRIPT)."""

    source: str
    sha: str


def _script(source: str) -> _Script:
    return _Script(source, hashlib.sha1(source.encode()).hexdigest())


ENQUEUE, CLAIM, RENEW, FINISH, HAND_BACK, RECOVER, FORWARD, ACT, STATS, LIST = map(
    _script, (_ENQUEUE, _CLAIM, _RENEW, _FINISH, _HAND_BACK, _RECOVER, _FORWARD, _ACT,
              _STATS, _LIST))


# -- the URL ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, kw_only=True)
class RedisURL:
    """A parsed ``redis://`` / ``rediss://`` URL; ``redacted`` is it without the password
    (which ``repr`` never shows either)."""

    redacted: str
    host: str
    port: int
    db: int
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    tls: bool
    ssl: dict[str, Any]
    prefix: str
    timeout: float
    history_retention: float
    cluster: bool


def parse_url(url: str) -> RedisURL:
    """``redis://[[user]:password@]host:port/db?options`` (see the module doc) → its parts;
    a bad part raises :class:`ConfigError` naming it (never showing the password).

    The userinfo ends at the URL's last ``@`` (:func:`~poolsim.queue.backends.base.
    split_userinfo`, as :func:`~poolsim.queue.backends.base.redact_url` hides it), so a
    password may hold ``/ ? # @ :`` unencoded; an ``@`` in an option's value must be
    ``%40``. Host, port, database and options are read from what follows that ``@`` only:
    every value an error shows is text the redacted URL shows too."""
    shown = redact_url(url)
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://")):
        raise ConfigError("url", shown, "redis://[[user]:password@]host:port/db or rediss://...")
    head, userinfo, rest = split_userinfo(url)
    try:
        parts = urllib.parse.urlsplit("//" + rest)
        port = parts.port or 6379
    except ValueError:  # (its message may quote the URL: never shown)
        raise ConfigError("url", shown, "a valid host and port (host:6379 or [::1]:6379)"
                          ) from None
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ConfigError("db", db_text, "a database number >= 0 (the URL's path: /0)")
    options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    tls = head == "rediss://"
    user, colon, password = (userinfo or "").partition(":")
    _check_option_names(options, shown, tls)
    cluster = _flag("cluster", options.get("cluster", "0"))
    if cluster and int(db_text) != 0:
        raise ConfigError("db", int(db_text), "0 with cluster=1 (a cluster has one database)")
    return RedisURL(
        redacted=shown, host=parts.hostname or "localhost", port=port, db=int(db_text),
        username=urllib.parse.unquote(user) if user else None,
        password=urllib.parse.unquote(password) if colon else None,
        tls=tls, ssl=_ssl_options(options), prefix=_prefix(options.get("prefix", "poolsim")),
        timeout=_timeout(options.get("timeout", "5")),
        history_retention=_retention(options.get("history_retention",
                                                 repr(HISTORY_RETENTION_S))),
        cluster=cluster)


def _check_option_names(options: dict[str, str], shown: str, tls: bool) -> None:
    known = _OPTIONS + _SSL_OPTIONS
    unknown = sorted(set(options) - set(known))
    if unknown:  # their values hidden: a misplaced ``?password=...`` is not shown
        raise ConfigError("url", _hide_values(shown, unknown),
                          f"known options are {', '.join(known)} (not {', '.join(unknown)})")
    for name in options:
        if name in _SSL_OPTIONS and not tls:
            raise ConfigError(name, options[name], "an option of rediss:// (TLS) URLs only")


def _hide_values(shown: str, names: Sequence[str]) -> str:
    """The redacted URL ``shown`` with the values of the options ``names`` as ``***``."""
    before, question, query = shown.partition("?")
    if not question:
        return shown
    query, hash_, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        hidden = eq and urllib.parse.unquote_plus(name) in names
        pairs.append(f"{name}=***" if hidden else pair)
    return f"{before}?{'&'.join(pairs)}{hash_}{fragment}"


def _ssl_options(options: dict[str, str]) -> dict[str, Any]:
    """The ``ssl_*`` options as redis-py's keyword arguments, checked."""
    ssl: dict[str, Any] = {k: v for k, v in options.items() if k in _SSL_OPTIONS}
    if "ssl_cert_reqs" in ssl and ssl["ssl_cert_reqs"] not in _CERT_REQS:
        raise ConfigError("ssl_cert_reqs", ssl["ssl_cert_reqs"], " or ".join(_CERT_REQS))
    if "ssl_check_hostname" in ssl:
        ssl["ssl_check_hostname"] = _flag("ssl_check_hostname", ssl["ssl_check_hostname"])
    return ssl


def _flag(name: str, text: str) -> bool:
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    raise ConfigError(name, text, "1 or 0 (true/false, yes/no, on/off)")


def _prefix(text: str) -> str:
    if not PREFIX.fullmatch(text):
        raise ConfigError("prefix", text, "1-100 characters of A-Z a-z 0-9 _ . : - (no braces: "
                          "the Redis hash tag is the queue's)")
    return text


def _timeout(text: str) -> float:
    value = _float(text)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError("timeout", text, "seconds > 0")
    return value


def _retention(value: object) -> float:
    """``history_retention`` from the URL's text or the argument: seconds > 0, ``inf`` kept
    for ever (NaN, booleans and the rest refused)."""
    number = _float(value) if isinstance(value, str) else value
    if isinstance(number, bool) or not isinstance(number, int | float) or not number > 0:
        raise ConfigError("history_retention", value, "seconds > 0 (inf: never pruned)")
    return float(number)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


# -- values -----------------------------------------------------------------------------

def _num(value: float) -> str:
    """A time as exact text (Python's shortest round-trip repr; Lua and Redis parse it)."""
    return repr(float(value))


def _opt(text: str | None) -> str:
    """An optional script argument: '' for None, else '=' + the text."""
    return "" if text is None else "=" + text


def _day(now: float) -> str:
    """The UTC day number of ``now``: the daily counters' key."""
    return str(math.floor(now / 86400))


def _encode_task(info: TaskInfo) -> list[str]:
    """The task's hash as field/value pairs (``None`` fields left out)."""
    pairs: list[str] = []
    for name in _FIELDS:
        value = getattr(info, name)
        if value is None:
            continue
        if name in _FLOATS:
            value = _num(value)
        elif name in _INTS:
            value = str(int(value))
        pairs += [name, str(value)]
    return pairs


def _decode_task(flat: Sequence[str]) -> TaskInfo:
    """A task from its hash (HGETALL's flat field/value list)."""
    stored = dict(zip(flat[::2], flat[1::2], strict=True))
    values: dict[str, Any] = {}
    for name in _FIELDS:
        text = stored.get(name)
        if text is None:
            continue
        values[name] = float(text) if name in _FLOATS else int(text) if name in _INTS else text
    values["state"] = State(values["state"])
    return TaskInfo(**values)


def _encode_queue(queue: str) -> str:
    """A queue's name as it appears in keys and lease tokens: percent-encoded (no ``{ } : /
    %``...), the empty name ``%`` (which no encoded name can be)."""
    return urllib.parse.quote(queue, safe="") or "%"


def _token_queue(token: str) -> str | None:
    """The queue a claim token names (:meth:`RedisBackend.claim`), None if it names none."""
    encoded, slash, _ = token.partition("/")
    if not slash:
        return None
    return "" if encoded == "%" else urllib.parse.unquote(encoded)


def _tokens(ids: Sequence[str], leases: Sequence[str] | None) -> list[str]:
    """``leases`` checked: one claim token (a string) per id; '' for each without them."""
    if leases is None:
        return [""] * len(ids)
    if len(leases) != len(ids) or not all(isinstance(t, str) for t in leases):
        raise ConfigError("leases", leases, f"one lease token (str) per task id ({len(ids)})")
    return list(leases)


def _nil(value: Any) -> Any:
    """A history row's value: the Lua side writes ``false`` for nil."""
    return None if value is False else value


def _history_rows(members: Sequence[str]) -> Iterator[tuple[float, int, HistoryRow]]:
    """A queue's history members as (ended_at, insertion seq, row)."""
    for m in members:
        (task_id, type_, queue, enqueued, started, ended, status, worker, attempt,
         error) = map(_nil, json.loads(m[_SEQ_WIDTH:]))
        row = HistoryRow(task_id=task_id, type=type_, queue=queue, enqueued_at=float(enqueued),
                         started_at=None if started is None else float(started),
                         ended_at=float(ended), status=status, worker=worker,
                         attempt=int(attempt), error=error)
        yield row.ended_at, int(m[:_SEQ_WIDTH]), row


# -- the store --------------------------------------------------------------------------

class RedisBackend:
    """The :class:`~poolsim.queue.backends.base.Backend` on Redis (see the module doc).

    Making one does not connect: the first call does (and raises
    :class:`~poolsim.errors.BackendUnavailable` if it cannot)."""

    def __init__(self, url: str, *, history_retention: float | None = None) -> None:
        parsed = parse_url(url)
        self.url = parsed.redacted
        self.prefix, self.timeout, self.cluster = parsed.prefix, parsed.timeout, parsed.cluster
        self.history_retention = (parsed.history_retention if history_retention is None
                                  else _retention(history_retention))
        self._parsed = parsed
        self._queues_key = f"{self.prefix}:queues"
        self._client: redis.Redis | redis.cluster.RedisCluster | None = None
        self._lock = threading.Lock()  # guards the lazy client and the id cache
        self._ids: dict[str, str] = {}  # task id → queue, insertion-ordered (oldest first)
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisBackend({self.url!r})"

    # -- connections, scripts, errors -------------------------------------------------

    def _redis(self) -> redis.Redis | redis.cluster.RedisCluster:
        """The client, made on first use (a cluster client connects when made)."""
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> redis.Redis | redis.cluster.RedisCluster:
        p = self._parsed
        options: dict[str, Any] = dict(
            host=p.host, port=p.port, username=p.username, password=p.password,
            socket_timeout=p.timeout, socket_connect_timeout=p.timeout, decode_responses=True,
            # One try per call, so ``timeout`` bounds it (redis-py 6 would retry 3 times by
            # default); the server's loops retry with their own back-off. A pooled connection
            # that died with its server is replaced before use all the same.
            retry=Retry(NoBackoff(), 0), **p.ssl)
        if p.tls:
            options["ssl"] = True
        if p.cluster:
            # No retry of a command (or pipeline) after a timeout or connection error: its
            # first run may have happened, and a script must not run twice (a claim's tasks
            # stranded, an enqueue reported as a duplicate); nor may a call wait 4 timeouts.
            # MOVED/ASK redirections are followed all the same (a separate loop).
            # redis-py 6 and later take that from ``retry`` (in ``options``); redis-py 5 has
            # its own cluster-level count.
            legacy: dict[str, Any] = {"cluster_error_retry_attempts": 0} if _REDIS_PY < 6 else {}
            cluster: redis.cluster.RedisCluster = redis.cluster.RedisCluster(
                **legacy, **options)
            return cluster
        return redis.Redis(db=p.db, **options)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Redis's "cannot serve now" errors as :class:`BackendUnavailable` (redacted)."""
        if self._closed:
            raise BackendUnavailable(self.url, "the backend is closed")
        try:
            yield
        except rexc.AuthenticationError as exc:
            raise BackendUnavailable(self.url, "authentication failed (wrong or missing "
                                     f"password or user): {self._scrub(exc)}") from None
        except _UNAVAILABLE as exc:
            raise BackendUnavailable(self.url, f"{type(exc).__name__}: "
                                     f"{self._scrub(exc)}") from None
        except rexc.ResponseError as exc:
            if str(exc).partition(" ")[0] not in _UNAVAILABLE_REPLIES:
                raise
            raise BackendUnavailable(self.url, f"{type(exc).__name__}: "
                                     f"{self._scrub(exc)}") from None

    def _scrub(self, exc: BaseException) -> str:
        text, secret = str(exc), self._parsed.password
        return text.replace(secret, "***") if secret else text

    def _base(self, queue: str) -> str:
        """The queue's key prefix: ``<prefix>:{<encoded queue>}:`` (one hash slot)."""
        return f"{self.prefix}:{{{_encode_queue(queue)}}}:"

    def _eval(self, script: _Script, queue: str, args: Sequence[str]) -> Any:
        """One script on one queue (loading it first if the server lacks it)."""
        client = self._redis()
        try:
            return client.evalsha(script.sha, 1, self._base(queue), *args)
        except rexc.NoScriptError:
            client.script_load(script.source)
            return client.evalsha(script.sha, 1, self._base(queue), *args)

    def _eval_many(self, calls: Sequence[tuple[_Script, str, Sequence[str]]], *,
                   remember: Sequence[str] = ()) -> list[Any]:
        """Each ``(script, queue, args)`` in one pipelined round trip (non-transactional:
        each script is atomic on its own), after adding ``remember`` to the known queues."""
        with self._guard():
            if len(calls) == 1 and not remember:
                return [self._eval(*calls[0])]
            pipe = self._redis().pipeline(transaction=False)
            if remember:
                pipe.sadd(self._queues_key, *remember)
            for script, queue, args in calls:  # (a cluster pipeline blocks pipe.evalsha())
                pipe.execute_command("EVALSHA", script.sha, 1, self._base(queue), *args)
            results: list[Any] = pipe.execute(raise_on_error=False)[1 if remember else 0:]
            for i, result in enumerate(results):
                if isinstance(result, rexc.NoScriptError):
                    results[i] = self._eval(*calls[i])
                elif isinstance(result, Exception):
                    raise result
            return results

    def _pipeline(self, commands: Sequence[tuple[str, ...]]) -> list[Any]:
        """Plain commands in one pipelined round trip."""
        with self._guard():
            pipe = self._redis().pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(pipe.execute())

    def _known_queues(self) -> list[str]:
        """Every queue ever enqueued to or paused, sorted by name."""
        with self._guard():
            return sorted(self._redis().smembers(self._queues_key))  # type: ignore[arg-type]

    # -- which queue holds a task -----------------------------------------------------

    def _remember(self, task_id: str, queue: str) -> None:
        with self._lock:
            self._ids.pop(task_id, None)
            self._ids[task_id] = queue
            if len(self._ids) > ID_CACHE_SIZE:
                del self._ids[next(iter(self._ids))]

    def _cached(self, task_id: str) -> str | None:
        with self._lock:
            return self._ids.get(task_id)

    def _lookup(self, ids: Sequence[str]) -> dict[str, str]:
        """Each id's queue, found across the known queues (first by name); missing ones
        left out. One round trip after listing the queues."""
        wanted = list(dict.fromkeys(ids))
        queues = self._known_queues()
        if not wanted or not queues:
            return {}
        pairs = [(task_id, queue) for queue in queues for task_id in wanted]
        found: dict[str, str] = {}
        exists = self._pipeline([("EXISTS", f"{self._base(q)}t:{i}") for i, q in pairs])
        for (task_id, queue), hit in zip(pairs, exists, strict=True):
            if hit and task_id not in found:
                found[task_id] = queue
                self._remember(task_id, queue)
        return found

    def _locate(self, ids: Sequence[str]) -> dict[str, str]:
        """Each id's queue: the cache's, else looked up; ids found nowhere left out."""
        found = {i: q for i in ids if (q := self._cached(i)) is not None}
        missing = [i for i in ids if i not in found]
        return found | self._lookup(missing) if missing else found

    def _candidates(self, task_id: str) -> Iterator[str]:
        """Where to look for one task: the cached queue, then (if it is not there, or not
        cached) the one a lookup finds. Lazy: the lookup runs only if asked for."""
        cached = self._cached(task_id)
        if cached is not None:
            yield cached
        found = self._lookup([task_id]).get(task_id)
        if found is not None and found != cached:
            yield found

    def _by_queue(self, ids: Sequence[str],
                  leases: Sequence[str] | None) -> dict[str, list[int]]:
        """The positions of ``ids`` grouped by queue, in order: with ``leases``, the queue
        each claim token names (so one id claimed in two queues reaches both); without
        (or for a token naming none), the queue holding the id (found ones only)."""
        groups: dict[str, list[int]] = {}
        unrouted = []
        for n in range(len(ids)):
            queue = None if leases is None else _token_queue(leases[n])
            if queue is None:
                unrouted.append(n)
            else:
                groups.setdefault(queue, []).append(n)
        if unrouted:
            where = self._locate([ids[n] for n in unrouted])
            for n in unrouted:
                if ids[n] in where:
                    groups.setdefault(where[ids[n]], []).append(n)
        return {queue: sorted(ns) for queue, ns in groups.items()}

    # -- the protocol -----------------------------------------------------------------

    def enqueue(self, task: TaskInfo, *, now: float) -> TaskInfo:
        """Store ``task`` as scheduled or pending; a live unique key or an id already in its
        queue raises :class:`TaskAlreadyExists` in the same script."""
        stored = as_stored(task, now=now)
        until = stored.unique_until if stored.unique_until is not None else now
        lock_ms = math.ceil((until - now) * 1000) if stored.unique_key is not None else 0
        args = [stored.id, _num(now), stored.state.value, _num(stored.process_at),
                _opt(stored.unique_key),
                _num(until), str(max(lock_ms, 0)), *_encode_task(stored)]
        [result] = self._eval_many([(ENQUEUE, stored.queue, args)], remember=[stored.queue])
        if result == "unique":
            raise TaskAlreadyExists(str(stored.unique_key), stored.queue)
        if result == "id":
            raise TaskAlreadyExists(stored.id, stored.queue)
        self._remember(stored.id, stored.queue)
        return stored

    def claim(self, queues: Sequence[str], *, worker: str, now: float, lease_s: float,
              limit: int) -> list[TaskInfo]:
        """Lease up to ``limit`` pending tasks from ``queues`` in order (paused ones
        skipped), oldest first: one script per queue until ``limit`` is filled, each
        returning its tasks' fields (one round trip per queue). Each token starts with its
        queue, ``<encoded queue>/<128-bit nonce>:<rank>``, which routes the calls given it.

        If a queue's script fails (:class:`BackendUnavailable`) after earlier queues gave
        tasks, those are returned (a warning logged), not lost to the caller; it raises
        only when nothing was taken."""
        taken: list[TaskInfo] = []
        for queue in dict.fromkeys(queues):
            if len(taken) >= limit:
                break
            args = [worker, _num(now), _num(now + lease_s), str(limit - len(taken)),
                    f"{_encode_queue(queue)}/{secrets.token_hex(16)}"]
            try:
                [rows] = self._eval_many([(CLAIM, queue, args)])
            except BackendUnavailable as exc:
                if not taken:
                    raise
                _log.warning("claim: queue %r failed after %d task(s) were claimed from "
                             "earlier queues; returning those: %s", queue, len(taken), exc)
                break
            for flat in rows:
                info = _decode_task(flat)
                self._remember(info.id, queue)
                taken.append(info)
        return taken

    def renew(self, ids: Sequence[str], *, worker: str, until: float,
              leases: Sequence[str] | None = None) -> list[str]:
        """Extend leases (even lapsed ones nobody recovered yet): with ``leases`` the
        tokens still held, else the ids ``worker`` still holds; in the order given."""
        tokens = _tokens(ids, leases)
        mode = "worker" if leases is None else "lease"
        groups = self._by_queue(ids, leases)
        calls = [(RENEW, queue, [_num(until), mode, worker,
                                 *(x for n in ns for x in (ids[n], tokens[n]))])
                 for queue, ns in groups.items()]
        held = {n for (_, ns), got in zip(groups.items(), self._eval_many(calls) if calls else [],
                                          strict=True)
                for n, ok in zip(ns, got, strict=True) if ok}
        return [tokens[n] if leases is not None else ids[n] for n in sorted(held)]

    def finish(self, task_id: str, *, worker: str, now: float, outcome: Outcome,
               lease: str | None = None) -> bool:
        """Acknowledge one attempt with its history row; False if the claim ``lease`` (or,
        without a token, ``worker``) no longer holds the task."""
        return self.finish_many([(task_id, outcome)], worker=worker, now=now,
                                leases=None if lease is None else [lease])[0]

    def finish_many(self, outcomes: Sequence[tuple[str, Outcome]], *, worker: str,
                    now: float, leases: Sequence[str] | None = None) -> list[bool]:
        """:meth:`finish` for several tasks: one script per queue (each atomic), all in one
        pipelined round trip."""
        ids = [task_id for task_id, _ in outcomes]
        tokens = _tokens(ids, leases)
        mode = "worker" if leases is None else "lease"
        groups = self._by_queue(ids, leases)
        calls = []
        for queue, ns in groups.items():
            args = [_num(now), _day(now), mode, worker]
            for n in ns:
                outcome = outcomes[n][1]
                args += [ids[n], tokens[n], State(outcome.state).value, outcome.status,
                         _opt(outcome.error),
                         _opt(None if outcome.retry_at is None else _num(outcome.retry_at))]
            calls.append((FINISH, queue, args))
        done = [False] * len(outcomes)
        for ns, got in zip(groups.values(), self._eval_many(calls) if calls else [],
                           strict=True):
            for n, ok in zip(ns, got, strict=True):
                done[n] = bool(ok)
        return done

    def hand_back(self, ids: Sequence[str], *, worker: str, now: float,
                  leases: Sequence[str] | None = None) -> int:
        """Return held tasks to pending (attempt not counted, history ``returned``), at
        their old place in the queue; returns how many."""
        tokens = _tokens(ids, leases)
        mode = "worker" if leases is None else "lease"
        calls = [(HAND_BACK, queue, [_num(now), _day(now), mode, worker,
                                     *(x for n in ns for x in (ids[n], tokens[n]))])
                 for queue, ns in self._by_queue(ids, leases).items()]
        return sum(self._eval_many(calls)) if calls else 0

    def recover(self, *, now: float) -> int:
        """Lapsed leases → retry (due after
        :func:`~poolsim.queue.backends.base.recover_backoff`) or archived; one script per
        known queue, pipelined, at most :data:`BATCH` tasks each, again for the queues
        whose batch was full until none is. Returns how many."""
        dues = [_num(now + recover_backoff(k)) for k in range(_BACKOFF_STEPS)]
        return self._each_queue(RECOVER, [_num(now), _day(now), str(BATCH), *dues],
                                lambda n: (int(n), int(n) >= BATCH))

    def forward(self, *, now: float) -> int:
        """Due scheduled/retry tasks → pending; completed tasks past retention and history
        older than ``history_retention`` deleted (the janitor). Each script moves at most
        :data:`BATCH` of each kind; a queue's is called again while a batch was full.
        Returns how many moved."""
        cutoff = (_num(now - self.history_retention)
                  if math.isfinite(self.history_retention) else "")
        keep_from = str(int(_day(now)) - DAILY_KEEP_DAYS + 1)
        return self._each_queue(FORWARD, [_num(now), cutoff, keep_from, str(BATCH)],
                                lambda r: (int(r[0]), bool(r[1])))

    def _each_queue(self, script: _Script, args: Sequence[str],
                    count: Callable[[Any], tuple[int, bool]]) -> int:
        """``script`` on every known queue (pipelined), again on those whose reply
        ``count`` says was a full batch, until none was; the sum of its counts."""
        total, queues = 0, self._known_queues()
        while queues:
            results = self._eval_many([(script, queue, args) for queue in queues])
            again = []
            for queue, result in zip(queues, results, strict=True):
                n, full = count(result)
                total += n
                if full:
                    again.append(queue)
            queues = again
        return total

    def stats(self, *, now: float) -> list[QueueStats]:
        """Every queue ever enqueued to or paused, sorted by name."""
        queues = self._known_queues()
        args = [_day(now), *(s.value for s in State)]
        results = self._eval_many([(STATS, q, args) for q in queues]) if queues else []
        out = []
        for queue, row in zip(queues, results, strict=True):
            counts = dict(zip(State, (int(n) for n in row[:len(State)]), strict=True))
            paused, oldest, processed, failed = row[len(State):]
            out.append(QueueStats(
                queue=queue, counts=counts, paused=bool(paused),
                oldest_pending_age_s=None if oldest is None else max(0.0, now - float(oldest)),
                processed_today=int(processed or 0), failed_today=int(failed or 0)))
        return out

    def get(self, task_id: str) -> TaskInfo:
        """One task by id, or :class:`TaskNotFound`."""
        for queue in self._candidates(task_id):
            [flat] = self._pipeline([("HGETALL", f"{self._base(queue)}t:{task_id}")])
            if flat:
                return _decode_task(_flatten(flat))
        raise TaskNotFound(task_id)

    def list_tasks(self, *, state: State, queue: str | None = None, limit: int = 100,
                   offset: int = 0) -> list[TaskInfo]:
        """Tasks in ``state`` (of ``queue``, or all), by readiness then insertion order
        (ties across queues: by queue name); one snapshot script per queue."""
        state, offset = State(state), max(offset, 0)
        if limit <= 0:
            return []
        if queue is not None:
            [rows] = self._eval_many([(LIST, queue, [state.value, str(offset),
                                                     str(offset + limit - 1)])])
            return [_decode_task(flat) for flat in rows]
        queues = self._known_queues()
        args = [state.value, "0", str(offset + limit - 1)]
        results = self._eval_many([(LIST, q, args) for q in queues]) if queues else []
        merged = heapq.merge(*([_decode_task(flat) for flat in rows] for rows in results),
                             key=lambda info: info.process_at)
        return list(merged)[offset:offset + limit]

    def act(self, task_id: str, action: Literal["requeue", "delete", "archive"], *,
            now: float) -> TaskInfo | None:
        """``requeue`` (pending now, retries reset), ``delete`` (its unique lock too) or
        ``archive``; an active task only once its lease lapsed (else ``ConfigError``)."""
        if action not in ("requeue", "delete", "archive"):
            raise ConfigError("action", action, "requeue, delete or archive")
        for queue in self._candidates(task_id):
            [result] = self._eval_many([(ACT, queue, [task_id, action, _num(now)])])
            if result[0] == "live":
                raise ConfigError("task_id", task_id, f"a task not held by a live worker "
                                  f"({result[1]} holds its lease until {float(result[2]):.3f});"
                                  " wait until the lease lapses")
            if result[0] == "deleted":
                return None
            if result[0] == "ok":
                return _decode_task(result[1])
        raise TaskNotFound(task_id)

    def pause(self, queue: str, paused: bool) -> None:
        """Pause or unpause ``queue`` (a queue not yet seen is remembered)."""
        key = f"{self._base(queue)}paused"
        self._pipeline([("SADD", self._queues_key, queue),
                        ("SET", key, "1") if paused else ("DEL", key)])

    def history(self, *, since: float = 0.0) -> list[HistoryRow]:
        """Attempts ended at or after ``since``, by ``ended_at`` (ties: queue name, then
        the order they ended in)."""
        queues = self._known_queues()
        found = self._pipeline([("ZRANGEBYSCORE", f"{self._base(q)}history", _num(since),
                                 "+inf") for q in queues]) if queues else []
        rows = [(ended, n, seq, row) for n, members in enumerate(found)
                for ended, seq, row in _history_rows(members)]
        return [row for *_, row in sorted(rows, key=lambda r: r[:3])]

    def close(self) -> None:
        """Release the connections; later calls raise ``BackendUnavailable``."""
        self._closed = True
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*_UNAVAILABLE):
                client.close()


def _flatten(value: Any) -> list[str]:
    """HGETALL's reply as a flat field/value list (a plain command gives a dict)."""
    if isinstance(value, dict):
        return [x for pair in value.items() for x in pair]
    return list(value)
