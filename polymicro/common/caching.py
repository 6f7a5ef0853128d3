"""Read-through caching for the service layer, invalidated by generations.

Every cached read lives in a *namespace* (``catalog`` for projects and services,
``metrics:<project id>`` for the CPU metrics of one project).  A namespace has a
generation number stored in the cache (``gen:<namespace>``).  An entry is stored under a
key of its own, *with* the generation it was computed under and the time its
computation started::

    polymicro:catalog:e:<hash of the query and page>  ->  (generation, started_ms, value, took_ms)

A read fetches the namespace's current generation and the entry in one ``MGET`` (one
round trip); an entry of another generation is a miss.  A write bumps the generation
(one Lua script for every namespace a write touches: ``SET NX`` of a random start,
then ``INCR``, atomic across workers), so every entry written before it becomes stale at
once: no key listing, no pattern deletes, and no race can resurrect an old value (a
reader that computed a value from the database before the write stores it under the old
generation, which is stale from then on).  Entries expire after
``CACHE_DEFAULT_TIMEOUT`` seconds, which only bounds memory.  A missing generation starts
at a random 48-bit number, so a generation key lost to a Redis restart or eviction can
never make old entries current again.

Bounded staleness (``LIST_STALENESS_MS``, default 1000; 0 = exact)
    A namespace declared with ``bounded_staleness=True`` (the log and CPU-point lists)
    may serve an entry of an *older* generation while it is younger than the window:
    an entry whose computation started at *t* is served until *t* + window, however
    many writes landed since.  Under a steady stream of writes each distinct list is
    then recomputed at most about once per window per worker, instead of on every read.
    What a reader sees, exactly:

    - every write acknowledged (to anyone) more than the window before the read started;
    - every write of its own (the same user, the same API key; outside a request, the
      same process), however recent: a write records, per namespace and caller, the
      generation it produced (``rw:<namespace>:<caller>``, kept for the window), and an
      older entry is not served to that caller;
    - nothing else is promised about writes of others younger than the window: they may
      or may not be in the list, and two reads in a row may come from different moments
      of that window.

    How it holds under load: once less than three times an entry's last computation
    is left of its window, one reader of the whole cluster takes a Redis lease and
    recomputes it (in the background for a cached response, so nobody waits for it)
    while the others keep serving the entry; a reader that finds nothing it may serve
    waits for the reader holding the lease instead of computing the same entry again;
    and a value computed from entries served stale is stored as old as the oldest of
    them (and never as current), so nothing outlives the window.  The window of an
    entry counts from the last moment it was known exact: the start of its computation,
    or a later lookup that found its generation still current (the entry is then
    re-stamped, see ``Reader._confirm``).  A reader waiting for another's computation
    takes any entry whose moment is less than a window before its own read started.

    With authentication off every caller is the same anonymous admin, so everyone
    "wrote" every write and lists are exact.  Times are wall-clock milliseconds from
    :data:`clock` (``time.time`` unless a test replaces it; across machines, their clock
    skew adds to the window).  Namespaces without the flag are always exact.

The cache is an optimisation, never a dependency: when Redis fails, reads go to the
database and writes still succeed.  One warning is logged when it goes away and one
info line when it returns; between the two, the cache is not tried again for
``RETRY_SECONDS`` after each failure (so an outage costs at most one timeout per
``RETRY_SECONDS`` per worker).  A generation bump that failed during the outage is
replayed by that worker before it uses the cache again.  (A bump lost in a network
partition that left Redis's data in place is the one case where another worker could
serve an entry up to ``CACHE_DEFAULT_TIMEOUT`` old; a Redis restart loses the entries
with the generations, so it cannot.)

Inside a database transaction (:func:`polymicro.common.atomic.transaction`) bumps wait
for the commit: a reader that recomputed between the write and its commit would
otherwise store data without the write under the new generation.

Cached values are plain data (dicts, lists, ObjectIds, datetimes), never documents.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app, g, has_app_context, has_request_context, request

from polymicro.common import atomic, cache_reads
from polymicro.extensions import cache

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0

# Wall-clock seconds (a float); tests replace it to move time without sleeping.
clock: Callable[[], float] = time.time


class CacheDown(Exception):
    """The cache could not be used for this operation."""


class _Breaker:
    """Per-process state of the cache connection."""

    def __init__(self):
        self.lock = threading.Lock()
        self.down_until = 0.0
        self.warned = False
        self.pending: set[str] = set()

    def reset(self):
        with self.lock:
            self.down_until = 0.0
            self.warned = False
            self.pending.clear()


_breaker = _Breaker()
_bump_lock = threading.Lock()


def reset_state() -> None:
    """Forget outages and pending bumps (tests start each app with a clean slate)."""
    _breaker.reset()
    for listener in bump_listeners:
        listener(None)


# Called with the namespaces of every bump made in this process once it was sent (None:
# forget them all, from reset_state): local_cache stops trusting what it last read.
bump_listeners: list[Callable[[tuple[str, ...] | None], None]] = []


def _guard(operation: Callable, *args):
    """Run a cache operation; on any failure mark the cache down and raise CacheDown."""
    if time.monotonic() < _breaker.down_until:
        raise CacheDown
    try:
        if _breaker.pending:
            _replay_pending()
        result = operation(*args)
    except Exception as exc:  # redis errors, timeouts, refused connections, …
        with _breaker.lock:
            _breaker.down_until = time.monotonic() + RETRY_SECONDS
            first = not _breaker.warned
            _breaker.warned = True
        if first:
            log.warning(
                "cache unavailable (%s: %s); answering from the database until it returns",
                type(exc).__name__,
                exc,
            )
        raise CacheDown from exc
    if _breaker.warned:
        with _breaker.lock:
            _breaker.warned = False
        log.info("cache reachable again; caching resumes")
    return result


def _generation_key(namespace: str) -> str:
    return f"gen:{namespace}"


def _entry_key(namespace: str, key: str) -> str:
    return f"{namespace}:e:{key}"


def _writer_key(namespace: str, caller: str) -> str:
    return f"rw:{namespace}:{caller}"


def _lease_key(entry_key: str) -> str:
    return f"lease:{entry_key}"


def _add(key: str, ttl_ms: int) -> bool:
    """SET NX with a time to live in milliseconds (flask-caching's ``add`` counts
    seconds)."""
    if _is_redis():
        backend = cache.cache
        return backend._write_client.set(backend._get_prefix() + key, 1, nx=True, px=ttl_ms)
    return cache.add(key, 1, timeout=math.ceil(ttl_ms / 1000))


def _delete(keys: list[str]) -> None:
    """Delete keys, whether they exist or not, in one round trip.

    Not flask-caching's ``delete_many``: cachelib's checks each key with ``EXISTS``
    after the ``DEL`` and raises when one exists again.  A released lease is often taken
    again at once by another reader (refresh ahead under a steady writer), so the
    release raised, ``_guard`` took it for an outage, and that worker answered every
    read from the database for ``RETRY_SECONDS`` (issue 9: ``make bench-mixed`` logged
    "cache unavailable (RuntimeError: Failed to delete keys: ['lease:logs:…'])")."""
    if _is_redis():
        backend = cache.cache
        backend._write_client.delete(*(backend._get_prefix() + key for key in keys))
        return
    for key in keys:
        cache.delete(key)


# KEYS: the generation key, the entry key.  ARGV: the generation, the entry, its time to
# live in seconds (-1: none).
_SET_IF_GENERATION_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  else
    redis.call('SET', KEYS[2], ARGV[2])
  end
  return 1
end
return 0
"""


