"""A process-local copy of small, hot cached reads, with a written-down bound.

Every single ``POST /api/logs`` asks three small questions: whose API key is this, does
the project exist, does the service exist (and whose is it).  Each is a cached read
(:func:`polymicro.common.caching.cached`), and each was one Redis round trip (an
``MGET`` of its namespace's generation and the entry): three of the five round trips of
a POST with the ingest budget on.  The answers almost never change.

:func:`cached` keeps the answer in this process too, stamped with the generation of its
namespace (``catalog``, ``api-keys``) read *before* the answer was looked up, and uses
it only while that is the namespace's generation.  A request takes the generations of
every namespace kept here at once (remembered for the rest of the request, dropped by a
bump the request makes):

- from what this worker read less than ``REFERENCE_RECHECK_MS`` ago (default 500 ms,
  by :data:`polymicro.common.caching.clock`, the injectable wall clock), with no round
  trip at all;
- else in **one** ``MGET`` of all of them (the time of that read is kept for the next
  requests).

**The bound.**  A write anywhere (a revoked API key, a deleted project or service, in
any worker or instance) bumps the namespace's generation in Redis before it answers.

- In the worker that made the write: the next request sees it (a bump in this process
  drops what was read before; a read that was under way during the bump is not kept).
- In every other worker: a request that starts more than ``REFERENCE_RECHECK_MS``
  after the write sees it.  Until then a revoked key may still write, and an entry may
  still be accepted for a project deleted meanwhile (as a request already past its
  check could always do).  ``REFERENCE_RECHECK_MS=0``: exact, one ``MGET`` per request.
- A value is stamped with the generation read before it was computed (or read from
  Redis), so a write landing in between makes it stale at once, never current.
- Outside a request (CLI, jobs, service-layer tests) the generations are read for each
  call: still one round trip instead of the one it replaces, never stale.
- When the cache is down, nothing is kept here: the read goes to ``caching.cached``,
  which answers from the database.

Only namespaces without a staleness window (exact ones) may use it; values are plain
data, handed out as shallow copies (a caller may change its dict); at most
:data:`MAX_ENTRIES` are kept (all dropped when full: a crude bound, the working set of a
worker is a few keys, projects and services).

Hand-written because neither flask-caching nor cachelib has a two-level cache whose
first level follows the generations of the second; a plain TTL cache in front
(``cachetools.TTLCache``) would keep a revoked key for its whole TTL even in the worker
that revoked it.  Measured reason: ``bench/post_cost.py`` (README "Cost of one single
POST").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import current_app, has_request_context

from polymicro.common import caching
from polymicro.extensions import cache

MAX_ENTRIES = 10_000
_GENERATION = "\0generation"  # the request memo's key (namespace, _GENERATION)

_entries: dict[tuple[str, tuple], tuple[Any, Any]] = {}
_namespaces: dict[str, None] = {}  # those kept here, in first-use order
# namespace -> (its generation, caching.clock() when it was read) of this process
_checked: dict[str, tuple[Any, float]] = {}
_bumps = 0  # bumps made by this process: a read overtaken by one is not kept
_lock = threading.Lock()


def clear() -> None:
    """Forget every local answer (tests start each app with a clean slate)."""
    _bumped(None)


def _bumped(namespaces: tuple[str, ...] | None) -> None:
    """A bump made in this process (None: forget everything): stop trusting what was
    read of those namespaces."""
    global _bumps
    if namespaces is not None and not any(ns in _namespaces for ns in namespaces):
        return  # the many bumps of other namespaces (every log write) change nothing here
    with _lock:
        _bumps += 1
        if namespaces is None:
            _checked.clear()
            _entries.clear()
        else:
            for namespace in namespaces:
                _checked.pop(namespace, None)


caching.bump_listeners.append(_bumped)


def cached(namespace: str, parts: tuple, producer: Callable[[], Any]) -> Any:
    """``caching.cached(namespace, caching.make_key(*parts), producer)``, answered from
    this process while the namespace's generation has not moved (see the module
    docstring).  ``parts`` (hashable) are the local key as they are: the Redis key, a
    hash of their JSON, is made on a miss only (it was 1% of a POST's Python time)."""
    if caching.staleness_ms(namespace):
        raise ValueError(f"{namespace!r} has a staleness window: not kept locally")
    if namespace not in _namespaces:
        with _lock:
            _namespaces[namespace] = None
    try:
        generation = _generation(namespace)
    except caching.CacheDown:
        return caching.cached(namespace, caching.make_key(*parts), producer)
    found = _entries.get((namespace, parts))
    if found is not None and found[0] == generation:
        return _copy(found[1])
    value = caching.cached(namespace, caching.make_key(*parts), producer)
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[(namespace, parts)] = (generation, _copy(value))
    return value


def derived(namespace: str, store: dict, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, a value worked out from :func:`cached` reads of ``namespace``,
    remembered in ``store`` under ``key`` for as long as this process would answer those
    reads from what it holds: the same bound as theirs, with none of their per-call work.

    It is reused while this process has made no bump of a namespace kept here and holds
    the same read of ``namespace``'s generation, younger than ``REFERENCE_RECHECK_MS``
    (the reads ``compute`` makes would come back the same, from this process); it is kept
    only when that was so both before and after ``compute`` ran (a bump or a fresh read
    during it leaves nothing kept).  Outside a request, or with ``REFERENCE_RECHECK_MS=0``,
    it is computed every time.

    Measured reason (py-spy ``--gil`` on gunicorn under wrk, 2026-11-30): a cached hit of
    a project's logs spent 51 µs of its 792 µs of Python working out the retention days
    of its key and entry (``common/retention.py`` ``visible_key``), twice through
    :func:`cached`, every request, for an answer that moves once a minute at most."""
    before = _token(namespace)
    if before is not None:
        found = store.get(key)
        if found is not None and found[0] == before:
            return found[1]
    value = compute()
    if before is not None and _token(namespace) == before:
        if len(store) >= MAX_ENTRIES:
            store.clear()
        store[key] = (before, value)
    return value


def _token(namespace: str) -> tuple | None:
    """What this process holds of ``namespace`` now (its bump count and the generation
    read it trusts), or None when a :func:`cached` read of it would not be answered from
    that alone."""
    if not has_request_context():
        return None
    seen = _checked.get(namespace)
    if seen is None:
        return None
    window = current_app.config["REFERENCE_RECHECK_MS"] / 1000.0
    if not 0 <= caching.clock() - seen[1] < window:
        return None
    return (_bumps, seen)


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _generation(namespace: str) -> Any:
    """The namespace's current generation: this request's, taken with those of every
    other namespace kept here from what this worker read less than
    ``REFERENCE_RECHECK_MS`` ago, else read now (one MGET); outside a request, read
    now."""
    if not has_request_context():
        return _read([namespace])[namespace]
    memo = caching._request_memo()
    generation = memo.get((namespace, _GENERATION))
    if generation is not None:
        return generation
    missing = [ns for ns in list(_namespaces) if (ns, _GENERATION) not in memo]
    window = current_app.config["REFERENCE_RECHECK_MS"] / 1000.0
    now = caching.clock()
    found = {}
    if window > 0:
        for ns in missing:
            seen = _checked.get(ns)
            if seen is not None and 0 <= now - seen[1] < window:
                found[ns] = seen[0]
    unread = [ns for ns in missing if ns not in found]
    if unread:
        bumps = _bumps
        read = _read(unread)
        if window > 0:
            with _lock:
                if bumps == _bumps:  # no bump of this process overtook the read
                    for ns, value in read.items():
                        _checked[ns] = (value, now)
        found.update(read)
    for ns, value in found.items():
        memo[(ns, _GENERATION)] = value  # a bump in this request drops it (_forget)
    return memo[(namespace, _GENERATION)]


def _read(namespaces: list[str]) -> dict[str, Any]:
    keys = [caching._generation_key(ns) for ns in namespaces]
    values = caching._guard(cache.get_many, *keys)
    out = {}
    for ns, value in zip(namespaces, values, strict=True):
        out[ns] = value if value is not None else caching._guard(caching._generation, ns)
    return out
