"""Rate limits (flask-limiter on the ``limits`` library).

- **Per request** (``RATELIMIT_DEFAULT``): the dashboard API, counted per client — the
  user, the API key, or the address when the credentials are missing or invalid (a
  made-up token per request must not buy a fresh budget each time).
- **Login** (``RATELIMIT_LOGIN``): per client address, whatever the username.
- **Ingest** (``INGEST_RATE_PER_SECOND``, ``INGEST_BURST``): what a project API key
  writes (log entries, CPU points) is charged *per entry* to its project by
  :func:`charge_ingest`, Loki-style: a sustained rate with a burst.  One shipper may
  send thousands of entries a second in a few requests, or one entry per request;
  either way the entries are what costs.  So a key's requests to the endpoints that
  take keys are exempt from the per-request budget (a flask-limiter
  ``request_filter``); a key anywhere else (a 403) still counts per request,
  and so does an invalid key (by address).

A route's counters are shared by its two paths (``/api/v1/x`` and ``/api/x``, one view:
common/versioning.py): flask-limiter counts per endpoint, and the limiter is told the
``/api/v1`` twin's endpoint for both (``request_identifier``).  The health probes and
``/metrics`` are never limited (:func:`never_limited`, flask-limiter's public
``request_filter``): an orchestrator's probe must not be throttled, and it is cheaper.
Measured with ``bench/hooks.py --against`` (GET /api/health/live, medians of one
interleaved run, 2026-11-29): the limiter cost +232 µs per probe, +56 µs exempt.  The
rest is flask-limiter's own hooks, which run even for an exempt request.

The counters live in ``RATELIMIT_STORAGE_URI``, else ``REDIS_URL``, else process
memory; with Redis every worker and every instance shares them.  A Redis outage never
turns into a 500: flask-limiter counts in memory meanwhile, and so does the ingest
budget (see :func:`charge_ingest`).  ``RATELIMIT_ENABLED=false`` switches all three off.
"""

from __future__ import annotations

import logging
import math
import time

from bson import ObjectId
from flask import Flask, current_app, jsonify, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from redis.commands.core import Script

from polymicro.common import cache_reads
from polymicro.common.versioning import V1_PREFIX, canonical_endpoint
from polymicro.errors import DomainError, error_body
from polymicro.security.identity import verified_caller
from polymicro.security.policy import endpoint_rule

log = logging.getLogger(__name__)

# After a failure of the shared storage, the ingest budget counts in process memory for
# this long before trying the shared storage again (each try may wait for the socket
# timeout, 0.5 s: not on every request while Redis is down).
STORAGE_RETRY_SECONDS = 30

# Paths no limit applies to: the probes (/api/health, /api/health/live, /api/health/ready
# and their /api/v1 twins) and the Prometheus scrape.
UNLIMITED_PREFIXES = ("/api/health", V1_PREFIX + "/health")
UNLIMITED_PATHS = frozenset({"/metrics"})

limiter = Limiter(
    key_func=lambda: client_key(),
    headers_enabled=True,
    default_limits=[lambda: default_limit()],
    # Both paths of a route count on the /api/v1 twin's endpoint.
    request_identifier=lambda: canonical_endpoint(request.endpoint or ""),
)


@limiter.request_filter
def never_limited() -> bool:
    """The probes and /metrics: no limit, no counter, no rate-limit headers."""
    path = request.path
    return path in UNLIMITED_PATHS or path.startswith(UNLIMITED_PREFIXES)


@limiter.request_filter
def charged_per_entry_filter() -> bool:
    """An API key writing through an endpoint that takes keys: charged per entry
    (:func:`charge_ingest`), so no per-request counter and no rate-limit headers.

    A request filter, not ``default_limits_exempt_when`` (as before): flask-limiter then
    returns at once instead of building and evaluating the default limit to find it
    exempt (bench/post_cost.py's py-spy: the limiter was 8% of a single POST's Python
    time).  The one limit besides the default, the login's, is on an endpoint that
    takes no keys."""
    return charged_per_entry()


def _sliding_window_on_thread_connection(storage) -> None:
    """Send the Redis storage's sliding-window script (each ingest charge, each limited
    request) on the thread's own connection (common/cache_reads.py): through redis-py's
    client, a pool checkout per call cost as much CPU as the command.  Any other
    storage (memory, or a limits version without this attribute) is left as it is."""
    script = getattr(storage, "lua_acquire_sliding_window", None)
    if isinstance(script, Script):
        storage.lua_acquire_sliding_window = cache_reads.ThreadScript(script, "limits")


def init_limits(app: Flask) -> None:
    storage = app.config["RATELIMIT_STORAGE_URI"] or app.config["REDIS_URL"] or "memory://"
    app.config.update(
        RATELIMIT_STORAGE_URI=storage,
        RATELIMIT_SWALLOW_ERRORS=True,  # a Redis outage never turns into a 500
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        if storage.startswith("redis")
        else {},
        RATELIMIT_KEY_PREFIX=app.config["CACHE_KEY_PREFIX"] + "limits",
    )
    limiter.init_app(app)
    if app.config["RATELIMIT_ENABLED"]:  # else flask-limiter made no storage
        _sliding_window_on_thread_connection(limiter.storage)
    app.extensions["polymicro-ingest-budget"] = {
        "memory": MemoryStorage(),
        "shared_down_until": 0.0,
    }

    @app.errorhandler(IngestRateLimited)
    def _ingest_limited(exc: IngestRateLimited):
        response = jsonify(error_body(429, exc.message))
        response.status_code = 429
        response.headers["Retry-After"] = str(exc.retry_after)
        return response