def _set_if_generation(namespace: str, generation: int, key: str, value: Any) -> bool:
    """Store ``value`` under ``key`` only while ``namespace`` is still at ``generation``
    (atomic on Redis; under a lock with the in-process cache of the tests)."""
    if _is_redis():
        backend = cache.cache
        client = backend._write_client
        script = _script(client, _SET_IF_GENERATION_LUA)
        prefix = backend._get_prefix()
        ttl = backend._normalize_timeout(None)
        return bool(
            script(
                keys=[prefix + _generation_key(namespace), prefix + key],
                args=[str(generation), backend.serializer.dumps(value), ttl],
            )
        )
    with _bump_lock:
        if cache.get(_generation_key(namespace)) != generation:
            return False
        cache.set(key, value)
        return True


def _generation(namespace: str) -> int:
    key = _generation_key(namespace)
    value = cache.get(key)
    if value is None:
        cache.add(key, secrets.randbits(48), timeout=0)
        value = cache.get(key)
        if value is None:
            raise RuntimeError("the cache did not keep a generation key")
    return value


def _is_redis() -> bool:
    return type(cache.cache).__name__.startswith("Redis")


def _now_ms() -> float:
    return clock() * 1000.0


# --- who is reading or writing, and how stale a namespace may be ------------------------


def caller() -> str:
    """Who is asking, for read-your-writes: the user or API key of this request
    (``anonymous`` without one, e.g. with authentication off), or this process outside a
    request (a CLI command, a job, a service-layer test)."""
    if has_request_context():
        principal = g.get("principal")
        who = principal and (getattr(principal, "key_id", None) or principal.user_id)
        return f"{principal.kind}:{who}" if who else "anonymous"
    return f"process:{os.getpid()}"


def staleness_ms(namespace: str) -> int:
    """How old (ms) an entry of an older generation may be and still be served: the
    ``LIST_STALENESS_MS`` setting for namespaces declared ``bounded_staleness``, else 0."""
    declared = _NAMESPACES.get(namespace.split(":", 1)[0])
    if declared is None or not declared.bounded_staleness or not has_app_context():
        return 0
    if _refreshing.get():
        return 0  # a refresh computes from the database, never from stale entries
    return max(0, int(current_app.config.get("LIST_STALENESS_MS", 0)))


