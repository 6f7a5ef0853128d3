"""A worker's copy of the cache keys it read, kept exact by Redis's own invalidations.

Every cached hit was one ``MGET`` round trip to Redis (common/cache_reads.py): the
namespace's generation, the entry, and for a list with a staleness window the caller's
last write and the refresh lease.  Measured on a cached ``GET /api/logs/project/{id}``
under gunicorn (py-spy ``--gil`` and strace, 2026-11-30): about 640 µs per request
outside Python against 254 µs for a bare Flask answer, most of it that round trip (its
system calls, Redis's CPU, and the GIL handed between threads while waiting), and 71 µs
of Python in the ``MGET`` itself.  The values almost never change between two reads.

So each worker process keeps the raw values it read (missing keys too), and Redis tells
it when one changes: server-assisted client-side caching (Redis 6+, ``CLIENT TRACKING``
in broadcast mode for the cache's key prefix, the invalidations redirected to one
connection per process subscribed to ``__redis__:invalidate``).  Before a read uses
anything kept, the process drains that connection without waiting (one non-blocking
``recv``; hiredis parses what came) and drops every key named in it.  A read whose keys
are all kept, unexpired and not invalidated is answered with no round trip; otherwise it
is one pipelined ``MGET`` plus a ``PTTL`` per key, and what it read is kept.

**What a read sees (the promise).**  The value Redis holds, as of the last invalidation
the process has received:

- Redis queues a broadcast invalidation before it sends the reply to the write that
  caused it (``beforeSleep``: invalidations, then the clients' pending replies, in the
  same pass), so once anyone has the write's acknowledgement the invalidation is already
  on its way to every worker.  On one host (loopback) it is in the worker's socket by
  then, and a read that starts after a write was acknowledged (to anyone: this process,
  another worker, an HTTP client) sees the write.  Across a network, only a packet lost
  and retransmitted on the invalidation connection alone could delay it.
- A key kept with a time to live is dropped locally when its ``PTTL`` runs out (Redis
  would answer ``nil`` from then on, even before its expiry sweep deletes it); nothing is
  kept longer than ``MAX_AGE_S`` whatever its TTL, a safety net, and a process that has
  not drained for that long finds everything it kept too old.
- A read that an invalidation overtook keeps nothing of the keys it names: what arrived
  between just before the read was sent and just after its answer is looked up in the
  last ``RECENT`` messages (more than that, or a flush among them: the read keeps
  nothing; under a storm of writes the mirror simply keeps less and reads go to Redis).
- ``FLUSHDB``/``FLUSHALL`` (an empty invalidation) drops everything kept.  A broken
  invalidation connection (Redis restarted, or it cut a subscriber whose backlog passed
  ``client-output-buffer-limit pubsub``) drops everything kept; a new one is opened by
  the next read, after a failed attempt at most every ``RETRY_SECONDS``, and until then
  every read goes to Redis.
- A Redis without client tracking (before 6.0, or a server that answers the command with
  an error) turns the mirror off for that pool: every read is a round trip, as before.

Invalidations are by key name in every database of the server (Redis tracks names, not
databases), so a write of the same key in another database only costs one more read.

``CACHE_MIRROR=false`` turns it off (every read one round trip, as before).  Only the
reads of :func:`polymicro.common.cache_reads.get_many` use it (every cached response and
every ``caching.cached`` read); writes go to Redis as before.  A process opens its mirror
in its first request that reads the cache: the background worker and the CLI, which
would drain their invalidations only now and then (Redis would hold every cache write
for them meanwhile), read through as before.

Hand-written because redis-py's own client-side cache (``cache_config``, RESP3) keeps
keys per connection and reads a connection's invalidations only when that connection
sends a command: a key read on one thread's connection would stay stale on the others.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from collections import deque
from typing import Any

import hiredis
from flask import has_request_context

from polymicro.common import process

log = logging.getLogger(__name__)

MAX_AGE_S = 5.0
RETRY_SECONDS = 5.0
MAX_KEYS = 20_000  # kept per process; past it, expired ones go, then (if need be) all
RECENT = 1_024  # invalidation messages remembered for the reads they overtake
_CHANNEL = b"__redis__:invalidate"

# Seconds, for the keys' local expiry (tests replace it to move time without sleeping).
monotonic = time.monotonic

# pool -> the key prefix to mirror (an app's cache, when CACHE_MIRROR is on)
_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_current: Mirror | None = None  # the process's mirror (of one pool at a time)
_retry_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pool -> next attempt
_lock = threading.Lock()


def enable(pool, prefix: str) -> None:
    """Mirror the reads of ``pool``'s keys under ``prefix`` (at app set-up)."""
    _pools[pool] = prefix


def for_pool(pool) -> Mirror | None:
    """This process's mirror of ``pool``, opened on first use; None when the pool is not
    mirrored, or the mirror cannot be used now (its connection broke, or Redis has no
    client tracking)."""
    global _current
    if _serves(_current, pool):
        return _current
    prefix = _pools.get(pool)
    if prefix is None or not has_request_context():
        return None  # opened by a request: the background worker and the CLI read through
    with _lock:
        mirror = _current
        if _serves(mirror, pool):
            return mirror
        now = monotonic()
        if now < _retry_at.get(pool, 0.0):
            return None
        if mirror is not None and mirror.pid == process.pid():
            mirror.close()  # another pool (a new app), or a broken connection
        try:
            _current = Mirror(pool, prefix)
        except NotSupported as exc:
            log.info("cache mirror off for this Redis: %s", exc)
            _retry_at[pool] = float("inf")
            _current = None
        except Exception as exc:  # Redis away: read through, try again later
            log.debug("cache mirror not opened: %r", exc)
            _retry_at[pool] = now + RETRY_SECONDS
            _current = None
        return _current