def client_key() -> str:
    """Whom a rate limit counts: the user or API key when the request carries a valid
    credential (each has its own budget, also behind a shared NAT), else the client
    address.  The credential is verified once for the request (identity.caller)."""
    principal = verified_caller()
    if principal is None:
        return "addr:" + (get_remote_address() or "unknown")
    if principal.kind == "key":
        return f"key:{principal.key_id}"
    return f"user:{principal.user_id}"


def default_limit() -> str:
    """Read per request: the limiter is module-level, shared by every app of a process,
    and would otherwise keep the RATELIMIT_DEFAULT of the first app for all of them."""
    return current_app.config["RATELIMIT_DEFAULT"]


def login_limit() -> str:
    return current_app.config["RATELIMIT_LOGIN"]


def login_key() -> str:
    """Login attempts are counted per client address, whatever the username."""
    return "login:" + (get_remote_address() or "unknown")


# --- the ingest budget -------------------------------------------------------------------


class IngestRateLimited(DomainError):
    """A project's ingest budget is spent: 429 with ``Retry-After`` (seconds)."""

    code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def charged_per_entry() -> bool:
    """Whether this request is a verified API key writing through an endpoint that takes
    keys: charged per entry by :func:`charge_ingest`, not per request."""
    if not current_app.config["AUTH_ENABLED"]:
        return False  # every caller is the anonymous admin: nothing is charged per entry
    rule = endpoint_rule()
    if not rule or not rule["keys"]:
        return False
    principal = verified_caller()
    return principal is not None and principal.kind == "key"


def ingest_budget(rate: int, burst: int) -> RateLimitItemPerSecond:
    """``rate`` entries per second with bursts of ``burst``, as one sliding window.

    ``limits`` has no token bucket; its sliding-window counter of ``burst`` entries per
    ``burst / rate`` seconds behaves like one: after a quiet spell a project may send
    ``burst`` entries at once, and as the previous window's count decays linearly the
    budget comes back at ``rate`` entries per second.  The window is whole seconds
    (⌈burst / rate⌉), and the amount ``rate`` × window, so the sustained rate is exact
    and the burst at least as configured (a burst below the rate is one second's worth).
    """
    window = max(1, math.ceil(burst / rate))
    return RateLimitItemPerSecond(rate * window, window)


def charge_ingest(project_id: ObjectId | None, entries: int) -> None:
    """Charge ``entries`` written by an API key to its project's ingest budget, or raise
    :class:`IngestRateLimited` (429 + ``Retry-After``) and charge nothing: call it after
    validation and before storing, so a refused request stores nothing.

    ``project_id=None`` (a user's write, not limited to a project: the callers pass
    their ``scope``) and ``entries <= 0`` cost nothing.  The budget is shared by every
    worker and instance through the limiter's storage (Redis when configured).  When
    that storage fails, the budget is counted in this process's memory for
    ``STORAGE_RETRY_SECONDS`` and the failure logged: ingest never fails for it.
    """
    config = current_app.config
    rate = config["INGEST_RATE_PER_SECOND"]
    if project_id is None or entries <= 0 or rate <= 0 or not config["RATELIMIT_ENABLED"]:
        return
    item = ingest_budget(rate, config["INGEST_BURST"])
    ids = (config["RATELIMIT_KEY_PREFIX"], "ingest", str(project_id))
    state = current_app.extensions["polymicro-ingest-budget"]
    remaining = None
    if time.monotonic() >= state["shared_down_until"]:
        try:
            remaining = _charge(limiter.storage, item, ids, entries)
        except Exception as exc:  # Redis down or timing out: count locally for a while
            log.warning("ingest budget: rate-limit storage failed (%s); counting in memory", exc)
            state["shared_down_until"] = time.monotonic() + STORAGE_RETRY_SECONDS
        else:
            if remaining is None:
                return
    if remaining is None:
        remaining = _charge(state["memory"], item, ids, entries)
        if remaining is None:
            return
    raise _over_budget(item, rate, entries, remaining)


def _charge(storage, item, ids, entries: int) -> int | None:
    """None when charged; else the entries the budget has left (nothing was charged)."""
    strategy = SlidingWindowCounterRateLimiter(storage)
    if strategy.hit(item, *ids, cost=entries):
        return None
    return strategy.get_window_stats(item, *ids).remaining


def _over_budget(item, rate: int, entries: int, remaining: int) -> IngestRateLimited:
    window = item.get_expiry()
    if entries > item.amount:
        return IngestRateLimited(
            f"{entries} entries in one request exceed this project's ingest burst of "
            f"{item.amount}; send smaller batches.",
            retry_after=window,
        )
    wait = min(window, max(1, math.ceil((entries - remaining) / rate)))
    return IngestRateLimited(
        f"This project's ingest budget ({rate} entries per second, bursts of "
        f"{item.amount}) is spent; retry in {wait} s.",
        retry_after=wait,
    )
