"""Read-through caching for the service layer, invalidated by generations.

Every cached read lives in a *namespace* (``catalog`` for projects and services,
``metrics:<project id>`` for the CPU metrics of one project).  A namespace has a
generation number stored in the cache; every key of the namespace embeds it::

    polymicro:catalog:<generation>:<hash of the query and page>

A write bumps the generation (Redis ``INCR``, atomic across workers), so every entry
written before it becomes unreachable at once: no key listing, no pattern deletes, and
no race can resurrect an old value (a reader that computed a value from the database
before the write stores it under the old generation, which nobody reads any more).
Entries expire after ``CACHE_DEFAULT_TIMEOUT`` seconds, which only bounds memory.
A missing generation starts at a random 48-bit number, so a generation key lost to a
Redis restart or eviction can never bring old entries back.

The cache is an optimisation, never a dependency: when Redis fails, reads go to the
database and writes still succeed.  One warning is logged when it goes away and one
info line when it returns; between the two, the cache is not tried again for
``RETRY_SECONDS`` after each failure (so an outage costs at most one timeout per
``RETRY_SECONDS`` per worker).  A generation bump that failed during the outage is
replayed by that worker before it uses the cache again.  (A bump lost in a network
partition that left Redis's data in place is the one case where another worker could
serve an entry up to ``CACHE_DEFAULT_TIMEOUT`` old; a Redis restart loses the entries
with the generations, so it cannot.)

Cached values are plain data (dicts, lists, ObjectIds, datetimes), never documents.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from polymicro.extensions import cache

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0


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


def _generation(namespace: str) -> int:
    key = _generation_key(namespace)
    value = cache.get(key)
    if value is None:
        cache.add(key, secrets.randbits(48), timeout=0)
        value = cache.get(key)
        if value is None:
            raise RuntimeError("the cache did not keep a generation key")
    return value


def _increment(namespace: str) -> None:
    key = _generation_key(namespace)
    if cache.get(key) is None:
        cache.add(key, secrets.randbits(48), timeout=0)
    if _is_redis():
        cache.cache.inc(key)  # INCR: atomic across every worker sharing this Redis
    else:
        with _bump_lock:  # SimpleCache lives in this process: a lock makes it atomic
            cache.set(key, (cache.get(key) or 0) + 1, timeout=0)


def _replay_pending() -> None:
    while _breaker.pending:
        namespace = next(iter(_breaker.pending))
        _increment(namespace)
        _breaker.pending.discard(namespace)


def _is_redis() -> bool:
    return type(cache.cache).__name__.startswith("Redis")


def bump(*namespaces: str) -> None:
    """Invalidate every cached read of these namespaces (call after the write)."""
    for namespace in namespaces:
        try:
            _guard(_increment, namespace)
        except CacheDown:
            _breaker.pending.add(namespace)


def make_key(*parts: Any, **params: Any) -> str:
    """A short key that differs whenever any part or parameter differs."""
    text = json.dumps([parts, params], sort_keys=True, default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:24]


def cached(namespace: str, key: str, producer: Callable[[], Any]) -> Any:
    """The value under ``key`` in ``namespace``, computed by ``producer`` when missing."""
    return Reader(namespace).get(key, producer)


class Reader:
    """Reads of one request in one namespace: the generation is looked up once, before
    anything is computed, and a value is stored under that generation only.  A write
    that lands meanwhile bumps the generation, so the value, possibly computed from
    data older than that write, is never read again."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._prefix: str | None = None
        self._generation: int | None = None

    def _key(self, key: str) -> str:
        if self._prefix is None:
            self._prefix = f"{self.namespace}:{_guard(_generation, self.namespace)}:"
        return self._prefix + key

    def get(self, key: str, producer: Callable[[], Any]) -> Any:
        try:
            full_key = self._key(key)
            hit = _guard(cache.get, full_key)
        except CacheDown:
            return producer()
        if hit is not None:
            return hit
        value = producer()
        with contextlib.suppress(CacheDown):  # not cached this time; still correct
            _guard(cache.set, full_key, value)
        return value

    def peek(self, key: str) -> Any:
        """The value under ``key``, or None (missing, stale, or the cache is down).

        One round trip: the entry is stored *with* the generation it was computed under
        (not under a key that embeds it), and ``MGET`` reads the namespace's current
        generation and the entry together, atomically; an entry of any other generation
        is a miss.  The hottest reads (cached responses) use this path.
        """
        entry_key = f"{self.namespace}:entry:{key}"
        try:
            generation, entry = _guard(cache.get_many, _generation_key(self.namespace), entry_key)
            if generation is None:
                generation = _guard(_generation, self.namespace)
        except CacheDown:
            return None
        self._generation = generation
        if entry is not None and entry[0] == generation:
            return entry[1]
        return None

    def put(self, key: str, value: Any) -> None:
        """Keep ``value`` under ``key`` with the generation ``peek`` read (best effort;
        nothing is stored when ``peek`` could not read one)."""
        if self._generation is None:
            return
        entry_key = f"{self.namespace}:entry:{key}"
        with contextlib.suppress(CacheDown):
            _guard(cache.set, entry_key, (self._generation, value))


class CachedQuery:
    """A pageable query (``count()`` and slices, see ``pagination.py``) whose count and
    pages are cached in a namespace; every page size and offset has its own key."""

    def __init__(self, namespace: str, key: str, query):
        self.query = query
        self.key = key
        self._reader = Reader(namespace)

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
    every write bumps that key besides its scoped one.  The response cache of the
    resources (``Blueprint.cached_response``) takes the namespace from the declaration of
    the service function it serves, so resources never choose one.  :func:`table` lists
    every namespace with its reads and writes (the README shows it, and a test keeps the
    two equal); the tests check that each declared write bumps its namespace.
    """

    def __init__(self, name: str, *, scope: str | None = None, unscoped: bool = True):
        self.name = name
        self.scope = scope
        self.unscoped = unscoped
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

    def bump(self, *scope_values: Any) -> None:
        """Invalidate the reads of these scopes (and the unscoped ones)."""
        keys = [self.key(value) for value in dict.fromkeys(scope_values) if value is not None]
        if self.scope is None or self.unscoped or not keys:
            keys.append(self.name)
        bump(*dict.fromkeys(keys))


_NAMESPACES: dict[str, Namespace] = {}


def namespaces() -> list[Namespace]:
    """Every declared namespace, in declaration order."""
    return list(_NAMESPACES.values())


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
    """A Markdown table: per namespace, its key, its reads and the writes that bump it."""
    lines = ["| namespace | key | reads | bumped by |", "|---|---|---|---|"]
    for ns in namespaces():
        key = ns.name if ns.scope is None else f"{ns.name}:<{ns.scope}>"
        if ns.scope is not None and ns.unscoped:
            key += f", {ns.name}"
        reads = ", ".join(_name(f) for f in ns.read_functions)
        writes = ", ".join(_name(f) for f in ns.write_functions)
        lines.append(f"| {ns.name} | `{key}` | {reads} | {writes} |")
    return "\n".join(lines)
