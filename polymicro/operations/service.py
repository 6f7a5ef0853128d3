"""Health: liveness (the process answers) and readiness (its database and cache answer).

Readiness runs the database ping and the cache set/get side by side, each in a thread of
a small per-process pool, and waits at most ``BUDGET_SECONDS`` for both: a database that
accepts connections but never answers cannot hold a probe longer than that.  The checks
also bound themselves (the ping runs under ``pymongo.timeout``; the Redis client has
0.5 s socket timeouts, see ``extensions.init_cache``), so a thread left behind by a slow
check finishes soon after; at most ``MAX_IN_FLIGHT`` checks run at once per process, and
a check that finds no free slot is reported unavailable at once instead of queueing.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pymongo

from polymicro import __version__
from polymicro.common import retention
from polymicro.extensions import cache, ping_db

log = logging.getLogger(__name__)

OK = "ok"
UNAVAILABLE = "unavailable"

BUDGET_SECONDS = 1.0  # the longest a readiness report takes
DATABASE_TIMEOUT_SECONDS = 0.8  # pymongo.timeout around the ping: selection + round trip
CACHE_PROBE_TTL_SECONDS = 5  # the probe's key expires by itself; no delete round trip
MAX_IN_FLIGHT = 8


class _Pool:
    """The check threads of this process (re-created after a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.executor = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="polymicro-health")
        self.slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool()
        return _pool


def _database_check() -> Callable[[], None]:
    def check() -> None:
        with pymongo.timeout(DATABASE_TIMEOUT_SECONDS):
            ping_db()

    return check


def _cache_check() -> Callable[[], None]:
    backend = cache.cache  # resolved here: it needs the app context the thread lacks

    def check() -> None:
        key, token = f"health:{uuid.uuid4().hex}", uuid.uuid4().hex
        if not backend.set(key, token, timeout=CACHE_PROBE_TTL_SECONDS):
            raise RuntimeError("the cache refused the write")
        if backend.get(key) != token:
            raise RuntimeError("the cache did not return what was written")

    return check


def _run_checks(checks: dict[str, Callable[[], None]], budget: float) -> dict[str, str]:
    """Run the checks concurrently; each is ``ok`` if it returned within ``budget``."""
    deadline = time.monotonic() + budget
    pool = _get_pool()
    results: dict[str, str] = {}
    futures = {}
    for name, check in checks.items():
        if not pool.slots.acquire(blocking=False):
            log.warning("health: %s check not run: %d checks still running", name, MAX_IN_FLIGHT)
            results[name] = UNAVAILABLE
            continue

        def run(check=check, slots=pool.slots) -> None:
            try:
                check()
            finally:
                slots.release()

        # The thread runs in a copy of this context, so its log lines keep the request id.
        futures[name] = pool.executor.submit(contextvars.copy_context().run, run)
    for name, future in futures.items():
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            log.warning("health: %s check did not answer within %.1f s", name, budget)
            results[name] = UNAVAILABLE
        except Exception as exc:  # any failure is the check's result
            detail = str(exc).split("\n", 1)[0][:200]  # pymongo's text lists the topology
            log.warning("health: %s check failed: %s: %s", name, type(exc).__name__, detail)
            results[name] = UNAVAILABLE
        else:
            results[name] = OK
    return {name: results[name] for name in checks}


def liveness() -> dict:
    """The process is up and serving; touches nothing else."""
    return {"status": OK, "version": __version__}


def readiness() -> dict:
    """The database (ping) and the cache (set/get), each named; ``status`` is ``ok`` only
    when both are.  Takes at most ``BUDGET_SECONDS``."""
    checks = _run_checks({"database": _database_check(), "cache": _cache_check()}, BUDGET_SECONDS)
    healthy = all(value == OK for value in checks.values())
    return {"status": OK if healthy else UNAVAILABLE, "version": __version__, "checks": checks}


def health() -> dict:
    """``GET /api/health`` (the contract's name): the readiness report."""
    return readiness()


# --- retention (GET /api/retention) -------------------------------------------------------


def retention_status() -> dict:
    """Per kind of data: the setting, the TTL index, the oldest row, ``behind``."""
    return {
        "kinds": retention.status(),
        "margin_minutes": int(retention.margin().total_seconds() // 60),
    }
