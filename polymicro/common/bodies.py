"""Large cached response bodies: in Redis once, by their digest, and kept by each worker.

A response-cache entry (common/blueprint.py ``cached_response``) is fetched by every hit's
``MGET``.  With its body inside, the 76 KB CPU metrics of a project crossed from Redis to
the worker on every hit: 75 µs of the worker's CPU for that ``MGET`` against 48 µs for a
small entry, and 59 against 37 µs of Redis's (interleaved loops, hiredis, 2026-11-30).

So a body of :data:`MIN_SIZE` bytes or more (either variant: plain or gzipped) is stored
apart, under ``body:<digest>``, and its entry holds a :class:`Ref` instead.  A digest
names one body for ever, so a copy can never be stale: each worker keeps the bodies it
has met, up to :data:`LOCAL_BYTES` (the oldest dropped first; a hit takes no lock), and
takes a body from Redis only the first time it meets its digest.  Whether an entry is
current is decided by the entry (its generation, epoch and window, as before); the body
is only its content.

A body gone from Redis (its key expires ``CACHE_DEFAULT_TIMEOUT`` after it was stored,
while a re-stamped entry may live on; or evicted) and from this worker makes the hit a
miss: the response is computed again, and storing it puts its bodies back.  Without Redis
(the in-process cache: nothing crosses a socket) bodies stay in their entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from typing import NamedTuple

from polymicro.common import caching
from polymicro.extensions import cache

MIN_SIZE = 4096
LOCAL_BYTES = 32 * 1024 * 1024
_KEY = "body:"


class Ref(NamedTuple):
    """What an entry holds in place of a large body (a tuple: pickled small, and an
    entry's other fields never hold one)."""

    digest: str
    size: int


_local: OrderedDict[str, bytes] = OrderedDict()
_local_bytes = 0
_lock = threading.Lock()


def _remember(digest: str, body: bytes) -> None:
    global _local_bytes
    with _lock:
        if digest in _local:
            _local.move_to_end(digest)
            return
        _local[digest] = body
        _local_bytes += len(body)
        while _local_bytes > LOCAL_BYTES and len(_local) > 1:
            _digest, dropped = _local.popitem(last=False)
            _local_bytes -= len(dropped)


def forget_local() -> None:
    """Drop this worker's copies (tests: another worker, which has none yet)."""
    global _local_bytes
    with _lock:
        _local.clear()
        _local_bytes = 0


def by_ref(entries: dict[str, tuple]) -> dict[str, tuple] | None:
    """``entries`` (key -> (body, encoding, pagination, etag)) with each large body
    replaced by its :class:`Ref`, the bodies stored in Redis (one round trip) and kept
    here.  None when Redis could not take them: the entries must not be stored then,
    or no other worker could serve them."""
    if not caching._is_redis():
        return entries
    out: dict[str, tuple] = {}
    bodies: dict[str, bytes] = {}
    for key, entry in entries.items():
        body = entry[0]
        if isinstance(body, bytes) and len(body) >= MIN_SIZE:
            digest = hashlib.blake2b(body, digest_size=16).hexdigest()
            bodies[_KEY + digest] = body
            _remember(digest, body)
            entry = (Ref(digest, len(body)), *entry[1:])
        out[key] = entry
    if bodies:
        try:
            caching._guard(cache.set_many, bodies)
        except caching.CacheDown:
            return None
    return out


def resolve(entry: tuple) -> tuple | None:
    """``entry`` with its body: as it is, or this worker's copy of the body it refers to,
    or Redis's (kept here from then on); None when neither has it."""
    ref = entry[0]
    if type(ref) is not Ref:
        return entry
    body = _local.get(ref.digest)
    if body is None:
        with contextlib.suppress(caching.CacheDown):
            body = caching._guard(cache.get, _KEY + ref.digest)
        if not isinstance(body, bytes) or len(body) != ref.size:
            return None
        _remember(ref.digest, body)
    return (body, *entry[1:])
