"""Configuration classes.

Every setting can be overridden by an environment variable with the prefix
``POLYMICRO_`` (``POLYMICRO_MONGODB_URI``, ``POLYMICRO_REDIS_URL``, …).  The table in the
README lists them all; keep both in step.  Nothing here is read at import time:
:func:`load_config` is called by ``create_app``.
"""

from __future__ import annotations

import os
from typing import Any

ENV_PREFIX = "POLYMICRO_"


class Config:
    """Defaults for a local run against the embedded SecantusDB."""

    TESTING = False
    # "development" or "production".  Production refuses to start without SECRET_KEY.
    ENV = "development"
    # --- security (issue 4) ----------------------------------------------------------
    # Signs the access and refresh tokens.  Empty in development: one is generated and
    # kept in the instance folder (shared by every worker).
    SECRET_KEY = ""
    AUTH_ENABLED = True
    # Anyone may register (as a viewer) when true; otherwise only an admin creates users.
    ALLOW_REGISTRATION = False
    ACCESS_TOKEN_MINUTES = 15
    # argon2id cost (OWASP's recommended minimum is 19 MiB, t=2; these are higher).
    PASSWORD_HASH_TIME_COST = 3
    PASSWORD_HASH_MEMORY_KIB = 65536
    REFRESH_TOKEN_DAYS = 7
    RATELIMIT_ENABLED = True
    # Per client (user, API key or address).  flask-limiter syntax.
    RATELIMIT_DEFAULT = "1200 per minute"
    RATELIMIT_LOGIN = "10 per minute"
    # Empty: REDIS_URL when set, else in-process memory.
    RATELIMIT_STORAGE_URI = ""
    # Comma-separated origins allowed by CORS; empty: none.  "*" never sends credentials.
    CORS_ORIGINS = ""
    # --- observability (issue 5) -----------------------------------------------------
    LOG_FORMAT = "text"  # or "json": one JSON object per line, with the request id
    METRICS_ENABLED = True
    # --- database -------------------------------------------------------------------
    MONGODB_URI = "mongodb://127.0.0.1:27018/polymicro"
    # How long a request waits for MongoDB before answering 503 (serverSelectionTimeoutMS).
    MONGODB_TIMEOUT_MS = 2000
    # Retryable writes: "auto" (off on SecantusDB, where they make every write slower as
    # data grows; on elsewhere), "true" or "false".  A retryWrites option in the URI wins.
    MONGODB_RETRY_WRITES = "auto"
    # Use an in-process mongomock client instead of MONGODB_URI (unit tests only).
    MONGODB_MOCK = False
    # --- cache ----------------------------------------------------------------------
    # Empty: in-process SimpleCache.  Set a redis:// URL to share the cache between workers.
    REDIS_URL = ""
    CACHE_DEFAULT_TIMEOUT = 60
    CACHE_KEY_PREFIX = "polymicro:"
    # How long (ms) a cached log or CPU-point list may be served after a write by someone
    # else changed it (each list is then recomputed at most about once per window per
    # worker under continuous writes); a caller always sees its own writes.  0: exact.
    LIST_STALENESS_MS = 1000
    # Group commit of single log POSTs: concurrent ones in a worker are written in one
    # insert_many, each answered once its row is durable (see polymicro/common/atomic.py).
    LOG_GROUP_COMMIT = False
    # How long an Idempotency-Key and its answer are kept (IETF draft: 24 hours).
    IDEMPOTENCY_KEY_HOURS = 24
    # --- HTTP -----------------------------------------------------------------------
    # Largest request body accepted (bytes); larger bodies get 413.  A full log batch
    # (1000 × 16 KiB messages) fits.
    MAX_CONTENT_LENGTH = 20 * 1024 * 1024
    # gzip responses of at least this many bytes when the client accepts it (level 1-9).
    COMPRESS_MIN_SIZE = 500
    COMPRESS_LEVEL = 6
    LOG_LEVEL = "INFO"
    # Where the generated development secret and the demo admin's password are kept.
    # Empty: Flask's default, the instance/ folder next to the package.
    INSTANCE_PATH = ""
    # --- OpenAPI (flask-smorest) ----------------------------------------------------
    API_TITLE = "Poly Micro Manager API"
    API_VERSION = "0.1.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "/docs"
    OPENAPI_SWAGGER_UI_URL = "https://cdn.jsdelivr.net/npm/swagger-ui-dist/"
    OPENAPI_REDOC_PATH = "/redoc"
    OPENAPI_REDOC_URL = "https://cdn.jsdelivr.net/npm/redoc/bundles/redoc.standalone.js"


class TestingConfig(Config):
    """Unit tests: mongomock and SimpleCache unless the test run asks for real servers."""

    TESTING = True
    SECRET_KEY = "test-secret-key-that-is-long-enough-for-hs256"  # noqa: S105 - tests only
    RATELIMIT_ENABLED = False  # the rate-limit tests turn it on
    PASSWORD_HASH_TIME_COST = 1  # fast hashing: tests create many users
    PASSWORD_HASH_MEMORY_KIB = 1024
    MONGODB_URI = "mongodb://localhost/polymicro_test"
    MONGODB_MOCK = True
    MONGODB_TIMEOUT_MS = 1000
    CACHE_DEFAULT_TIMEOUT = 300


def _coerce(default: Any, raw: str) -> Any:
    """Convert an environment string to the type of the default it overrides."""
    if isinstance(default, bool):
        value = raw.strip().lower()
        if value in {"1", "true", "yes", "on"}:
            return True
        if value in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if isinstance(default, int):
        return int(raw)
    return raw


def load_config(base: type[Config] | dict | None = None) -> dict[str, Any]:
    """Return the settings for an app: class defaults, then ``POLYMICRO_*`` overrides.

    ``base`` is a config class or a mapping of overrides applied on top of
    :class:`Config` (tests pass a dict); explicit mappings win over the environment.
    """
    cls = base if isinstance(base, type) else Config
    settings = {key: getattr(cls, key) for key in dir(cls) if key.isupper()}
    for key, default in list(settings.items()):
        raw = os.environ.get(ENV_PREFIX + key)
        if raw is None:
            continue
        try:
            settings[key] = _coerce(default, raw)
        except ValueError as exc:
            raise RuntimeError(f"invalid {ENV_PREFIX}{key}: {exc}") from exc
    if isinstance(base, dict):
        settings.update(base)
    return settings
