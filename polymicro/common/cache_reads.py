"""The cache's ``MGET`` and a write's bump script, on a Redis connection of the calling
thread's own.

Every cached read (a response-cache hit, a ``cached()`` lookup) is one ``MGET``
(common/caching.py, ``Reader._read``).  Through redis-py's client a call checks a
connection out of the pool and back in (a lock, a ``poll`` of the socket for unread
data, the pool's observability counters, a deprecation-argument wrapper) and runs the
command under its retry wrapper: on the 2-core machine ``client.mget`` of two keys
cost 170-210 µs of CPU, the same command on a connection held by the thread 60-70 µs
(loops of 3,000, 2026-11-30), on a hit that cost 650-900 µs in all (bench/hit_cost.py).

So :func:`get_many` sends the ``MGET`` on a connection this thread keeps for the
client's pool (made by the pool, with its settings: address, database, timeouts), and
unpickles the values as cachelib does.  The answer is the one ``cache.get_many`` gives;
what changes is the path, and only when it is safe to take:

- the cache is cachelib's Redis cache on a redis-py client (else ``cache.get_many``);
- tracing is off (with tracing on, the client's path is taken so that the ``MGET`` gets
  its span from the Redis instrumentation);
- a connection belongs to one pool and one process: another pool (a new app, the tests
  make hundreds) or a fork (the pid changed) gets a new connection; the old one is
  closed only in the process that opened it;
- on a connection error or timeout the connection is closed and the read goes through
  the client (its retry and reconnect, as before); any other error closes it and is
  raised (``caching._guard`` then counts the cache down, as before).

With ``CACHE_MIRROR`` on (the default), the keys are first looked up in the process's
mirror (common/cache_mirror.py): when every one is kept there, no round trip at all;
else the ``MGET`` goes with a ``PTTL`` of each key in the same round trip, and what it
read is kept.

:func:`run_script` does the same for the ``EVALSHA`` of a registered script (every
write's bump, common/caching.py ``_increment``): a single ``POST /api/logs`` sends one,
and through the client it cost as much CPU as the ``MGET`` did.  A ``NOSCRIPT`` answer
(Redis restarted, or ``SCRIPT FLUSH``) leaves the connection clean; the script then
runs through redis-py's ``Script``, which loads it and runs it again.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from polymicro.common import cache_mirror, process
from polymicro.extensions import cache
from polymicro.observability import tracing

_local = threading.local()


def _loads(value: bytes | None) -> Any:
    """cachelib's ``BaseRedisSerializer.loads``, without copying a pickled value."""
    if value is None:
        return None
    if value[:1] == b"!":
        try:
            return pickle.loads(memoryview(value)[1:])  # noqa: S301 - cachelib's own format
        except pickle.PickleError:
            return None
    try:
        return int(value)
    except ValueError:
        return value


def _connection(pool, slot: str = "held"):
    """This thread's connection to ``pool``'s server (opened on first use).  A thread
    keeps one per ``slot``: the cache's (``held``) and the rate limiter's (``limits``,
    another client, whose pool may be another server's)."""
    held = getattr(_local, slot, None)
    pid = process.pid()
    if held is not None:
        held_pool, held_pid, connection = held
        if held_pool is pool and held_pid == pid:
            return connection
        if held_pid == pid:
            connection.disconnect()  # another pool (a new app): this one is not used again
    connection = pool.make_connection()
    setattr(_local, slot, (pool, pid, connection))
    return connection


def _drop(connection, slot: str = "held") -> None:
    setattr(_local, slot, None)
    with contextlib.suppress(Exception):  # closing a broken socket: nothing more to do
        connection.disconnect()


def get_many(*keys: str) -> list[Any]:
    """``cache.get_many(*keys)``: the values (None where missing), in order."""
    backend = cache.cache
    client = getattr(backend, "_read_client", None)
    if type(client) is not Redis or tracing._on or not hasattr(backend, "_get_prefix"):
        return cache.get_many(*keys)
    prefix = backend._get_prefix()
    full = [f"{prefix}{key}" for key in keys]
    pool = client.connection_pool
    mirror = cache_mirror.for_pool(pool)
    if mirror is not None:
        kept, seq = mirror.lookup(full)
        if kept is not None:
            return [_loads(value) for value in kept]
    connection = _connection(pool)
    try:
        if mirror is None:
            connection.send_command("MGET", *full)
            values = connection.read_response()
        else:
            commands = [("MGET", *full), *(("PTTL", key) for key in full)]
            connection.send_packed_command(connection.pack_commands(commands))
            values = connection.read_response()
            ttls = [connection.read_response() for _ in full]
            mirror.keep(full, values, ttls, seq)
    except (RedisConnectionError, RedisTimeoutError, OSError):
        _drop(connection)
        return cache.get_many(*keys)  # the client's own path: its retries, a new connection
    except BaseException:
        _drop(connection)  # a reply may be left unread on it
        raise
    return [_loads(value) for value in values]


def run_script(script, keys: list, args: list, slot: str = "held") -> Any:
    """``script(keys=keys, args=args)`` (a redis-py ``Script``), sent as ``EVALSHA`` on
    this thread's connection of ``slot`` to the script's client when safe (as for
    :func:`get_many`); the raw reply."""
    client = script.registered_client
    if type(client) is not Redis or tracing._on:
        return script(keys=keys, args=args)
    connection = _connection(client.connection_pool, slot)
    try:
        connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return connection.read_response()
    except NoScriptError:
        return script(keys=keys, args=args)  # the connection is clean: an error reply
    except (RedisConnectionError, RedisTimeoutError, OSError):
        _drop(connection, slot)
        return script(keys=keys, args=args)
    except BaseException:
        _drop(connection, slot)
        raise


class ThreadScript:
    """A redis-py ``Script`` that runs through :func:`run_script` on the ``slot``
    connection, called as redis-py's is (``script(keys, args)``).  The rate limiter's
    storage (``limits``' RedisStorage) gets one in place of its sliding-window script
    (polymicro/security/limits.py): the one Redis command of a single POST besides the
    bump."""

    def __init__(self, script, slot: str):
        self.script = script
        self.slot = slot

    def __call__(self, keys=None, args=None, client=None):
        if client is not None:
            return self.script(keys, args, client)
        return run_script(self.script, list(keys or ()), list(args or ()), self.slot)
