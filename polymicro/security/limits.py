"""Rate limits (flask-limiter on the ``limits`` library).

- **Per request** (``RATELIMIT_DEFAULT``): every endpoint, counted per client — the
  user, the API key, or the address when the credentials are missing or invalid (a
  made-up token per request must not buy a fresh budget each time).
- **Login** (``RATELIMIT_LOGIN``): per client address, whatever the username.

The counters live in ``RATELIMIT_STORAGE_URI``, else ``REDIS_URL``, else process
memory; with Redis every worker and every instance shares them.  A Redis outage never
turns into a 500: flask-limiter counts in memory meanwhile.
"""

from __future__ import annotations

from flask import Flask, current_app
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from polymicro.security.identity import verified_caller

limiter = Limiter(
    key_func=lambda: client_key(),
    headers_enabled=True,
    default_limits=[lambda: default_limit()],
)


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