# --- writes: bumps ---------------------------------------------------------------------

# KEYS: n generation keys, then one "last write" key for each of the first m of them, then
# h history keys (see "Append history" below).  ARGV: n, m, the window in ms, n random
# starting generations, h, the write's oldest row time in ms (-1: not an append), h
# random starting history generations.  Returns nothing.
_BUMP_LUA = """
local n, m, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[3 + i], 'NX')
  local generation = redis.call('INCR', KEYS[i])
  if i <= m then
    redis.call('SET', KEYS[n + i], generation, 'PX', window)
  end
end
local h, low = tonumber(ARGV[4 + n]), tonumber(ARGV[5 + n])
for j = 1, h do
  local key = KEYS[n + m + j]
  local floor = tonumber(redis.call('HGET', key, 'floor') or '-1')
  if low < 0 or low < floor then
    redis.call('HSETNX', key, 'gen', ARGV[5 + n + j])
    redis.call('HINCRBY', key, 'gen', 1)
  end
end
return n
"""
_scripts: dict[Any, Any] = {}


def _script(client, source: str):
    """``source`` registered with ``client`` (once per client and script)."""
    script = _scripts.get((source, id(client)))
    if script is None:
        script = _scripts[(source, id(client))] = client.register_script(source)
    return script


def _increment(
    namespaces: list[str], writer: dict[str, str], window_ms: int, appended_ms: int = -1
) -> None:
    """Bump every namespace; record ``writer[ns]`` (a caller key) for those in it; move
    the append history of those that keep one (``appended_ms``: the oldest time of the
    rows the write appended, -1 when it changed anything else)."""
    ordered = sorted(namespaces, key=lambda ns: ns not in writer)
    tracked = [ns for ns in ordered if _keeps_history(ns)]
    if _is_redis():
        # One round trip for every bump of a write (it used to be three per namespace).
        # cachelib stores ints as plain ASCII, so the generations stay readable by MGET.
        backend = cache.cache
        prefix = backend._get_prefix()
        keys = [prefix + _generation_key(ns) for ns in ordered]
        keys += [prefix + writer[ns] for ns in ordered if ns in writer]
        keys += [prefix + _history_key(ns) for ns in tracked]
        # random, not secrets: a start only has to differ from earlier generations, and
        # secrets.randbits is a getrandom() system call per namespace per write.
        starts = [random.getrandbits(48) for _ in ordered]
        m = sum(1 for ns in ordered if ns in writer)
        history = [len(tracked), appended_ms, *(random.getrandbits(48) for _ in tracked)]
        cache_reads.run_script(
            _script(backend._write_client, _BUMP_LUA),
            keys,
            [len(ordered), m, max(window_ms, 1), *starts, *history],
        )
        return
    with _bump_lock:  # SimpleCache lives in this process: a lock makes it atomic
        for ns in ordered:
            key = _generation_key(ns)
            generation = (cache.get(key) or random.getrandbits(48)) + 1
            cache.set(key, generation, timeout=0)
            if ns in writer:  # SimpleCache counts whole seconds from int(time()): +1
                cache.set(writer[ns], generation, timeout=math.ceil(window_ms / 1000) + 1)
        for ns in tracked:
            floor, generation = cache.get(_history_key(ns)) or (-1, None)
            if appended_ms < 0 or appended_ms < floor:
                generation = (generation or random.getrandbits(48)) + 1
                cache.set(_history_key(ns), (floor, generation), timeout=0)


def _replay_pending() -> None:
    while _breaker.pending:
        namespace = next(iter(_breaker.pending))
        _increment([namespace], {}, 0)  # as a change of anything: the history moves too
        _breaker.pending.discard(namespace)


def bump(*namespaces: str, appended_from: datetime | None = None) -> None:
    """Invalidate every cached read of these namespaces (call after the write).

    Inside a transaction the bump runs after the commit.  For namespaces with a
    staleness window, the caller's write is recorded so its own reads see it.
    ``appended_from``: the write only inserted rows, none older than this time (see
    :func:`history`); None (the default) for any other write.
    """
    namespaces = tuple(dict.fromkeys(namespaces))
    if not namespaces:
        return
    _forget(namespaces)
    if atomic.in_transaction():
        atomic.after_commit(lambda: bump(*namespaces, appended_from=appended_from))
        return
    window = max((staleness_ms(ns) for ns in namespaces), default=0)
    writer = {}
    if window:
        who = caller()
        writer = {ns: _writer_key(ns, who) for ns in namespaces if staleness_ms(ns)}
    appended = -1 if appended_from is None else max(0, _ms_since_1970(appended_from))
    try:
        _guard(_increment, list(namespaces), writer, window, appended)
    except CacheDown:
        _breaker.pending.update(namespaces)
    for listener in bump_listeners:
        listener(namespaces)


# --- append history: what an incremental count may rely on ---------------------------

