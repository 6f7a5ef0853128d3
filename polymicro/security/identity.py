"""Who is calling: users' JWTs and projects' API keys, verified once per request.

**Credentials.**  A request presents at most one credential; the first of these wins:

1. ``X-API-Key: <key>`` — a project API key;
2. ``Authorization: Bearer <key>`` — a project API key, told apart from a JWT by its
   prefix ``pmk_`` (a JWT starts with ``eyJ``, its base64 header);
3. ``Authorization: Basic …`` — a project API key as the *password* (any username):
   some log shippers (Fluent Bit's ``http``/``loki`` outputs, Vector, Promtail/Alloy)
   can send nothing else;
4. ``Authorization: Bearer <JWT>`` — a user's access (or refresh) token.

A key never goes in a URL: a query string ends up in access logs, proxies and browser
history, so ``?api_key=`` is not read.  The ``Authorization`` header is parsed by
werkzeug (``request.authorization``), not by hand.

**Tokens** are flask-jwt-extended's, HS256 only (``alg=none`` and every other algorithm
are refused).  ``decode_token`` checks the signature, the algorithm and the expiry;
its errors are answered by flask-jwt-extended's own error handlers, which call the
loader callbacks registered in :func:`init_identity` (``unauthorized_loader``,
``invalid_token_loader``, ``expired_token_loader``, …), so every token failure is a 401
in the one error shape with ``WWW-Authenticate: Bearer``, and no library text leaks.
(Before, the library's handlers were deleted from the app, because they answered 422
in their own shape; the loaders are the hooks the library offers for exactly this.)

**Once per request.**  The limiter's key function runs before the view, and
:func:`~polymicro.security.policy.access` in the view: both ask :func:`caller`, which
verifies the credential the first time and keeps the outcome on ``flask.g`` — the
verified :class:`Principal`, or the exception of the failure, raised again to whoever
asks next.  An API key costs one cache read (or one query) per request, a token one
HMAC, whoever asks.  (Measured with the test client, limiter on: a request with a token
went from 1.0-1.2 ms to 0.8-0.9 ms of CPU when the second decode went away.)
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from bson import ObjectId
from flask import Flask, current_app, g, jsonify, request
from flask_jwt_extended import JWTManager, decode_token
from flask_jwt_extended.exceptions import (
    InvalidHeaderError,
    JWTExtendedException,
    NoAuthorizationError,
)
from jwt.exceptions import PyJWTError

from polymicro.errors import Unauthorized, error_body

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
API_KEY_PREFIX = "pmk_"  # the prefix of every key (polymicro.auth.service makes them)
MIN_SECRET_LENGTH = 32
CHALLENGE = 'Bearer realm="polymicro"'
# flask.g attribute: (the request, its Principal or failure).  The request is part of
# the memo because ``g`` belongs to the app context, which several requests share when
# one is pushed around them (tests, CLI commands calling views).
_MEMO = "security_caller"

jwt = JWTManager()


@dataclass(frozen=True)
class Principal:
    """The verified caller of this request."""

    kind: str  # "user", "key" or "anonymous" (authentication disabled)
    role: str
    user_id: str | None = None
    username: str | None = None
    project_id: ObjectId | None = None  # a key's project
    key_id: ObjectId | None = None
    jwt_type: str | None = None  # a user's token: "access" or "refresh"
    issued_at: int | None = None  # a user's token: its ``iat``


ANONYMOUS_ADMIN = Principal(kind="anonymous", role="admin", username="anonymous")


# --- the caller of this request ----------------------------------------------------------


def caller() -> Principal:
    """The verified caller of this request, or the failure raised: a 401 (no or bad
    credentials, through the JWT loaders or :class:`Unauthorized`) or a 503 (the key
    store unreachable).  Verified once; later calls in the request reuse the outcome."""
    this_request = request._get_current_object()
    memo = g.get(_MEMO)
    if memo is not None and memo[0] is this_request:
        outcome = memo[1]
    else:
        outcome = _verify()
        setattr(g, _MEMO, (this_request, outcome))
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def verified_caller() -> Principal | None:
    """:func:`caller`, or None when the credentials are missing or failed (never raises):
    for the rate limiter, which counts a failed caller by its address."""
    try:
        return caller()
    except Exception:
        return None


def has_credentials() -> bool:
    """Whether the request presents any credential (valid or not)."""
    return bool(request.headers.get(API_KEY_HEADER) or request.headers.get("Authorization"))


def refresh_caller() -> Principal:
    """The user of the refresh token this request presents (a 401 otherwise); the
    anonymous admin when authentication is disabled (there is nothing to verify then)."""
    if not current_app.config["AUTH_ENABLED"]:
        return ANONYMOUS_ADMIN
    principal = caller()
    if principal.kind != "user" or principal.jwt_type != "refresh":
        raise Unauthorized("Send a refresh token here (an access token does not refresh).")
    return principal


def _verify() -> Principal | Exception:
    if not has_credentials():  # the common case of public endpoints: nothing to parse
        return NoAuthorizationError("Missing Authorization Header")
    try:
        raw_key = presented_api_key()
        if raw_key is not None:
            return _key_principal(raw_key)
        return _token_principal()
    except Exception as exc:  # kept, and raised again to whoever asks (see caller())
        return exc


def presented_api_key() -> str | None:
    """The API key the request presents, in any of its three forms, or None (then the
    ``Authorization`` header, if any, should carry a user's JWT).  Basic auth with a
    password that is not a key is refused here, with a message saying what to send."""
    header = request.headers.get(API_KEY_HEADER)
    if header:
        return header
    authorization = request.authorization
    if authorization is None:
        return None
    if authorization.type == "basic":
        password = authorization.password or ""
        if not password.startswith(API_KEY_PREFIX):
            raise Unauthorized(
                "HTTP Basic authentication takes a project API key as the password "
                "(any username); users log in for a bearer token."
            )
        return password
    if authorization.type == "bearer" and (authorization.token or "").startswith(API_KEY_PREFIX):
        return authorization.token
    return None


def _key_principal(raw_key: str) -> Principal:
    from polymicro.auth import service as auth  # the auth domain stores the keys

    key = auth.verify_api_key(raw_key)
    if key is None:
        raise Unauthorized("Unknown or revoked API key.")
    return Principal(kind="key", role="editor", project_id=key["project_id"], key_id=key["id"])


def _token_principal() -> Principal:
    """A user's token from ``Authorization: Bearer``.  Every failure is one of
    flask-jwt-extended's exceptions, answered through the loaders below."""
    authorization = request.authorization
    if authorization is None or authorization.type != "bearer":
        raise NoAuthorizationError("Missing Authorization Header")
    if not authorization.token or " " in authorization.token:
        raise InvalidHeaderError("Expected 'Authorization: Bearer <JWT>'")
    claims = decode_token(authorization.token)  # signature, algorithm, expiry
    if claims.get("anonymous"):
        raise Unauthorized("This token was issued while authentication was disabled; log in again.")
    return Principal(
        kind="user",
        role=claims.get("role", "viewer"),
        user_id=claims["sub"],
        username=claims.get("username"),
        jwt_type=claims["type"],
        issued_at=claims.get("iat"),
    )


# --- set-up ------------------------------------------------------------------------------

LOGIN_FIRST = "Log in first: send Authorization: Bearer <access token>."
NOT_VALID = "The token is not valid."
EXPIRED = "The token has expired; log in or refresh."


def init_identity(app: Flask) -> None:
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
    # flask-jwt-extended answers its own exceptions through these callbacks.  The ones
    # for features polymicro does not use (revocation, fresh tokens, user lookup, custom
    # claim checks) are set too, so that no token error can answer in another shape.
    jwt.unauthorized_loader(lambda _reason: unauthorized_response(LOGIN_FIRST))
    jwt.invalid_token_loader(lambda _reason: unauthorized_response(NOT_VALID))
    jwt.expired_token_loader(lambda _header, _claims: unauthorized_response(EXPIRED))
    for loader in (
        jwt.revoked_token_loader,
        jwt.needs_fresh_token_loader,
        jwt.user_lookup_error_loader,
        jwt.token_verification_failed_loader,
    ):
        loader(lambda _header, _claims: unauthorized_response(NOT_VALID))

    @app.errorhandler(Unauthorized)
    def _unauthorized(exc: Unauthorized):
        return unauthorized_response(exc.message)

    @app.errorhandler(JWTExtendedException)
    @app.errorhandler(PyJWTError)
    def _bad_token(_exc: Exception):
        """Backstop for the base classes: the library's handlers (above, through the
        loaders) take every exception it raises; a PyJWT error outside that set (a key
        error, say) is still a 401, not a 500."""
        return unauthorized_response(NOT_VALID)


def unauthorized_response(message: str):
    """A 401 in the one error shape, with the challenge."""
    response = jsonify(error_body(401, message))
    response.status_code = 401
    response.headers["WWW-Authenticate"] = CHALLENGE
    return response


def _configure_secret(app: Flask) -> None:
    """Production refuses to start without a strong SECRET_KEY.  Development without one
    keeps a generated key in the instance folder, shared by every worker."""
    secret = app.config["SECRET_KEY"]
    production = app.config["ENV"].strip().lower() == "production"
    if secret:
        if production and len(secret) < MIN_SECRET_LENGTH:
            raise RuntimeError(f"POLYMICRO_SECRET_KEY must be at least {MIN_SECRET_LENGTH} chars")
        return
    if production:
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
