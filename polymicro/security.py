"""Who is asking, and may they: tokens, API keys, roles, rate limits, CORS, headers.

Every API endpoint carries an :func:`access` decorator naming what it needs:

- ``access("viewer")`` — read; ``access("editor")`` — write the catalog, logs, metrics;
  ``access("admin")`` — users and project deletion.  Roles are ordered: an admin may do
  what an editor may, an editor what a viewer may.
- ``access("editor", keys=True)`` — also open to a project API key (``X-API-Key``).
  A key can only *write logs and metrics of its own project*: the resource passes
  :func:`project_scope` to the service, which refuses (403) any other project.
- ``access(public=True)`` — no credentials (login, health).

Users authenticate with short-lived JWT access tokens (``Authorization: Bearer …``,
flask-jwt-extended, HS256 only: ``alg=none`` and other algorithms are rejected).  The
role travels in the token: a role change or deactivation takes effect at the next
refresh, at most ``ACCESS_TOKEN_MINUTES`` later (refresh re-reads the user).

With ``AUTH_ENABLED=false`` every request acts as an admin (a loud warning is logged at
start): for local experiments only.
"""

from __future__ import annotations

import logging
import secrets
from copy import deepcopy
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from pathlib import Path

from bson import ObjectId
from flask import Flask, current_app, g, request
from flask_cors import CORS
from flask_jwt_extended import JWTManager, decode_token, get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from jwt.exceptions import PyJWTError

from polymicro.errors import Forbidden, Unauthorized, error_body

log = logging.getLogger(__name__)

ROLES = ("viewer", "editor", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
API_KEY_HEADER = "X-API-Key"
MIN_SECRET_LENGTH = 32

jwt = JWTManager()
limiter = Limiter(
    key_func=lambda: client_key(),
    headers_enabled=True,
    default_limits=[lambda: default_limit()],
)


@dataclass(frozen=True)
class Principal:
    """The caller of this request."""

    kind: str  # "user", "key" or "anonymous" (auth disabled)
    role: str
    user_id: str | None = None
    username: str | None = None
    project_id: ObjectId | None = None  # a key's project
    key_id: ObjectId | None = None


ANONYMOUS_ADMIN = Principal(kind="anonymous", role="admin", username="anonymous")


# --- the decorator ---------------------------------------------------------------------


def access(role: str | None = None, *, keys: bool = False, public: bool = False):
    """Require ``role`` (or, with ``keys``, a project API key) for this view method.

    It runs before argument parsing, so an anonymous caller gets 401 before any 422,
    and it documents the requirement in the OpenAPI document.
    """
    if not public and role not in RANK:
        raise ValueError(f"unknown role {role!r}")

    def decorator(func):
        @wraps(func)
        def wrapper(*args, **kwargs):
            if public:
                g.principal = None
            elif not current_app.config["AUTH_ENABLED"]:
                g.principal = ANONYMOUS_ADMIN
            else:
                g.principal = _authenticate(role, keys)
            return func(*args, **kwargs)

        wrapper._access = {"role": role, "keys": keys, "public": public}
        wrapper._apidoc = deepcopy(getattr(func, "_apidoc", {}))
        if not public:
            security = [{"bearerAuth": []}] + ([{"apiKey": []}] if keys else [])
            manual = wrapper._apidoc.setdefault("manual_doc", {})
            manual["security"] = security
            who = f"role {role}" + (" or a project API key" if keys else "")
            manual["description"] = (manual.get("description", "") + f"\n\nRequires {who}.").strip()
            manual.setdefault("responses", {}).update(
                {
                    "401": {"description": "Missing, invalid or expired credentials."},
                    "403": {"description": "Authenticated, but not allowed."},
                }
            )
        else:
            wrapper._apidoc.setdefault("manual_doc", {})["security"] = []
        return wrapper

    return decorator


def current_principal() -> Principal | None:
    return g.get("principal")


def project_scope() -> ObjectId | None:
    """The only project this caller may write to, or None when not limited (users)."""
    principal = current_principal()
    return principal.project_id if principal is not None and principal.kind == "key" else None


def _authenticate(role: str, keys: bool) -> Principal:
    if request.headers.get(API_KEY_HEADER):
        principal = _key_principal(request.headers[API_KEY_HEADER])
        if not keys:
            raise Forbidden("API keys can only write the logs and metrics of their project.")
        return principal
    try:
        verify_jwt_in_request()
        claims = get_jwt()
    except (JWTExtendedException, PyJWTError) as exc:
        raise _unauthorized(exc) from exc
    if claims.get("type") != "access":
        raise Unauthorized("Use an access token here (a refresh token only refreshes).")
    principal = Principal(
        kind="user",
        role=claims.get("role", "viewer"),
        user_id=claims["sub"],
        username=claims.get("username"),
    )
    if RANK.get(principal.role, -1) < RANK[role]:
        raise Forbidden(f"This needs the {role} role; you are {principal.role}.")
    return principal


def caller_is_admin() -> bool:
    """For endpoints open to anyone that do more for an admin (registration): an
    admin's valid token says yes; no token says no; a bad token is a 401."""
    if not current_app.config["AUTH_ENABLED"]:
        return True
    if not request.headers.get("Authorization"):
        return False
    return _authenticate("viewer", keys=False).role == "admin"


def _key_principal(raw_key: str) -> Principal:
    from polymicro.auth import service as auth  # the auth domain stores the keys

    key = auth.verify_api_key(raw_key)
    if key is None:
        raise Unauthorized("Unknown or revoked API key.")
    return Principal(kind="key", role="editor", project_id=key["project_id"], key_id=key["id"])


def _unauthorized(exc: Exception) -> Unauthorized:
    text = str(exc)
    if "expired" in text.lower():
        return Unauthorized("The token has expired; log in or refresh.")
    if "Missing" in text:
        return Unauthorized("Log in first: send Authorization: Bearer <access token>.")
    return Unauthorized("The token is not valid.")


def ensure_project(scope: ObjectId | None, project_id: ObjectId) -> None:
    """A service-layer rule: a caller limited to ``scope`` may not touch another project."""
    if scope is not None and scope != project_id:
        raise Forbidden("This API key belongs to another project.")


# --- set-up ----------------------------------------------------------------------------


def init_security(app: Flask) -> None:
    _configure_secret(app)
    app.config.update(
        JWT_SECRET_KEY=app.config["SECRET_KEY"],
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=app.config["ACCESS_TOKEN_MINUTES"]),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=app.config["REFRESH_TOKEN_DAYS"]),
        JWT_ERROR_MESSAGE_KEY="message",
    )
    jwt.init_app(app)
    _drop_jwt_error_handlers(app)
    _init_rate_limits(app)
    _init_cors(app)
    app.after_request(_security_headers)
    if not app.config["AUTH_ENABLED"]:
        log.warning(
            "AUTHENTICATION IS DISABLED (POLYMICRO_AUTH_ENABLED=false): anyone who can "
            "reach this port can read, change and delete everything. Local experiments only."
        )

    @app.errorhandler(JWTExtendedException)
    @app.errorhandler(PyJWTError)
    def _bad_token(exc):  # a token error raised outside access() (e.g. refresh)
        return _auth_error_response(_unauthorized(exc))

    @app.errorhandler(Unauthorized)
    def _unauthorized_response(exc):
        return _auth_error_response(exc)


