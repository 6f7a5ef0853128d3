"""polymicro: the Poly Micro Manager backend.

``create_app`` is a short list of named steps; nothing connects or reads the
environment at import time.
"""

from __future__ import annotations

import logging
from inspect import iscoroutinefunction
from urllib.parse import urlsplit

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from polymicro import errors
from polymicro.common import versioning
from polymicro.common.converters import ObjectIdConverter
from polymicro.config import Config, load_config
from polymicro.docs import init_docs
from polymicro.extensions import api, init_cache, init_compression, init_db, ping_db
from polymicro.observability import configure_logging, init_observability, init_tracing
from polymicro.security import init_security

__version__ = "0.1.0"

log = logging.getLogger(__name__)

JSON_BODY_METHODS = {"POST", "PUT", "PATCH"}
# The dashboard logs in with form fields (its register form sends JSON).  Unversioned
# paths: /api/v1/… is matched through versioning.unversioned_path.
FORM_PATHS = {"/api/auth/login"}
OWN_MEDIA_PREFIXES = ("/otlp/", "/loki/")  # ingest reads protobuf, snappy, gzip itself


def create_app(config: type[Config] | dict | None = None) -> Flask:
    settings = load_config(config)
    app = PolymicroFlask(__name__, instance_path=settings["INSTANCE_PATH"] or None)
    configure(app, settings)
    configure_logging(app)
    init_tracing(app)  # off unless OTEL_EXPORTER_OTLP_ENDPOINT; before the database client
    init_db(app)
    init_cache(app)
    init_compression(app)
    init_security(app)
    connect_domains()
    init_docs(app)
    register_api(app)
    errors.register_error_handlers(app)
    register_request_guards(app)
    init_observability(app)
    register_cli(app)
    trust_proxies(app)
    return app