# KEYS: the history key.  ARGV: the floor (ms), a random starting generation.
_HISTORY_LUA = """
redis.call('HSETNX', KEYS[1], 'gen', ARGV[2])
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or '-1')
if tonumber(ARGV[1]) > floor then
  redis.call('HSET', KEYS[1], 'floor', ARGV[1])
end
return redis.call('HGET', KEYS[1], 'gen')
"""


def _history_key(namespace: str) -> str:
    return f"hist:{namespace}"


def _keeps_history(namespace: str) -> bool:
    declared = _NAMESPACES.get(namespace.split(":", 1)[0])
    return declared is not None and declared.append_history


def _ms_since_1970(value: datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return (value - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1)


def history(namespace: str, floor: datetime) -> int | None:
    """Raise the *append floor* of ``namespace`` to ``floor`` and return its *history
    generation*, which moves with every write to it except an append of rows none older
    than the floor (None: the cache is down, or the namespace keeps no history).

    What a reader may build on it (``pagination.AppendCount``): if two calls return the
    same generation, the rows older than the floor of the first call are the same at the
    second (and at any moment between): an insert moves the generation when its oldest
    row is older than the floor at the time of its bump, which comes after its commit,
    and every other write (an update, a delete, a write whose bump did not say
    ``appended_from``) moves it always.  The floor only rises (the highest asked by any
    reader); the generation starts at a random number, as :func:`bump`'s do, so a key
    lost to a Redis restart or eviction (the floor and the generation are one hash) can
    never match an earlier one.  Rows deleted by a TTL index or a sweep are not writes
    the service sees: a reader must not rely on a count across a move of the retention
    horizon (``AppendCount`` recounts when the epoch moves).
    """
    if not _keeps_history(namespace):
        return None
    floor_ms = _ms_since_1970(floor)
    start = random.getrandbits(48)

    def read() -> int:
        if _is_redis():
            backend = cache.cache
            script = _script(backend._write_client, _HISTORY_LUA)
            return int(
                script(
                    keys=[backend._get_prefix() + _history_key(namespace)], args=[floor_ms, start]
                )
            )
        with _bump_lock:
            old_floor, generation = cache.get(_history_key(namespace)) or (-1, start)
            cache.set(_history_key(namespace), (max(old_floor, floor_ms), generation), timeout=0)
            return generation

    try:
        return _guard(read)
    except CacheDown:
        return None


def make_key(*parts: Any, **params: Any) -> str:
    """A short key that differs whenever any part or parameter differs."""
    text = json.dumps([parts, params], sort_keys=True, default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:24]


# --- reads -----------------------------------------------------------------------------


_MEMO = "_polymicro_cache_memo"
# True inside a background refresh (see refresh_later).
_refreshing: ContextVar[bool] = ContextVar("polymicro_refreshing", default=False)
_refresher: ThreadPoolExecutor | None = None
_refresher_lock = threading.Lock()
REFRESH_THREADS = 2


def refresh_later(job: Callable[[], None]) -> None:
    """Run ``job`` (a refresh of an entry served stale) on a small per-process thread
    pool, with stale entries ignored, so that no reader waits for it.  A job that fails
    is logged; its entry simply ages out."""
    global _refresher
    if _refresher is None:
        with _refresher_lock:
            if _refresher is None:
                _refresher = ThreadPoolExecutor(REFRESH_THREADS, "polymicro-refresh")

    def run() -> None:
        _refreshing.set(True)
        try:
            job()
        except Exception:
            log.exception("a background cache refresh failed")

    _refresher.submit(contextvars.copy_context().run, run)


# The generation of a value computed from entries served stale: no generation is -1.
STALE = -1
WAIT_POLL_S = 0.02
# How long a reader may hold the right to compute an entry (it gives it up as soon as the
# entry is stored, or its computation failed); readers that find nothing to serve wait
# for it meanwhile instead of computing the same entry again.  Measured under a batch
# writer: when waiters gave up after one window and all computed, SecantusDB fell behind
# and a project's logs answered 41 req/s with a p99 of 9.4 s.
LEASE_MS = 10_000
# A current entry is re-stamped with the time a reader found it current once it is older
# than this fraction of the window (Reader._confirm): at most about 1/fraction writes of
# the entry per window and reader, each one SET.
CONFIRM_FRACTION = 0.125
# An entry served within its window is refreshed ahead (by one reader, Reader._lookup)
# once it is older than this fraction of the window, or earlier when its computation is
# slow (three of its last computations no longer fit in what is left).  1.0: only then.
REFRESH_AHEAD_FRACTION = 0.5
# The start times of entries served stale during the computation of another value.
_stale_inputs: ContextVar[list[float] | None] = ContextVar("polymicro_stale", default=None)


def _note_stale(started: float) -> None:
    inputs = _stale_inputs.get()
    if inputs is not None:
        inputs.append(started)


def cached(namespace: str, key: str, producer: Callable[[], Any]) -> Any:
    """The value under ``key`` in ``namespace``, computed by ``producer`` when missing.

    Within one request the answer is remembered (until a bump of the namespace in that
    request): an API key is verified by the authentication and again by the rate
    limiter's client key, and the second lookup was a Redis round trip of its own.
    """
    if not has_request_context():
        return Reader(namespace).get(key, producer)
    reads = _recorded.get()
    if reads is not None and not staleness_ms(namespace):
        reads.append((namespace, key))
    memo = _request_memo()
    if (namespace, key) not in memo:
        memo[(namespace, key)] = Reader(namespace).get(key, producer)
    return memo[(namespace, key)]


# --- reading ahead: the lookups a hit depends on, in its one round trip ------------------
#
# A cached response whose key depends on other cached data (the logs and CPU lists: the
# retention days of the project, from the catalog's cached overrides) took two Redis
# round trips per hit, one for that data and one for the response (py-spy on a cached
# GET /api/logs/project/{id}: half of the view's time in the first).  The response cache
# (common/blueprint.py) now records which exact cached() reads its key needed
# (:func:`recording`), and the next request of that view asks for them in the MGET of
# its own lookup (``Reader.also``): what comes back current fills the request's memo,
# exactly what cached() would have returned a moment later; anything else is left to
# cached() to look up as before.

_recorded: ContextVar[list | None] = ContextVar("polymicro_recorded", default=None)


@contextlib.contextmanager
def recording():
    """Collect the ``(namespace, key)`` of every exact :func:`cached` read in the block
    (those of a namespace with a staleness window are left out: they are looked up as
    before)."""
    reads: list[tuple[str, str]] = []
    token = _recorded.set(reads)
    try:
        yield reads
    finally:
        _recorded.reset(token)


def _remember(reads: list[tuple[str, str]], found: list) -> None:
    """Fill the request memo with the reads of ``reads`` whose entry came back current
    (``found``: the generation and the entry of each, in order)."""
    if not has_request_context():
        return
    memo = _request_memo()
    for index, read in enumerate(reads):
        generation, entry = found[2 * index], found[2 * index + 1]
        if (
            generation is not None
            and isinstance(entry, tuple)
            and len(entry) == 4
            and entry[0] == generation
        ):
            memo.setdefault(read, entry[2])


def _request_memo() -> dict:
    """This request's memo.  It lives on ``g`` together with the request it belongs
    to: an app context held open around several requests (tests do) shares one ``g``,
    and a memo must never outlive its request."""
    current = request._get_current_object()
    owner, memo = g.get(_MEMO, (None, None))
    if owner is not current:
        memo = {}
        setattr(g, _MEMO, (current, memo))
    return memo


def _forget(namespaces: tuple[str, ...]) -> None:
    memo = _request_memo() if has_request_context() else None
    if memo:
        for entry in [k for k in memo if k[0] in namespaces]:
            del memo[entry]


class Reader:
    """Reads in one namespace.  Each lookup is one ``MGET``: the namespace's current
    generation, the entry (stored with the generation and start time of its
    computation) and, where the namespace has a staleness window, the caller's last
    write.  A value is stored under the generation read *before* it was computed: a
    write that lands meanwhile bumps the generation, so the value, possibly computed
    from data older than that write, is current for nobody (and, in a namespace with a
    window, served only inside it, never to that writer)."""

    def __init__(self, namespace: str, epoch: int | None = None):
        self.namespace = namespace
        self.epoch = epoch
        self.window_ms = staleness_ms(namespace)
        self._writer = _writer_key(namespace, caller()) if self.window_ms else None
        self._pending: tuple[int, float] | None = None  # (generation, started) of a miss
        self._leased: list[str] = []
        self._looked_up = 0.0
        self.refresh_due = False
        # Exact cached() reads to fetch in the same round trip as the first lookup.
        self.also: list[tuple[str, str]] = []
        self.unsettled = False

    def _current(self, generation: int) -> Any:
        """What an entry computed now is stamped with: the namespace's generation, with
        the reader's epoch when it has one (an entry of another epoch is stale like one
        of another generation)."""
        return generation if self.epoch is None else (generation, self.epoch)

    def _took(self) -> float:
        """Milliseconds since the lookup that missed: how long the computation took
        (with the wait for a background thread), what a refresh has to fit in."""
        return max(0.0, _now_ms() - self._looked_up)

    def _read(self, entry_key: str) -> list:
        keys = [_generation_key(self.namespace), entry_key]
        if self._writer:
            keys += [self._writer, _lease_key(entry_key)]
        also, self.also = self.also, []
        if also:
            extra = [k for ns, key in also for k in (_generation_key(ns), _entry_key(ns, key))]
            found = _guard(cache_reads.get_many, *keys, *extra)
            _remember(also, found[len(keys) :])
            del found[len(keys) :]
        else:
            found = _guard(cache_reads.get_many, *keys)
        if found[0] is None:
            found[0] = _guard(_generation, self.namespace)
        if not self._writer:
            found += [None, None]
        return found

    def _lookup(
        self, key: str, background: bool = False, settle: Callable[[], bool] | None = None
    ) -> tuple[bool, Any, tuple[int, float] | None]:
        """(hit, value, (generation, start) to store a computed value under).  With
        ``background``, a reader that takes the refresh lease is served the stale entry
        too (``refresh_due`` is set: it must refresh the entry without making its own
        caller wait).  ``settle``, when given, runs right after the read (it may set
        ``epoch``); if it says False the key was a wrong guess: nothing is decided,
        ``unsettled`` is set and the lookup answers a miss with nothing to store."""
        entry_key = _entry_key(self.namespace, key)
        before = _now_ms()  # the entry, if current, is exact as of this moment
        try:
            generation, entry, last_write, lease = self._read(entry_key)
        except CacheDown:
            return False, None, None
        if settle is not None and not settle():
            self.unsettled = True
            return False, None, None
        now = self._looked_up = _now_ms()
        current = self._current(generation)
        if entry is not None and len(entry) != 4:
            entry = None  # not an entry of this format
        if entry is not None:
            entry_generation, started, value, took = entry
            if entry_generation == current:
                if self.window_ms and before - started > self.window_ms * CONFIRM_FRACTION:
                    self._confirm(entry_key, entry, generation, before)
                return True, value, None
            if self._may_serve(entry, last_write, now):
                # Refresh ahead: once less than three times its last computation, or
                # less than half the window, is left of the window, one reader of the
                # whole cluster (the one that takes the lease) recomputes while the
                # others keep serving this entry, so readers do not all miss at once
                # when it ages out (measured: 8 concurrent recomputes of a project's
                # logs gave a p99 of 1.3 s under 20 POST/s).  A list that is quick to
                # compute is refreshed about twice a window; a slow one as soon as it is
                # stale.  The half window (REFRESH_AHEAD_FRACTION) is for a computation
                # slower than the last: one that met a batch insert (SecantusDB held for
                # 130 ms at the median, 370 ms at p99 under 100 logs a second) outlived
                # a lead of three quick computations, and every reader then waited for
                # it (bench/mixed.py: the filtered logs' p99 550 ms in one run).
                lead = max(3 * took, self.window_ms * (1 - REFRESH_AHEAD_FRACTION))
                if now - started < self.window_ms - lead or lease is not None:
                    _note_stale(started)
                    return True, value, None
                if not self._take_lease(entry_key):
                    _note_stale(started)
                    return True, value, None
                if background:
                    self.refresh_due = True
                    _note_stale(started)
                    return True, value, (current, now)
                return False, None, (current, now)
        if self.window_ms and (entry is None or self._may_serve(entry, last_write, None)):
            # Nothing to serve, and this caller has no write of its own to see: if another
            # reader is computing this entry, wait for it rather than compute it again.
            waited = self._wait_for(entry_key, lease, before)
            if waited is not None:
                return True, waited, None
            now = self._looked_up = _now_ms()
        return False, None, (current, now)

    def _confirm(self, entry_key: str, entry: tuple, generation: int, seen: float) -> None:
        """Re-stamp a current entry with ``seen``, the time just before the lookup that
        found its generation still current (only if the generation has not moved since:
        one Lua script on Redis).

        Why it is right: the entry was computed after reading generation *g*, and every
        write bumps the generation after it is stored, so a write acknowledged before
        ``seen`` bumped to at most *g* before the computation read the database: the
        value is exact as of ``seen``, and the window may count from there.  Why it is
        needed (issue 9, batch writer): an entry's window used to count from the start of
        its computation; under one batch a second into a project with a window of a
        second, the entry computed after one batch was a window old just as the next
        batch made it stale, so every batch made readers wait for a whole refresh of the
        list (p99 232-613 ms for a project's logs in ``bench/mixed.py``).  Re-stamped
        while it is current, the entry is served for a window after the write that made
        it stale, and the refresh ahead has that long to replace it."""
        stamped = (entry[0], seen, entry[2], entry[3])
        with contextlib.suppress(CacheDown):
            _guard(_set_if_generation, self.namespace, generation, entry_key, stamped)

    def _may_serve(self, entry: tuple, last_write: int | None, now: float | None) -> bool:
        """An entry of another generation may be served: inside the window (``now`` None:
        whatever its age) and not older than this caller's last write."""
        entry_generation, started = entry[0], entry[1]
        if isinstance(entry_generation, tuple):  # (generation, epoch)
            entry_generation, epoch = entry_generation
            if self.epoch is not None and epoch not in (self.epoch, self.epoch - 1):
                return False  # only the epoch just before is served stale
        if not self.window_ms or (last_write is not None and last_write > entry_generation):
            return False
        return now is None or now - started < self.window_ms

    def _wait_for(self, entry_key: str, lease: Any, read_started: float) -> Any:
        """The value another reader stores under ``entry_key`` while it holds the lease
        (polled every ``WAIT_POLL_S``, for at most ``LEASE_MS``); None when this reader
        took the lease itself, or the wait ran out.

        What may be served is judged at ``read_started``, when this read began (the
        promise is about writes acknowledged a window before the read *started*): an
        entry whose computation started less than a window before that is served
        however long the wait.  Judged at each poll instead, a list whose computation
        takes longer than the window was never servable to anyone once it was stored
        under a steady writer; every reader waited for the next computation, which
        ended the same way (issue 9: ``bench/mixed.py`` completed no read of a
        project's logs in 3 s under the batch writer at load average 10-15)."""
        if lease is None and self._take_lease(entry_key):
            return None
        deadline = time.monotonic() + LEASE_MS / 1000
        while time.monotonic() < deadline:
            time.sleep(WAIT_POLL_S)
            try:
                generation, entry, last_write, lease = self._read(entry_key)
            except CacheDown:
                return None
            current = self._current(generation)
            if entry is not None and (
                entry[0] == current or self._may_serve(entry, last_write, read_started)
            ):
                if entry[0] != current:
                    _note_stale(entry[1])
                return entry[2]
            if lease is None and self._take_lease(entry_key):
                return None
        return None

    def _take_lease(self, entry_key: str) -> bool:
        """Whether this reader won the right to refresh ``entry_key`` (for a window)."""
        try:
            won = bool(_guard(_add, _lease_key(entry_key), LEASE_MS))
        except CacheDown:
            return False
        if won:
            self._leased.append(_lease_key(entry_key))
        return won

    def release(self) -> None:
        """Give up the leases this reader took (once it has stored what it computed, or
        its computation failed)."""
        if self._leased:
            leased, self._leased = self._leased, []
            with contextlib.suppress(CacheDown):
                _guard(_delete, leased)

    def _store(self, key: str, stamp: tuple[int, float] | None, value: Any) -> None:
        if stamp is None:
            return  # the cache could not be read: do not write either
        with contextlib.suppress(CacheDown):  # not cached this time; still correct
            _guard(cache.set, _entry_key(self.namespace, key), (*stamp, value, self._took()))
        self.release()

    @contextlib.contextmanager
    def computing(self):
        """Around the computation of a missed value: if it read entries served stale
        (older generations, inside their window), the value is stored as old as the
        oldest of them and never as current (a value built from stale inputs must not
        outlive their window)."""
        inputs: list[float] = []
        token = _stale_inputs.set(inputs)
        try:
            yield
        finally:
            _stale_inputs.reset(token)
        if inputs:
            oldest = min(inputs)
            _note_stale(oldest)
            if self._pending is not None:
                self._pending = (STALE, min(self._pending[1], oldest))

    def get(self, key: str, producer: Callable[[], Any]) -> Any:
        hit, value, self._pending = self._lookup(key)
        if hit:
            return value
        try:
            with self.computing():
                value = producer()
            self._store(key, self._pending, value)
        finally:
            self.release()
        return value

    def peek(
        self, key: str, background: bool = False, settle: Callable[[], bool] | None = None
    ) -> Any:
        """The value under ``key``, or None (missing, stale, or the cache is down).
        After a miss, compute the value inside :meth:`computing` and :meth:`put` it.
        With ``background``, see :meth:`_lookup`: when ``refresh_due`` is set after a
        hit, compute and put the value later (:func:`refresh_later`); ``settle``: see
        :meth:`_lookup`."""
        hit, value, self._pending = self._lookup(key, background, settle)
        return value if hit else None

    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` under ``key`` with the generation and time the last
        :meth:`peek` read (best effort; nothing is stored when it could not read)."""
        self._store(key, self._pending, value)

    def put_many(self, values: dict[str, Any]) -> None:
        """:meth:`put` for several keys (variants of one value), in one round trip."""
        if self._pending is None:
            return
        took = self._took()
        entries = {
            _entry_key(self.namespace, k): (*self._pending, v, took) for k, v in values.items()
        }
        with contextlib.suppress(CacheDown):
            _guard(cache.set_many, entries)
        self.release()


class CachedQuery:
    """A pageable query (``count()`` and slices, see ``pagination.py``) whose count and
    pages are cached in a namespace; every page size and offset has its own key."""

    def __init__(self, namespace: str, key: str, query, epoch: Any = None):
        self.query = query
        self.key = key
        self._reader = Reader(namespace, epoch)

    def count(self) -> int:
        return self._reader.get(f"{self.key}:count", self.query.count)

    def __getitem__(self, window: slice) -> list:
        return self._reader.get(
            f"{self.key}:{window.start}:{window.stop}", lambda: list(self.query[window])
        )

    def __iter__(self):
        return iter(self[0 : self.count()])


# --- declarations: which reads live in a namespace, which writes bump it ---------------


class Namespace:
    """A family of cached reads and the writes that invalidate them, declared once by
    the service module that owns them::

        LOGS = caching.Namespace("logs", scope="project_id", unscoped=True)

        @LOGS.reads
        def list_logs(project_id=None, ...): ...        # cached in LOGS.key(project_id)

        @LOGS.writes
        def create_log(data): ...; LOGS.bump(data["project_id"])

    ``scope`` names the parameter that splits the namespace per value (``logs:<project
    id>``); ``unscoped`` says that reads without a scope are cached too (``logs``), so
    every write bumps that key besides its scoped one.  ``bounded_staleness`` lets its
    reads lag writes of others by up to ``LIST_STALENESS_MS`` (see the module
    docstring); the others are exact.  The response cache of the
    resources (``Blueprint.cached_response``) takes the namespace from the declaration of
    the service function it serves, so resources never choose one.  :func:`table` lists
    every namespace with its reads and writes (the README shows it, and a test keeps the
    two equal); the tests check that each declared write bumps its namespace.

    ``salt(scope_value)`` (optional) returns what else a read of the namespace depends on
    besides writes to it (the retention horizon: it moves with the time and with a
    project's override); the response cache puts it in its keys, as the service reads
    put it in theirs.  ``epoch(scope_value)`` (optional) returns what a read depends on
    that moves with the time (the minute the retention horizon is at): not part of a key
    but stamped on each entry with its generation, so an entry of an older epoch is stale
    like one of an older generation (served within the staleness window, refreshed
    ahead) instead of missing for every reader at once when the epoch moves.
    ``append_history`` keeps the namespace's append history (see :func:`history`), for
    counts that add the rows appended since the last one.
    """

    def __init__(
        self,
        name: str,
        *,
        scope: str | None = None,
        unscoped: bool = True,
        bounded_staleness: bool = False,
        salt: Callable[[Any], Any] | None = None,
        epoch: Callable[[Any], Any] | None = None,
        append_history: bool = False,
    ):
        self.append_history = append_history
        self.salt = salt
        self.epoch = epoch
        self.name = name
        self.scope = scope
        self.unscoped = unscoped
        self.bounded_staleness = bounded_staleness
        self.read_functions: list[Callable] = []
        self.write_functions: list[Callable] = []
        _NAMESPACES[name] = self

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def key(self, scope_value: Any = None) -> str:
        """The namespace key of reads for ``scope_value`` (None: unscoped reads)."""
        if scope_value is None or self.scope is None:
            return self.name
        return f"{self.name}:{scope_value}"

    def reads(self, func: Callable) -> Callable:
        """Declare a read cached in this namespace (returns ``func`` unchanged)."""
        self.read_functions.append(func)
        func.cache_namespace = self
        return func

    def writes(self, func: Callable) -> Callable:
        """Declare a write that bumps this namespace (returns ``func`` unchanged)."""
        self.write_functions.append(func)
        bumps = getattr(func, "bumps_namespaces", ())
        func.bumps_namespaces = (*bumps, self)
        return func

    def bump(self, *scope_values: Any, appended_from: datetime | None = None) -> None:
        """Invalidate the reads of these scopes (and the unscoped ones); see
        :func:`bump` for ``appended_from``."""
        keys = [self.key(value) for value in dict.fromkeys(scope_values) if value is not None]
        if self.scope is None or self.unscoped or not keys:
            keys.append(self.name)
        bump(*dict.fromkeys(keys), appended_from=appended_from)


_NAMESPACES: dict[str, Namespace] = {}


def namespaces() -> list[Namespace]:
    """Every declared namespace, by name (declaration order depends on which module was
    imported first)."""
    return [_NAMESPACES[name] for name in sorted(_NAMESPACES)]


def namespace_of(func: Callable) -> Namespace:
    """The namespace a read was declared in (``@NS.reads``)."""
    try:
        return func.cache_namespace
    except AttributeError:
        raise TypeError(f"{func.__qualname__} is not a declared cached read") from None


def _name(func: Callable) -> str:
    module = func.__module__.removeprefix("polymicro.").removesuffix(".service")
    return f"`{module}.{func.__name__}`"


def table() -> str:
    """A Markdown table: per namespace, its key, how far its reads may lag writes of
    others, its reads and the writes that bump it."""
    lines = [
        "| namespace | key | may lag others' writes by | reads | bumped by |",
        "|---|---|---|---|---|",
    ]
    for ns in namespaces():
        key = ns.name if ns.scope is None else f"{ns.name}:<{ns.scope}>"
        if ns.scope is not None and ns.unscoped:
            key += f", {ns.name}"
        reads = ", ".join(_name(f) for f in ns.read_functions)
        writes = ", ".join(_name(f) for f in ns.write_functions)
        lag = "`LIST_STALENESS_MS`" if ns.bounded_staleness else "0 (exact)"
        lines.append(f"| {ns.name} | `{key}` | {lag} | {reads} | {writes} |")
    return "\n".join(lines)
