"""An app with the rate limits on, for tests that count requests (the test config has
them off).  Used by test_versioning.py, test_proxy.py and test_request_hooks.py."""

from __future__ import annotations

from polymicro import create_app
from polymicro.common import caching
from polymicro.extensions import cache
from polymicro.security import limiter
from tests.conftest import _empty_database, make_config


def limited_app(mongodb_uri, redis_url, **settings):
    """``create_app`` with ``RATELIMIT_ENABLED`` and ``settings``, on a clean database,
    cache and rate-limit storage (one Limiter serves every app of the process: each
    starts on a live, empty storage)."""
    app = create_app(make_config(mongodb_uri, redis_url, RATELIMIT_ENABLED=True, **settings))
    caching.reset_state()
    limiter._storage_dead = False  # an earlier test may have left the fallback on
    with app.app_context():
        cache.clear()
        if mongodb_uri:
            _empty_database()
        if limiter.storage.check():
            limiter.reset()
    return app
