"""Health checks: the database and the cache, each named when it fails."""

from __future__ import annotations

import logging
import uuid

from polymicro import __version__
from polymicro.extensions import cache, ping_db

log = logging.getLogger(__name__)


def _check_database() -> str:
    try:
        ping_db()
    except Exception as exc:  # any failure is reported as the check's result
        log.warning("health: database check failed: %s", type(exc).__name__)
        return "unavailable"
    return "ok"


def _check_cache() -> str:
    key = f"health:{uuid.uuid4().hex}"
    try:
        ok = cache.set(key, "1", timeout=5) and cache.get(key) == "1"
        cache.delete(key)
    except Exception as exc:  # flask-caching may raise or return False when Redis is down
        log.warning("health: cache check failed: %s", type(exc).__name__)
        ok = False
    return "ok" if ok else "unavailable"


def health() -> dict:
    checks = {"database": _check_database(), "cache": _check_cache()}
    healthy = all(value == "ok" for value in checks.values())
    return {"status": "ok" if healthy else "unavailable", "version": __version__, "checks": checks}