def _drop_jwt_error_handlers(app: Flask) -> None:
    """flask-jwt-extended registers a handler for each of its exception classes (a bare
    ``{"message"}``, often 422, without WWW-Authenticate).  Flask prefers the handler of
    the most specific class, so those would win over ``_bad_token`` below, registered
    for the base classes: /refresh with an access token or a garbled one answered 422."""
    handlers = app.error_handler_spec[None][None]
    for exc_class in list(handlers):
        if issubclass(exc_class, (JWTExtendedException, PyJWTError)):
            del handlers[exc_class]


def _auth_error_response(exc: Unauthorized):
    from flask import jsonify

    response = jsonify(error_body(401, exc.message))
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="polymicro"'
    return response


def _configure_secret(app: Flask) -> None:
    """Production refuses to start without a strong SECRET_KEY.  Development without one
    keeps a generated key in the instance folder, shared by every worker."""
    secret = app.config["SECRET_KEY"]
    if secret:
        if app.config["ENV"].strip().lower() == "production" and len(secret) < MIN_SECRET_LENGTH:
            raise RuntimeError(f"POLYMICRO_SECRET_KEY must be at least {MIN_SECRET_LENGTH} chars")
        return
    if app.config["ENV"].strip().lower() == "production":
        raise RuntimeError(
            "POLYMICRO_SECRET_KEY is not set: production refuses to start without a secret "
            "to sign tokens (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')."
        )
    path = Path(app.instance_path) / "secret-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="ascii") as file:  # first worker wins the race
            file.write(secrets.token_urlsafe(48))
        path.chmod(0o600)
        log.warning("generated a development secret key in %s", path)
    except FileExistsError:
        pass
    app.config["SECRET_KEY"] = path.read_text(encoding="ascii").strip()


def _init_rate_limits(app: Flask) -> None:
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
    address.  An invalid credential counts as its address: a made-up token or key per
    request must not buy a fresh budget each time."""
    return _verified_client() or "addr:" + (get_remote_address() or "unknown")


def _verified_client() -> str | None:
    raw_key = request.headers.get(API_KEY_HEADER)
    if raw_key:
        from polymicro.auth import service as auth

        try:
            key = auth.verify_api_key(raw_key)
        except Exception:  # database down: the view answers 503; count by address
            return None
        return f"key:{key['id']}" if key else None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        return "user:" + decode_token(token.strip())["sub"]
    except (JWTExtendedException, PyJWTError, KeyError, TypeError):
        return None


def default_limit() -> str:
    """Read per request: the limiter is module-level, shared by every app of a process,
    and would otherwise keep the RATELIMIT_DEFAULT of the first app for all of them."""
    return current_app.config["RATELIMIT_DEFAULT"]


def login_limit() -> str:
    return current_app.config["RATELIMIT_LOGIN"]


def login_key() -> str:
    """Login attempts are counted per client address, whatever the username."""
    return "login:" + (get_remote_address() or "unknown")


def _init_cors(app: Flask) -> None:
    origins = [o.strip() for o in app.config["CORS_ORIGINS"].split(",") if o.strip()]
    if not origins:
        return  # no Access-Control-* headers at all: browsers keep other origins out
    CORS(
        app,
        resources={r"/api/*": {"origins": origins}},
        supports_credentials=False,  # bearer tokens, no cookies: never * with credentials
        expose_headers=["X-Pagination", "ETag", "X-Request-ID", "Retry-After"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            API_KEY_HEADER,
            "If-Match",
            "If-None-Match",
            "X-Request-ID",
        ],
    )


DOC_PATHS = ("/docs", "/redoc")


def _security_headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
    if not request.path.startswith(DOC_PATHS):  # the doc pages load their scripts
        headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    if request.path.startswith("/api/auth"):
        headers["Cache-Control"] = "no-store"
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response