class PolymicroFlask(Flask):
    """Flask, with the answer of :meth:`ensure_sync` remembered per function.

    Flask asks ``inspect.iscoroutinefunction`` of every hook and view it calls, on every
    request (about a dozen: the request hooks, flask-smorest's wrappers, the view), and
    the answer never changes for a function.  Remembered by the function itself (a
    bound method by its ``__func__``: a method view's instance is new each request), in
    a dict bounded to ``SYNC_MEMO`` entries.  A coroutine function is wrapped as Flask
    does.  ``ensure_sync`` is the method Flask documents for overriding.  py-spy on a
    cached hit: ``iscoroutinefunction`` was 2-3% of the request (issue 9, item 5).
    """

    SYNC_MEMO = 4096

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plain_functions: set = set()

    def ensure_sync(self, func):
        plain = getattr(func, "__func__", func)
        try:
            if plain in self._plain_functions:
                return func
        except TypeError:  # an unhashable callable: asked every time, as Flask does
            return super().ensure_sync(func)
        if iscoroutinefunction(func):
            return self.async_to_sync(func)
        if len(self._plain_functions) >= self.SYNC_MEMO:
            self._plain_functions.clear()
        self._plain_functions.add(plain)
        return func


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, opened and saved only when there is a session.

    The API uses no session (bearer tokens, no cookies), yet Flask opens one for every
    request: with a ``SECRET_KEY`` that builds an itsdangerous serializer (which
    JSON-encodes ``{}`` to test itself) and parses the cookies, and saving reads six
    cookie settings before finding the session empty.  Here a request without a
    ``Cookie`` header gets an empty session at once and an untouched empty session is not
    saved; anything else goes to Flask's code, so a session that is used behaves exactly
    as Flask's.  Measured in-process on a cached ``GET /api/projects`` (py-spy): opening
    and saving the unused session were about 7% of the request (issue 9, item 5).
    """

    def open_session(self, app, request):
        if app.secret_key and "HTTP_COOKIE" not in request.environ:
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app, session, response) -> None:
        if not session and not session.modified and not session.accessed:
            return  # what Flask does for it, without reading the cookie settings first
        super().save_session(app, session, response)


def configure(app: Flask, settings: dict) -> None:
    app.config.update(settings)
    app.session_interface = CookieSessions()
    app.json.sort_keys = False
    # Collection paths answer with and without the trailing slash, without a redirect.
    app.url_map.strict_slashes = False
    app.url_map.converters["objectid"] = ObjectIdConverter


def connect_domains() -> None:
    """The ways up between domains (cascades, embedded views): ``polymicro/domains.py``."""
    from polymicro import domains

    domains.connect()


def api_blueprints() -> list:
    """Every blueprint of the JSON API (``url_prefix`` under ``/api``), in the order of
    the OpenAPI document; each is served under ``/api/v1`` and ``/api``."""
    from polymicro.alerts.delivery_resources import blp as alert_receivers_blp
    from polymicro.alerts.resources import alerts_blp
    from polymicro.alerts.resources import blp as alert_rules_blp
    from polymicro.auth.resources import blp as auth_blp
    from polymicro.auth.resources import keys_blp
    from polymicro.events.resources import blp as events_blp
    from polymicro.liveness.resources import blp as liveness_blp
    from polymicro.logs.resources import blp as logs_blp
    from polymicro.metrics.resources import blp as metrics_blp
    from polymicro.operations.resources import blp as operations_blp
    from polymicro.projects.resources import blp as projects_blp
    from polymicro.services.resources import blp as services_blp

    blueprints = (auth_blp, keys_blp, projects_blp, services_blp, logs_blp, metrics_blp)
    alerting = (alert_rules_blp, alerts_blp, alert_receivers_blp)
    return [*blueprints, events_blp, liveness_blp, *alerting, operations_blp]


def register_api(app: Flask) -> None:
    """The JSON API under ``/api/v1`` (canonical) and ``/api`` (aliases: the dashboard's
    paths), one view per endpoint (common/versioning.py); the ingest paths outside both.

    Security schemes of the document: ``bearerAuth`` (a user's JWT, or a project API key
    on the operations that take keys), ``apiKey`` (``X-API-Key``) and ``basicAuth`` (a
    key as the password: some shippers can send nothing else).  Each operation lists
    the ones it accepts (security/policy.py)."""
    from polymicro.ingest.resources import blp as ingest_blp

    app.config["API_VERSION"] = __version__
    api.init_app(
        app,
        spec_kwargs={
            "extra_plugins": [versioning.AliasDocs()],
            "info": {"description": versioning.DOCUMENT_NOTE},
        },
    )
    api.register_converter(
        ObjectIdConverter, lambda _: {"type": "string", "pattern": ObjectIdConverter.regex}
    )
    api.spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A user's access token (`POST /api/v1/auth/login`). On the "
            "operations that take API keys, also a project API key (`pmk_…`).",
        },
    )
    api.spec.components.security_scheme(
        "apiKey",
        {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "A project API key (`pmk_…`).",
        },
    )
    api.spec.components.security_scheme(
        "basicAuth",
        {
            "type": "http",
            "scheme": "basic",
            "description": "A project API key (`pmk_…`) as the password, any username: "
            "for log shippers that can send nothing else. Users log in for a bearer token.",
        },
    )
    versioning.register_versioned(api, api_blueprints())
    app.register_blueprint(ingest_blp)  # OTLP and Loki bodies: outside the OpenAPI document


def register_request_guards(app: Flask) -> None:
    @app.before_request
    def require_json_body():
        """A write whose body is not JSON gets 415 instead of being read as empty."""
        if request.method not in JSON_BODY_METHODS or request.content_length == 0:
            return
        path = request.path
        if path.startswith(OWN_MEDIA_PREFIXES):
            return
        if versioning.unversioned_path(path).rstrip("/") in FORM_PATHS:
            return
        has_body = request.content_length or request.headers.get("Transfer-Encoding")
        if has_body and not request.is_json:
            errors.raise_unsupported_media_type()


def trust_proxies(app: Flask) -> None:
    """Behind ``TRUSTED_PROXIES`` reverse proxies (the Kubernetes Ingress, the compose
    nginx), take the client's address, scheme and host from the ``X-Forwarded-*`` headers
    those proxies set (werkzeug's ``ProxyFix``, the outermost layer: every hook, the rate
    limiter's per-address budgets included, sees the client, not the proxy).  It trusts
    exactly that many hops, counted from the right of each header: values a client put
    further left are ignored.  0 (the default, for a server reached directly): the
    headers are ignored, so nobody can choose the address the limits count."""
    hops = app.config["TRUSTED_PROXIES"]
    if hops < 0:
        raise RuntimeError(f"invalid POLYMICRO_TRUSTED_PROXIES: {hops} (a number of hops, >= 0)")
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)


def register_cli(app: Flask) -> None:
    from polymicro.cli import register

    register(app)


def check_database(app: Flask) -> None:
    """Say clearly at server start-up when the database cannot be reached.

    Called by ``wsgi.py`` (not by CLI commands, which report their own errors).  The app
    still starts and answers 503 until the database is reachable, so it recovers without
    a restart.
    """
    with app.app_context():
        try:
            ping_db()
        except Exception as exc:
            where = urlsplit(app.config["MONGODB_URI"]).hostname or "?"
            port = urlsplit(app.config["MONGODB_URI"]).port or 27017
            log.error(
                "Cannot reach MongoDB at %s:%s (%s). Data endpoints answer 503 until it is "
                "reachable; set POLYMICRO_MONGODB_URI or start the database (make run does).",
                where,
                port,
                type(exc).__name__,
            )