def _serves(mirror: Mirror | None, pool) -> bool:
    return (
        mirror is not None and mirror.pool is pool and mirror.alive and mirror.pid == process.pid()
    )


class NotSupported(Exception):
    """The server refused client tracking."""


class Mirror:
    """One process's copy of the keys it read of one pool, and the connection that
    receives their invalidations."""

    def __init__(self, pool, prefix: str):
        self.pool = pool
        self.pid = process.pid()
        self.alive = True
        # full key -> (raw value or None, monotonic time it must be read again)
        self.values: dict[str, tuple[bytes | None, float]] = {}
        self.seq = 0  # invalidation messages received
        # the keys of the last RECENT messages (None: everything), what a read overtaken
        # by one of them must not keep
        self.recent: deque[frozenset | None] = deque(maxlen=RECENT)
        self.lock = threading.Lock()
        connection = pool.make_connection()
        connection.connect()  # its AUTH and SELECT, by redis-py
        self._connection = connection
        sock = connection._sock
        reader = hiredis.Reader()
        try:
            ident = _call(sock, reader, connection, "CLIENT", "ID")
            if not isinstance(ident, int):
                raise NotSupported(f"CLIENT ID answered {ident!r}")
            reply = _call(
                sock,
                reader,
                connection,
                *("CLIENT", "TRACKING", "ON", "REDIRECT", ident, "BCAST", "PREFIX", prefix),
            )
            if isinstance(reply, Exception):
                raise NotSupported(str(reply))
            reply = _call(sock, reader, connection, "SUBSCRIBE", _CHANNEL)
            if not isinstance(reply, list) or reply[:1] != [b"subscribe"]:
                raise NotSupported(f"unexpected answer to SUBSCRIBE: {reply!r}")
        except BaseException:
            with contextlib.suppress(Exception):
                connection.disconnect()
            raise
        sock.settimeout(0)  # from now on only drained, never waited for
        self._sock = sock
        self._reader = reader

    def close(self) -> None:
        self.alive = False
        self.values = {}
        with contextlib.suppress(Exception):
            self._connection.disconnect()

    def _broken(self) -> None:
        self.close()
        _retry_at[self.pool] = 0.0  # open a new one on the next read

    def drain(self) -> bool:
        """Apply every invalidation received so far (caller holds ``lock``); False when
        the connection is gone (everything kept is dropped)."""
        sock, reader = self._sock, self._reader
        while True:
            try:
                data = sock.recv(262_144)
            except BlockingIOError:
                break
            except OSError:
                self._broken()
                return False
            if not data:
                self._broken()
                return False
            reader.feed(data)
            while (message := reader.gets()) is not False:
                self._apply(message)
            if len(data) < 262_144:
                break
        return True

    def _apply(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
            return  # a subscription notice
        self.seq += 1
        if message[2] is None:  # FLUSHDB / FLUSHALL
            self.values = {}
            self.recent.append(None)
            return
        keys = frozenset(key.decode("utf-8", "surrogateescape") for key in message[2])
        self.recent.append(keys)
        values = self.values
        for key in keys:
            values.pop(key, None)

    def lookup(self, keys: list[str]) -> tuple[list | None, int]:
        """(the raw values of ``keys`` when every one is kept and current, else None;
        the invalidation count to hand to :meth:`keep` after reading them from Redis)."""
        with self.lock:
            if not self.drain():
                return None, -1
            now = monotonic()
            values = self.values
            found = []
            for key in keys:
                kept = values.get(key)
                if kept is None or kept[1] <= now:
                    return None, self.seq
                found.append(kept[0])
            return found, self.seq

    def keep(self, keys: list[str], values: list, ttls: list, seq: int) -> None:
        """Keep what a read of ``keys`` sent after :meth:`lookup` returned ``seq``
        found (with each key's ``PTTL``): every key but those an invalidation received
        meanwhile names (the write may have come after the read)."""
        if seq < 0:
            return
        with self.lock:
            if not self.alive or not self.drain():
                return
            overtaken: set[str] = set()
            arrived = self.seq - seq
            if arrived:
                if arrived > len(self.recent):
                    return  # too many to tell which: keep nothing
                for message in list(self.recent)[-arrived:]:
                    if message is None:
                        return
                    overtaken |= message
            if len(self.values) >= MAX_KEYS:
                self._trim()
            now = monotonic()
            for key, value, ttl in zip(keys, values, ttls, strict=True):
                if key in overtaken:
                    continue
                age = MAX_AGE_S if not isinstance(ttl, int) or ttl < 0 else ttl / 1000.0
                self.values[key] = (value, now + min(age, MAX_AGE_S))

    def _trim(self) -> None:
        now = monotonic()
        self.values = {k: v for k, v in self.values.items() if v[1] > now}
        if len(self.values) >= MAX_KEYS:
            self.values = {}


def _call(sock: socket.socket, reader, connection, *args) -> Any:
    """Send one command on the raw socket and wait for its reply (setting up only)."""
    sock.sendall(b"".join(connection.pack_command(*args)))
    while (reply := reader.gets()) is False:
        data = sock.recv(65_536)
        if not data:
            raise ConnectionError("Redis closed the connection")
        reader.feed(data)
    return reply
