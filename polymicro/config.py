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
    # What a project API key writes (log entries, CPU points) is charged per entry to its
    # project: this many entries per second, with bursts of INGEST_BURST (Loki-style;
    # shared through the rate-limit storage).  0: no ingest budget.
    INGEST_RATE_PER_SECOND = 5000
    INGEST_BURST = 20000
    # Comma-separated origins allowed by CORS; empty: none.  "*" never sends credentials.
    CORS_ORIGINS = ""
    # --- observability (issue 5) -----------------------------------------------------
    LOG_FORMAT = "text"  # or "json": one JSON object per line, with the request id
    METRICS_ENABLED = True
    # --- ingest: OTLP/HTTP and Loki push (issue 10) ------------------------------------
    # A service name not yet in the key's project is registered (marked discovered);
    # false: its records are rejected one by one.
    INGEST_AUTO_REGISTER = True
    # Loki stream labels that name the service, the first present wins.
    INGEST_LOKI_SERVICE_LABELS = "service_name,service,app,job"
    # Largest body after decompression (bytes); larger: 413, found without inflating it all.
    INGEST_MAX_BODY_BYTES = 20 * 1024 * 1024
    # Most log records or data points in one request; more: 413 (send smaller batches).
    INGEST_MAX_RECORDS = 20_000
    # Accepted timestamps: at most this old and this far ahead (Loki's defaults); records
    # outside are rejected one by one.
    INGEST_MAX_AGE_HOURS = 168
    INGEST_MAX_FUTURE_MINUTES = 10
    # --- retention (issue 14) ---------------------------------------------------------
    # Days each kind is kept: a TTL index on its time field (changed at start-up with
    # collMod), and reads hide older rows at once.  0 keeps it forever (drops the TTL
    # index).  A project may shorten logs and points (`retention` on the project).
    RETENTION_LOGS_DAYS = 30
    RETENTION_POINTS_DAYS = 30  # raw points; the rollups keep their own, longer
    # Days an event is kept; `flask events export --until …` saves them first.
    RETENTION_EVENTS_DAYS = 90
    # The worker's sweep (per-project overrides; the backstop where a TTL index is
    # missing): how often, rows per delete, and delete batches per project and kind per run.
    RETENTION_SWEEP_SECONDS = 300
    RETENTION_SWEEP_BATCH = 1000
    RETENTION_SWEEP_MAX_BATCHES = 100
    # TTL indexes (true) or the sweep alone (false) delete past the global horizon; auto:
    # false on SecantusDB, whose TTL monitor reads every row of each TTL collection each
    # minute (polymicro/common/retention.py says why), true elsewhere.
    RETENTION_TTL_INDEXES = "auto"
    # /api/retention and /metrics say `behind` when rows older than the horizon plus this
    # are still stored (the TTL monitor runs every 60 s, the sweep every few minutes).
    RETENTION_BEHIND_MARGIN_MINUTES = 30
    # --- events and live streams (issue 11) ------------------------------------------
    # Days CPU rollups are kept (a TTL index on the bucket's `time`); 0 keeps them forever.
    RETENTION_ROLLUPS_5M_DAYS = 90
    RETENTION_ROLLUPS_1H_DAYS = 730
    # How often the worker recomputes the rollups of hours that received points.
    ROLLUPS_CHECK_SECONDS = 10
    # A missing `seq` younger than this is a writer still committing: readers stop
    # before it.  Older, it is declared a hole (an aborted writer) and skipped.
    EVENTS_SETTLE_SECONDS = 5
    # false: this process answers the stream endpoints with 503 (a separate stream
    # server serves them; see the README).
    STREAMS_ENABLED = True
    # Open streams one process holds at most; past it a stream request gets 503 +
    # Retry-After.  A stream holds a gunicorn thread for its life, so keep it below the
    # threads of a worker (POLYMICRO_GUNICORN_THREADS, 4 by default): with 8 on 4
    # threads, the fifth request waited for a thread (measured).  The stream server runs
    # with many threads and a high cap (see the README).
    STREAMS_MAX = 2
    # Life of one stream; the client reconnects (EventSource does so by itself) and
    # resumes from Last-Event-ID.
    STREAM_MAX_SECONDS = 300
    STREAM_KEEPALIVE_SECONDS = 15  # a comment line at least this often
    STREAM_POLL_MS = 1000  # how often a stream asks the database for news
    STREAM_RETRY_MS = 3000  # the `retry:` a stream sends: reconnect delay of a client
    # The live log tail re-reads this many seconds behind its newest entry, so an entry
    # committed late with an older id (a batch, another worker) is still sent.
    LOG_STREAM_WINDOW_SECONDS = 3
    # --- liveness: heartbeats (issue 12) ---------------------------------------------
    # A service that sends heartbeats promises one at least every TTL seconds (its own
    # `heartbeat_ttl` wins); its deadline is the last heartbeat + TTL + grace.  The grace
    # defaults to this setting but never less than the service's TTL (one interval), so
    # a heartbeat a little late never changes anything.
    HEARTBEAT_TTL_SECONDS = 60
    HEARTBEAT_GRACE_SECONDS = 60
    # Past its deadline a service is critical; this much later it is offline.
    HEARTBEAT_OFFLINE_AFTER_SECONDS = 3600
    # How often the worker records the liveness changes that deadlines make (also the
    # most a catalog read waits for them without a worker, and how often each process
    # writes the observer's tick).
    LIVENESS_CHECK_SECONDS = 5
    # No observer tick (worker round, heartbeat, catalog read) for longer than this is an
    # outage of polymicro: a deadline that passed during it gives `unknown`, not critical,
    # until one interval (TTL + grace) after the recovery.  Keep it well above
    # LIVENESS_CHECK_SECONDS.
    LIVENESS_OUTAGE_SECONDS = 30
    # --- alerts (issue 13: rules, evaluation) -----------------------------------------
    # How often the worker evaluates every alert rule (also the step of a backtest).
    ALERTS_EVALUATE_SECONDS = 15
    # A backtest replays at most this many evaluations (more: 422).
    ALERTS_BACKTEST_MAX_STEPS = 2000
    # --- alert webhooks (issue 13: receivers, deliveries) -------------------------------
    # Receiver URLs that resolve to loopback, link-local, private, multicast, reserved or
    # unspecified addresses are refused (at creation and again at each delivery) unless
    # true.  Tests and the compose example set it.
    WEBHOOK_ALLOW_PRIVATE = False
    # How long one delivery attempt may take (connect, send, read), seconds.
    WEBHOOK_TIMEOUT_SECONDS = 10
    # At most this many bytes of a receiver's response are read (the rest is dropped).
    WEBHOOK_MAX_RESPONSE_BYTES = 65536
    # Retries: full-jitter exponential backoff, the n-th wait drawn in
    # [0, min(MAX, BASE * 2**(n-1))]; a Retry-After answer wins.  A delivery not done
    # WEBHOOK_RETRY_HOURS after it was created (or redelivered) is `failed` (redeliver it by hand).
    WEBHOOK_RETRY_BASE_SECONDS = 10
    WEBHOOK_RETRY_MAX_SECONDS = 3600
    WEBHOOK_RETRY_HOURS = 24
    # How often the worker fans the outbox out to receivers and sends due deliveries.
    WEBHOOK_CHECK_SECONDS = 5
    # The address of this polymicro as receivers should see it: the payload's
    # externalURL and the base of each alert's generatorURL (no request to take it from).
    EXTERNAL_URL = "http://127.0.0.1:8000"
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
    # Keep, in each worker, the cache keys it read, dropped when Redis's client tracking
    # says they changed (polymicro/common/cache_mirror.py): a cached hit without a Redis
    # round trip.  False: every cached read is one round trip.
    CACHE_MIRROR = True
    # How long (ms) a cached log or CPU-point list may be served after a write by someone
    # else changed it (each list is then recomputed at most about once per window per
    # worker under continuous writes); a caller always sees its own writes.  0: exact.
    LIST_STALENESS_MS = 1000
    # How long (ms) a worker trusts the generations of API keys and of the catalog it
    # last read before reading them again (polymicro/common/local_cache.py): a key
    # revoked, or a project or service deleted, by another worker is still accepted
    # here for at most this long (the worker that wrote knows at once).  0: exact (one
    # Redis round trip per request).
    REFERENCE_RECHECK_MS = 500
    # Group commit of single log POSTs: concurrent ones in a worker are written in one
    # insert_many, each answered once its row is durable (see polymicro/common/atomic.py).
    LOG_GROUP_COMMIT = False
    # How long an Idempotency-Key and its answer are kept (IETF draft: 24 hours).
    IDEMPOTENCY_KEY_HOURS = 24
    # --- HTTP -----------------------------------------------------------------------
    # Reverse proxies in front of the app (the Kubernetes Ingress, the compose nginx):
    # the client's address, scheme and host are taken from X-Forwarded-For/-Proto/-Host,
    # trusting this many hops from the right.  0: the headers are ignored (a server
    # reached directly), else anyone could choose the address the rate limits count.
    TRUSTED_PROXIES = 0
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
    # Where the pages load Swagger UI and ReDoc from.  Empty: polymicro serves the copies
    # bundled in pinned packages (polymicro/docs.py), so the docs work offline.  A URL
    # (e.g. a CDN) replaces them, and the docs pages' CSP then allows its origin.
    OPENAPI_SWAGGER_UI_URL = ""
    OPENAPI_REDOC_PATH = "/redoc"
    OPENAPI_REDOC_URL = ""


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
    # Existing tests store entries of any age; the retention tests set these.
    RETENTION_LOGS_DAYS = 0
    RETENTION_POINTS_DAYS = 0
    RETENTION_ROLLUPS_5M_DAYS = 0
    RETENTION_ROLLUPS_1H_DAYS = 0
    # The retention tests check TTL indexes on both databases (mongomock and the wire
    # run's SecantusDB); the tests of auto and of the sweep alone set their own.
    RETENTION_TTL_INDEXES = "true"


AUTO_CHOICES = ("auto", "true", "false")


def auto_choice(name: str, value: Any) -> str:
    """A setting that is ``auto``, ``true`` or ``false`` (``MONGODB_RETRY_WRITES``,
    ``RETENTION_TTL_INDEXES``: ``auto`` decides by the database), lower-cased; anything
    else is a RuntimeError naming ``POLYMICRO_<name>``."""
    choice = str(value).strip().lower()
    if choice not in AUTO_CHOICES:
        raise RuntimeError(
            f"invalid POLYMICRO_{name}: expected one of {', '.join(AUTO_CHOICES)}, got {value!r}"
        )
    return choice


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
