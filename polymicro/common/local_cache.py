"""A process-local copy of small, hot cached reads, exact across workers.

Every single ``POST /api/logs`` asks three small questions: whose API key is this, does
the project exist, does the service exist (and whose is it).  Each is a cached read
(:func:`polymicro.common.caching.cached`), and each was one Redis round trip (an
``MGET`` of its namespace's generation and the entry): three of the five round trips of
a POST with the ingest budget on.  The answers almost never change.

:func:`cached` keeps the answer in this process too, stamped with the generation of its
namespace (``catalog``, ``api-keys``) read *before* the answer was looked up.  A request
reads the current generations of every namespace kept here in **one** ``MGET`` (the
first time it needs one; remembered for the rest of the request, dropped by a bump the
request makes), and a local answer is used only when its stamp is that generation.  So:

- **The bound is zero.**  A write anywhere (a revoked API key, a deleted project or
  service, in any worker or instance) bumps the namespace's generation in Redis before
  it answers; every request that *starts* after that reads the new generation and no
  longer uses the old answer.  That is exactly the rule of the Redis cache it stands in
  front of (a request already past its ``MGET`` decides with what it read, as it did
  with the Redis entry).  No clock is involved: nothing here expires by time.
- A value is stamped with the generation read before it was computed (or read from
  Redis), so a write landing in between makes it stale at once, never current.
- Outside a request (CLI, jobs, service-layer tests) the generations are read for each
  call: still one round trip instead of the one it replaces, never stale.
- When the cache is down, nothing is kept or served from here: the read goes to
  ``caching.cached``, which answers from the database.
- Only namespaces without a staleness window (exact ones) may use it; values are plain
  data, handed out as shallow copies (a caller may change its dict); at most
  :data:`MAX_ENTRIES` are kept (all dropped when full: a crude bound, the working set
  of a worker is a few keys, projects and services).

Hand-written because neither flask-caching nor cachelib has a two-level cache whose
first level is validated by a generation number; a TTL-based first level
(``cachetools.TTLCache``) would accept a revoked key for up to its TTL.  Measured
reason: ``bench/post_cost.py`` (README "Cost of one single POST").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import has_request_context

from polymicro.common import caching
from polymicro.extensions import cache

MAX_ENTRIES = 10_000
_GENERATION = "\0generation"  # the request memo's key (namespace, _GENERATION)

_entries: dict[tuple[str, tuple], tuple[Any, Any]] = {}
_namespaces: dict[str, None] = {}  # those kept here, in first-use order
_lock = threading.Lock()


def clear() -> None:
    """Forget every local answer (tests start each app with a clean slate)."""
    with _lock:
        _entries.clear()


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


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _generation(namespace: str) -> Any:
    """The namespace's current generation: this request's, read once with those of
    every other namespace kept here (one MGET); outside a request, read now."""
    if not has_request_context():
        return _read([namespace])[namespace]
    memo = caching._request_memo()
    generation = memo.get((namespace, _GENERATION))
    if generation is None:
        missing = [ns for ns in list(_namespaces) if (ns, _GENERATION) not in memo]
        for ns, value in _read(missing).items():
            memo[(ns, _GENERATION)] = value  # a bump in this request drops it (_forget)
        generation = memo[(namespace, _GENERATION)]
    return generation


def _read(namespaces: list[str]) -> dict[str, Any]:
    keys = [caching._generation_key(ns) for ns in namespaces]
    values = caching._guard(cache.get_many, *keys)
    out = {}
    for ns, value in zip(namespaces, values, strict=True):
        out[ns] = value if value is not None else caching._guard(caching._generation, ns)
    return out
