"""polymicro/security.py and the hardening around it, by OWASP API Security Top 10 (2023):

- API2 broken authentication: forged, expired, ``alg=none`` and tampered tokens;
- API4 unrestricted resource consumption: rate limits, body, page and batch caps;
- API8 security misconfiguration: secrets, auth switched off, CORS, headers, errors;
- injection: MongoDB operators in bodies and query strings.

(API1, object-level authorization of API keys, is in test_auth_api.py; the role ×
endpoint table in test_access_matrix.py.)  Tests that need other settings build their
own app with ``make_app``.
"""

from __future__ import annotations

import base64
import json
import logging
import stat
import warnings
from datetime import timedelta

import jwt as pyjwt
import pytest
from flask import request
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from jwt.warnings import InsecureKeyLengthWarning

from polymicro import create_app
from polymicro.auth import service as auth
from polymicro.common import caching
from polymicro.config import Config
from polymicro.extensions import cache, close_db
from polymicro.logs import service as logs
from polymicro.logs.models import LogEntry
from polymicro.metrics import service as metrics
from polymicro.metrics.models import CpuPoint
from polymicro.security import (
    IngestRateLimited,
    access,
    charge_ingest,
    identity,
    limiter,
    project_scope,
)
from polymicro.security.limits import ingest_budget
from tests.conftest import _empty_database, client_as, make_config, token_for
from tests.factories import make_project, make_service

PASSWORD = "correct horse battery"
PROJECTS = "/api/projects"
LOGIN = "/api/auth/login"
STRONG_SECRET = "s" * 48


@pytest.fixture
def make_app(mongodb_uri, redis_url):
    """``make_app(**settings)``: a test app with these settings on top of the test ones,
    on a clean database, cache and rate-limit storage."""
    apps = []

    def factory(**settings):
        app = create_app(make_config(mongodb_uri, redis_url, **settings))
        caching.reset_state()
        # One Limiter serves every app of this process: start each one on a live, empty
        # storage (an earlier test may have left the fallback switched on).
        limiter._storage_dead = False
        with app.app_context():
            cache.clear()
            if mongodb_uri:
                _empty_database()
            if app.config["RATELIMIT_ENABLED"] and limiter.storage.check():
                limiter.reset()
        apps.append(app)
        return app

    yield factory
    if apps:
        with apps[-1].app_context():
            if apps[-1].config["RATELIMIT_ENABLED"] and limiter.storage.check():
                limiter.reset()
            if mongodb_uri:
                _empty_database()
    close_db()


def assert_error(response, code: int) -> None:
    assert response.status_code == code, response.get_data(as_text=True)
    assert response.json["code"] == code
    assert isinstance(response.json["status"], str)
    assert isinstance(response.json["message"], str)


def assert_401(response) -> None:
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="polymicro"'


def b64(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def make_user(app, username="alice", role="viewer", password=PASSWORD) -> dict:
    with app.app_context():
        data = {"username": username, "email": f"{username}@example.com", "password": password}
        return auth.register_user({**data, "role": role}, by_admin=True)


# --- API2: broken authentication ------------------------------------------------------


def claims_of(app, role="admin") -> dict:
    with app.app_context():
        return decode_token(token_for(app, role))


def expired(app):
    with app.app_context():
        return create_access_token(
            "0" * 24, additional_claims={"role": "admin"}, expires_delta=timedelta(seconds=-1)
        )


def other_secret(app):
    return pyjwt.encode(claims_of(app), "another-secret-that-is-long-enough-too", "HS256")


def alg_none(app, alg="none"):
    return f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims_of(app))}."


def right_secret_other_algorithm(app):
    with warnings.catch_warnings():  # PyJWT finds the test secret short for HS512
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return pyjwt.encode(claims_of(app), app.config["SECRET_KEY"], "HS512")


def tampered_role(app):
    """A viewer's real token with the payload edited to admin, not signed again."""
    header, payload, signature = token_for(app, "viewer").split(".")
    claims = unb64(payload)
    claims["role"] = "admin"
    return f"{header}.{b64(claims)}.{signature}"


def refresh_token(app):
    with app.app_context():
        return create_refresh_token("0" * 24)


def no_type_claim_other_secret(app):
    claims = claims_of(app)
    claims.pop("type")
    return pyjwt.encode(claims, "x" * 48, "HS256")


BAD_TOKENS = {
    "expired": expired,
    "signed with another secret": other_secret,
    "alg none": alg_none,
    "alg None": lambda app: alg_none(app, "None"),
    "HS512 with the right secret": right_secret_other_algorithm,
    "tampered role claim": tampered_role,
    "refresh token": refresh_token,
    "no type, other secret": no_type_claim_other_secret,
    "garbage": lambda app: "garbage",
    "three dots": lambda app: "a.b.c",
}
KNOWN_MESSAGES = {
    "The token has expired; log in or refresh.",
    "Log in first: send Authorization: Bearer <access token>.",
    "The token is not valid.",
    "Use an access token here (a refresh token only refreshes).",
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
@pytest.mark.parametrize("path", [PROJECTS, "/api/auth/users"])
def test_bad_tokens_are_401_with_www_authenticate_and_the_error_shape(app, ctx, kind, path):
    token = BAD_TOKENS[kind](app)
    response = app.test_client().get(path, headers={"Authorization": f"Bearer {token}"})
    assert_401(response)
    assert response.json["message"] in KNOWN_MESSAGES  # nothing of the library's text


def test_the_same_claims_properly_signed_pass(app, ctx):
    """The control of the test above: the forgeries fail for their forgery only."""
    token = pyjwt.encode(claims_of(app), app.config["SECRET_KEY"], "HS256")
    response = app.test_client().get(
        "/api/auth/users", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200


def test_an_expired_token_says_so(app, ctx):
    response = app.test_client().get(PROJECTS, headers={"Authorization": f"Bearer {expired(app)}"})
    assert_401(response)
    assert "expired" in response.json["message"]


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Bearer garbage", "Basic YWxpY2U6cGFzc3dvcmQ=", "garbage"],
)
def test_missing_or_malformed_authorization_is_401(anon_client, header):
    headers = {} if header is None else {"Authorization": header}
    assert_401(anon_client.get(PROJECTS, headers=headers))
    assert_401(anon_client.post(PROJECTS, json={"name": "x"}, headers=headers))


def test_a_token_of_another_scheme_with_a_valid_jwt_is_401(app, ctx):
    response = app.test_client().get(
        PROJECTS, headers={"Authorization": f"Token {token_for(app, 'admin')}"}
    )
    assert_401(response)


def test_an_unknown_role_claim_gives_no_access(app, ctx):
    token = token_for(app, "superuser")
    response = app.test_client().get(PROJECTS, headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 403)


def test_the_anonymous_401_comes_before_input_validation(anon_client):
    response = anon_client.get(f"{PROJECTS}?page_size=999999&sort=bogus")
    assert_401(response)


# --- API8: secrets --------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", "short", "x" * 31])
def test_production_refuses_to_start_without_a_strong_secret(make_app, tmp_path, secret):
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        make_app(ENV="production", SECRET_KEY=secret, INSTANCE_PATH=str(tmp_path))
    assert not (tmp_path / "secret-key").exists()


def test_production_starts_with_a_strong_secret_and_signs_with_it(make_app, tmp_path):
    app = make_app(ENV="production", SECRET_KEY=STRONG_SECRET, INSTANCE_PATH=str(tmp_path))
    assert app.config["JWT_SECRET_KEY"] == STRONG_SECRET
    token = token_for(app, "viewer")
    assert pyjwt.decode(token, STRONG_SECRET, algorithms=["HS256"])["role"] == "viewer"
    assert not (tmp_path / "secret-key").exists()


def test_development_without_a_secret_generates_one_once_and_reuses_it(make_app, tmp_path, caplog):
    instance = tmp_path / "instance"
    with caplog.at_level(logging.WARNING, logger="polymicro.security"):
        first = make_app(ENV="development", SECRET_KEY="", INSTANCE_PATH=str(instance))
    path = instance / "secret-key"
    secret = path.read_text().strip()
    assert len(secret) >= 32
    assert first.config["SECRET_KEY"] == first.config["JWT_SECRET_KEY"] == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("generated a development secret key" in r.getMessage() for r in caplog.records)
    token = token_for(first, "viewer")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="polymicro.security"):
        second = make_app(ENV="development", SECRET_KEY="", INSTANCE_PATH=str(instance))
    assert second.config["SECRET_KEY"] == secret
    assert not any("generated" in r.getMessage() for r in caplog.records)
    response = second.test_client().get(PROJECTS, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200  # tokens of one worker are valid in another


def test_the_secret_comes_from_the_configuration(make_app, tmp_path):
    app = make_app(SECRET_KEY=STRONG_SECRET, INSTANCE_PATH=str(tmp_path))
    assert app.config["JWT_SECRET_KEY"] == STRONG_SECRET
    assert not (tmp_path / "secret-key").exists()


def test_only_hs256_tokens_are_made_and_accepted(app):
    assert app.config["JWT_ALGORITHM"] == "HS256"
    assert app.config["JWT_DECODE_ALGORITHMS"] == ["HS256"]
    assert unb64(token_for(app, "viewer").split(".")[0])["alg"] == "HS256"


def test_access_tokens_are_short_lived_and_refresh_tokens_longer(app):
    assert app.config["JWT_ACCESS_TOKEN_EXPIRES"] == timedelta(minutes=15)
    assert app.config["JWT_REFRESH_TOKEN_EXPIRES"] == timedelta(days=7)


# --- API8: authentication switched off -------------------------------------------------


def test_auth_disabled_logs_a_loud_warning_and_lets_requests_pass(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="polymicro.security"):
        app = make_app(AUTH_ENABLED=False)
    warnings = [r for r in caplog.records if "AUTHENTICATION IS DISABLED" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    anon = app.test_client()
    created = anon.post(PROJECTS, json={"name": "open"})
    assert created.status_code == 201, created.json
    assert anon.get(PROJECTS).status_code == 200
    assert anon.get("/api/auth/users").status_code == 200
    assert anon.delete(f"{PROJECTS}/{created.json['id']}").status_code == 204


ANONYMOUS_ADMIN = {
    "id": None,
    "username": "anonymous",
    "email": None,
    "full_name": "Anonymous admin (authentication is disabled)",
    "role": "admin",
    "is_active": True,
    "anonymous": True,
    "created_at": None,
    "updated_at": None,
}


def assert_matches_the_openapi_document(client, path: str, method: str, response) -> None:
    """The response is valid against the response schema the API documents."""
    import schemathesis

    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json)
    schema[path][method].validate_response(response)  # raises on a mismatch


def test_auth_disabled_me_is_a_clearly_marked_anonymous_admin(make_app):
    """The dashboard asks /me after login; a 404 there sent it back to the login page."""
    client = make_app(AUTH_ENABLED=False).test_client()
    for headers in ({}, {"Authorization": "Bearer anything"}):
        response = client.get("/api/auth/me", headers=headers)
        assert response.status_code == 200, response.json
        assert response.json == ANONYMOUS_ADMIN
        assert_matches_the_openapi_document(client, "/api/auth/me", "GET", response)


def test_auth_disabled_any_login_succeeds_with_a_warning(make_app):
    app = make_app(AUTH_ENABLED=False)
    client = app.test_client()
    for response in (
        client.post(LOGIN, json={"username": "nobody", "password": "whatever"}),
        client.post(
            LOGIN, data={"username": "dashboard", "password": "x", "grant_type": "password"}
        ),
    ):
        assert response.status_code == 200, response.json
        body = response.json
        assert "authentication is disabled" in body["warning"].lower()
        assert body["user"] == ANONYMOUS_ADMIN
        assert body["token_type"] == "bearer"
        with app.app_context():
            claims = decode_token(body["access_token"])
            assert decode_token(body["refresh_token"])["warning"] == body["warning"]
        assert claims["warning"] == body["warning"]
        assert claims["anonymous"] is True
        assert claims["role"] == "admin"
        assert_matches_the_openapi_document(client, "/api/auth/login", "POST", response)
        me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert me.json["anonymous"] is True
    refreshed = client.post(
        "/api/auth/refresh", headers={"Authorization": f"Bearer {body['refresh_token']}"}
    )
    assert refreshed.status_code == 200
    assert refreshed.json["warning"] == body["warning"]
    assert refreshed.json["user"] == ANONYMOUS_ADMIN


def test_auth_disabled_the_anonymous_admin_has_no_account_to_change(make_app):
    response = (
        make_app(AUTH_ENABLED=False)
        .test_client()
        .put("/api/auth/me", json={"email": "me@example.com"})
    )
    assert_error(response, 403)
    assert "anonymous admin" in response.json["message"]


def test_a_token_of_an_auth_disabled_session_opens_nothing_with_auth_on(make_app):
    """The same secret later serving with authentication on: the anonymous admin's
    tokens are refused, though properly signed."""
    off = make_app(AUTH_ENABLED=False, SECRET_KEY=STRONG_SECRET)
    session = off.test_client().post(LOGIN, json={"username": "x", "password": "y"}).json
    on = make_app(AUTH_ENABLED=True, SECRET_KEY=STRONG_SECRET).test_client()
    access_token = {"Authorization": f"Bearer {session['access_token']}"}
    for path in (PROJECTS, "/api/auth/me", "/api/auth/users"):
        response = on.get(path, headers=access_token)
        assert_401(response)
        assert "authentication was disabled" in response.json["message"]
    refresh = {"Authorization": f"Bearer {session['refresh_token']}"}
    assert_401(on.post("/api/auth/refresh", headers=refresh))
    assert_401(on.post(LOGIN, json={"username": "x", "password": "y"}))  # a real login now


def test_auth_enabled_logs_no_such_warning(make_app, caplog):
    with caplog.at_level(logging.WARNING, logger="polymicro.security"):
        app = make_app(AUTH_ENABLED=True)
    assert not any("AUTHENTICATION IS DISABLED" in r.getMessage() for r in caplog.records)
    assert_401(app.test_client().get(PROJECTS))


def test_auth_is_on_by_default():
    assert Config.AUTH_ENABLED is True
    assert Config.ALLOW_REGISTRATION is False
    assert Config.RATELIMIT_ENABLED is True
    assert Config.CORS_ORIGINS == ""


# --- API4: rate limits ----------------------------------------------------------------


def login_attempt(client, username="alice", password=None):
    password = password or "wrong password"
    return client.post(LOGIN, json={"username": username, "password": password})


def assert_429(response) -> None:
    assert_error(response, 429)
    retry_after = int(response.headers["Retry-After"])
    assert 0 <= retry_after <= 60


def test_the_fourth_login_attempt_from_one_address_is_429(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="3 per minute")
    make_user(app)
    client = app.test_client()
    for username in ("alice", "bob", "carol"):  # counted per address, whatever the name
        assert_401(login_attempt(client, username))
    assert_429(login_attempt(client, "alice", PASSWORD))  # even with the right password
    other_address = app.test_client()
    other_address.environ_base["REMOTE_ADDR"] = "10.0.0.2"
    assert (
        other_address.post(LOGIN, json={"username": "alice", "password": PASSWORD}).status_code
        == 200
    )


def test_login_attempts_with_changing_credentials_share_the_address_budget(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_LOGIN="3 per minute")
    client = app.test_client()
    for i in range(3):
        headers = {"Authorization": f"Bearer made-up-{i}", "X-API-Key": f"pmk_{i}_x"}
        assert_401(client.post(LOGIN, json={"username": "a", "password": "b"}, headers=headers))
    assert_429(client.post(LOGIN, json={"username": "a", "password": "b"}))


def test_the_default_limit_counts_per_client(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="5 per minute")
    first = client_as(app, "viewer")
    second = client_as(app, "viewer")
    for remaining in range(4, -1, -1):
        response = first.get(PROJECTS)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
    assert_429(first.get(PROJECTS))
    assert_429(first.post(PROJECTS, json={"name": "x"}))
    assert second.get(PROJECTS).status_code == 200


def test_the_default_limit_is_configurable(make_app):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per minute")
    client = client_as(app, "viewer")
    assert client.get(PROJECTS).status_code == 200
    assert client.get(PROJECTS).headers["X-RateLimit-Limit"] == "2"
    assert_429(client.get(PROJECTS))


def test_made_up_credentials_do_not_buy_a_fresh_budget(make_app):
    """Each request with a new invalid token or key is still one client: its address."""
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="4 per minute")
    client = app.test_client()
    assert_401(client.get(PROJECTS, headers={"Authorization": "Bearer made-up-1"}))
    assert_401(client.get(PROJECTS, headers={"Authorization": "Bearer made-up-2"}))
    assert_401(client.get(PROJECTS, headers={"X-API-Key": "pmk_0123456789ab_made-up-3"}))
    assert_401(client.get(PROJECTS, headers={"X-API-Key": "pmk_0123456789ab_made-up-4"}))
    assert_429(client.get(PROJECTS, headers={"Authorization": "Bearer made-up-5"}))
    assert_429(client.get(PROJECTS))
    assert client_as(app, "viewer").get(PROJECTS).status_code == 200  # a real user: own budget


def test_a_keys_ingest_is_not_counted_against_the_dashboard_budget(make_app):
    """A key writing logs is charged per entry (the ingest budget, below), not per
    request; elsewhere (a 403) it counts per request like any client; users count."""
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="2 per minute")
    with app.app_context():
        svc = make_service()
        raw = auth.create_api_key(svc.project_id, "ci", None)["key"]
    entry = {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "message": "m",
        "severity": "info",
    }
    key = app.test_client()
    key.environ_base["HTTP_X_API_KEY"] = raw
    for _ in range(5):
        response = key.post("/api/logs", json=entry)
        assert response.status_code == 201
        assert "X-RateLimit-Limit" not in response.headers
    assert key.post("/api/logs/batch", json=[entry] * 3).status_code == 201
    assert_error(key.get(PROJECTS), 403)
    assert_error(key.get(PROJECTS), 403)
    assert_429(key.get(PROJECTS))
    editor = client_as(app, "editor")
    assert editor.post("/api/logs", json=entry).status_code == 201
    assert editor.post("/api/logs", json=entry).status_code == 201
    assert_429(editor.post("/api/logs", json=entry))
    with app.app_context():
        assert LogEntry.objects.count() == 10


def test_rate_limits_can_be_switched_off(make_app):
    app = make_app(
        RATELIMIT_ENABLED=False, RATELIMIT_LOGIN="1 per minute", RATELIMIT_DEFAULT="1 per minute"
    )
    client = client_as(app, "viewer")
    for _ in range(5):
        assert_401(login_attempt(app.test_client()))
        assert client.get(PROJECTS).status_code == 200


def test_the_limiter_counts_in_redis_when_redis_url_is_set_else_in_memory(make_app, redis_url):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="5 per minute")
    client = client_as(app, "viewer")
    assert client.get(PROJECTS).status_code == 200
    storage = type(limiter.storage).__name__
    if redis_url:
        import redis

        assert app.config["RATELIMIT_STORAGE_URI"] == redis_url
        assert storage == "RedisStorage"
        keys = redis.Redis.from_url(redis_url).keys("*polymicro:limits*")
        assert keys, "no rate-limit counter in Redis"
    else:
        assert app.config["RATELIMIT_STORAGE_URI"] == "memory://"
        assert storage == "MemoryStorage"
    for _ in range(4):
        client.get(PROJECTS)
    assert_429(client.get(PROJECTS))


def test_an_unreachable_redis_for_the_limiter_gives_no_5xx(make_app):
    app = make_app(
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0",  # nothing listens on port 1
        RATELIMIT_DEFAULT="3 per minute",
    )
    assert type(limiter.storage).__name__ == "RedisStorage"
    make_user(app)
    client = client_as(app, "viewer")
    statuses = [client.get(PROJECTS).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert (
        app.test_client().post(LOGIN, json={"username": "alice", "password": PASSWORD}).status_code
        == 200
    )
    assert_429(client.get(PROJECTS))  # counted in memory meanwhile


# --- one verification per request (the limiter and access() share it) ----------------


def count_calls(monkeypatch, module, name) -> list:
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("form", ["X-API-Key", "Bearer"])
def test_a_key_is_verified_once_per_request_with_the_limiter_on(make_app, monkeypatch, form):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="100 per minute")
    with app.app_context():
        svc = make_service()
        raw = auth.create_api_key(svc.project_id, "ci", None)["key"]
    calls = count_calls(monkeypatch, auth, "verify_api_key")
    headers = {"X-API-Key": raw} if form == "X-API-Key" else {"Authorization": f"Bearer {raw}"}
    client = app.test_client()
    response = client.get(PROJECTS, headers=headers)
    assert_error(response, 403)
    assert response.headers["X-RateLimit-Limit"] == "100"  # the limiter did count the key
    assert len(calls) == 1
    entry = {"project_id": str(svc.project_id), "service_id": str(svc.id), "message": "m"}
    response = client.post("/api/logs", json={**entry, "severity": "info"}, headers=headers)
    assert response.status_code == 201
    assert len(calls) == 2


def test_a_token_is_verified_once_per_request_with_the_limiter_on(make_app, monkeypatch):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="100 per minute")
    calls = count_calls(monkeypatch, identity, "decode_token")
    client = client_as(app, "viewer")
    response = client.get(PROJECTS)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "100"  # the limiter did count the user
    assert len(calls) == 1
    assert client.get(PROJECTS).status_code == 200
    assert len(calls) == 2


def test_a_failed_credential_is_remembered_and_raised_to_access(make_app, monkeypatch):
    """The limiter counts a bad token by address; access() answers 401 with the same
    outcome, without decoding again."""
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_DEFAULT="100 per minute")
    calls = count_calls(monkeypatch, identity, "decode_token")
    response = app.test_client().get(PROJECTS, headers={"Authorization": "Bearer bad"})
    assert_401(response)
    assert response.json["message"] == "The token is not valid."
    assert len(calls) == 1


# --- API4: the ingest budget (entries per second per project, with a burst) ------------
#
# With a rate of 1 entry/s the budget comes back at 1 entry per second at most, so a
# refusal below stays a refusal for several seconds: no test depends on timing.


@pytest.fixture
def ingest_app(make_app):
    """An app with a small ingest budget (20 entries, back at 1 per second), a service
    with a CPU entry, its project's key, and a key of another project."""
    app = make_app(RATELIMIT_ENABLED=True, INGEST_RATE_PER_SECOND=1, INGEST_BURST=20)
    with app.app_context():
        svc = make_service(name="api")
        other = make_service(name="api")
        metric = metrics.create_metric({"project_id": svc.project_id, "service_name": "api"})
        extra = {
            "svc": svc,
            "other": other,
            "metric": str(metric["id"]),
            "key": auth.create_api_key(svc.project_id, "ci", None)["key"],
            "other_key": auth.create_api_key(other.project_id, "ci", None)["key"],
        }
    return app, extra


def log_entry(svc) -> dict:
    return {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "message": "m",
        "severity": "info",
    }


def key_client(app, raw):
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = raw
    return client


def stored_entries(app) -> tuple[int, int]:
    with app.app_context():
        return LogEntry.objects.count(), CpuPoint.objects.count()


def assert_ingest_429(response, most_seconds: int) -> None:
    assert_error(response, 429)
    assert 1 <= int(response.headers["Retry-After"]) <= most_seconds
    assert "ingest budget" in response.json["message"]


def test_over_the_ingest_budget_is_429_with_retry_after_and_nothing_stored(ingest_app):
    app, extra = ingest_app
    key = key_client(app, extra["key"])
    entry, metric = log_entry(extra["svc"]), extra["metric"]
    assert key.post("/api/logs/batch", json=[entry] * 20).status_code == 201  # the burst
    assert stored_entries(app) == (20, 0)
    for method, path, body in (
        ("post", "/api/logs", entry),
        ("post", "/api/logs/batch", [entry] * 5),
        ("post", f"/api/metrics/cpu/{metric}/data", [{"load": 1.0}] * 5),
        ("put", f"/api/metrics/cpu/{metric}", {"data": [{"load": 1.0}] * 5}),
    ):
        assert_ingest_429(getattr(key, method)(path, json=body), most_seconds=5)
    assert stored_entries(app) == (20, 0)


def test_the_budget_is_per_project_and_users_are_not_charged(ingest_app):
    app, extra = ingest_app
    key = key_client(app, extra["key"])
    entry = log_entry(extra["svc"])
    assert key.post("/api/logs/batch", json=[entry] * 20).status_code == 201
    assert_ingest_429(key.post("/api/logs", json=entry), most_seconds=1)
    other = key_client(app, extra["other_key"])
    assert other.post("/api/logs/batch", json=[log_entry(extra["other"])] * 20).status_code == 201
    editor = client_as(app, "editor")  # a user's writes: the per-request budget only
    assert editor.post("/api/logs/batch", json=[entry] * 30).status_code == 201
    assert stored_entries(app) == (70, 0)


def test_a_request_larger_than_the_burst_is_429_and_says_so(ingest_app):
    app, extra = ingest_app
    key = key_client(app, extra["key"])
    response = key.post("/api/logs/batch", json=[log_entry(extra["svc"])] * 21)
    assert_error(response, 429)
    assert "exceed" in response.json["message"]
    assert int(response.headers["Retry-After"]) == 20
    assert stored_entries(app) == (0, 0)
    assert key.post("/api/logs/batch", json=[log_entry(extra["svc"])] * 20).status_code == 201


def test_a_refused_or_invalid_write_is_not_charged(ingest_app):
    app, extra = ingest_app
    key = key_client(app, extra["key"])
    entry = log_entry(extra["svc"])
    assert key.post("/api/logs/batch", json=[entry] * 21).status_code == 429
    bad = {**entry, "service_id": str(extra["other"].id)}  # another project's service: 422
    assert key.post("/api/logs/batch", json=[entry, bad]).status_code == 422
    assert key.post("/api/logs/batch", json=[entry] * 20).status_code == 201  # still whole


def test_charge_ingest_at_the_service_layer(ingest_app):
    app, extra = ingest_app
    pid = extra["svc"].project_id
    entries = [{**log_entry(extra["svc"]), "project_id": pid, "service_id": extra["svc"].id}]
    with app.test_request_context():
        charge_ingest(pid, 15)
        charge_ingest(None, 10**9)  # a user's write: not limited to a project, free
        charge_ingest(pid, 0)
        with pytest.raises(IngestRateLimited) as refused:
            logs.create_logs(entries * 10, scope=pid)
        assert refused.value.code == 429
        assert 1 <= refused.value.retry_after <= 10
        assert LogEntry.objects.count() == 0
        assert len(logs.create_logs(entries * 10, scope=None)) == 10
        assert len(logs.create_logs(entries * 5, scope=pid)) == 5


@pytest.mark.parametrize(
    "settings",
    [{"INGEST_RATE_PER_SECOND": 0}, {"RATELIMIT_ENABLED": False}],
    ids=["no ingest budget", "no rate limits at all"],
)
def test_the_ingest_budget_can_be_switched_off(make_app, settings):
    app = make_app(**{"RATELIMIT_ENABLED": True, "INGEST_BURST": 1, **settings})
    with app.test_request_context():
        for _ in range(3):
            charge_ingest(make_project().id, 10**9)  # would be refused with a budget


@pytest.mark.parametrize(
    ("rate", "burst", "amount", "seconds"),
    [(5000, 20000, 20000, 4), (1, 20, 20, 20), (3, 10, 12, 4), (10, 5, 10, 1), (7, 7, 7, 1)],
)
def test_the_budget_is_rate_times_a_whole_window_of_burst_over_rate(rate, burst, amount, seconds):
    item = ingest_budget(rate, burst)
    assert (item.amount, item.get_expiry()) == (amount, seconds)


def test_the_defaults_are_generous():
    assert Config.INGEST_RATE_PER_SECOND == 5000
    assert Config.INGEST_BURST == 20000


def test_the_ingest_budget_is_counted_in_the_limiter_storage(ingest_app, redis_url):
    """With Redis, every worker and instance shares the budget: a second app on the same
    Redis finds it spent.  Without, it is counted in process memory."""
    app, extra = ingest_app
    key = key_client(app, extra["key"])
    assert key.post("/api/logs/batch", json=[log_entry(extra["svc"])] * 20).status_code == 201
    if not redis_url:
        assert type(limiter.storage).__name__ == "MemoryStorage"
        return
    import redis

    assert redis.Redis.from_url(redis_url).keys("*polymicro:limits*ingest*")
    config = {**app.config, "RATELIMIT_ENABLED": True}
    second = create_app({k: v for k, v in config.items() if k.isupper()})
    response = key_client(second, extra["key"]).post("/api/logs", json=log_entry(extra["svc"]))
    assert_ingest_429(response, most_seconds=1)


def test_an_unreachable_limiter_storage_leaves_ingest_working_and_limited_in_memory(make_app):
    app = make_app(
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0",  # nothing listens on port 1
        INGEST_RATE_PER_SECOND=1,
        INGEST_BURST=20,
    )
    with app.app_context():
        svc = make_service()
        raw = auth.create_api_key(svc.project_id, "ci", None)["key"]
    key = key_client(app, raw)
    assert key.post("/api/logs/batch", json=[log_entry(svc)] * 20).status_code == 201
    assert_ingest_429(key.post("/api/logs", json=log_entry(svc)), most_seconds=1)
    assert stored_entries(app) == (20, 0)


# --- API8: CORS -----------------------------------------------------------------------


def preflight(client, origin, path=PROJECTS):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )


def test_no_cors_headers_by_default(app):
    client = client_as(app, "viewer")
    for response in (preflight(client, "https://dash.example"), client.get(
        PROJECTS, headers={"Origin": "https://dash.example"}
    )):  # fmt: skip
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_configured_origin_gets_cors_without_credentials(make_app):
    app = make_app(CORS_ORIGINS="https://dash.example, https://ops.example")
    client = client_as(app, "viewer")
    response = preflight(client, "https://dash.example")
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert "Access-Control-Allow-Credentials" not in response.headers
    assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    actual = client.get(PROJECTS, headers={"Origin": "https://ops.example"})
    assert actual.headers["Access-Control-Allow-Origin"] == "https://ops.example"
    assert "X-Pagination" in actual.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in actual.headers


def test_another_origin_gets_no_cors(make_app):
    app = make_app(CORS_ORIGINS="https://dash.example")
    client = client_as(app, "viewer")
    for origin in ("https://evil.example", "https://dash.example.evil.example", "null"):
        assert "Access-Control-Allow-Origin" not in preflight(client, origin).headers
        assert (
            "Access-Control-Allow-Origin"
            not in client.get(PROJECTS, headers={"Origin": origin}).headers
        )


def test_a_wildcard_origin_never_comes_with_credentials(make_app):
    app = make_app(CORS_ORIGINS="*")
    client = client_as(app, "viewer")
    for response in (
        preflight(client, "https://anywhere.example"),
        client.get(PROJECTS, headers={"Origin": "https://anywhere.example"}),
    ):
        # flask-cors echoes the origin rather than "*"; either way, no credentials.
        assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://anywhere.example")
        assert "Access-Control-Allow-Credentials" not in response.headers


# --- API8: security headers -----------------------------------------------------------

HARDENING = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def test_api_responses_carry_the_security_headers_and_a_csp(app, anon_client):
    client = client_as(app, "viewer")
    for response in (
        client.get(PROJECTS),  # 200
        anon_client.get(PROJECTS),  # 401
        client.post(PROJECTS, json={"name": "x"}),  # 403
        client.get(f"{PROJECTS}/0123456789abcdef01234567"),  # 404
        client.get("/api/nothing-here"),  # no route
    ):
        for header, value in HARDENING.items():
            assert response.headers[header] == value, (response.status_code, header)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp


def test_the_docs_page_has_the_headers_and_its_own_csp(anon_client):
    response = anon_client.get("/docs")
    assert response.status_code == 200
    # The docs pages' CSP is polymicro/docs.py's (tests/test_docs_offline.py).
    assert "script-src 'self' 'sha256-" in response.headers["Content-Security-Policy"]
    for header, value in HARDENING.items():
        assert response.headers[header] == value


def test_auth_responses_are_never_cached(app, anon_client):
    make_user(app)
    for response in (
        anon_client.post(LOGIN, json={"username": "alice", "password": PASSWORD}),
        anon_client.post(LOGIN, json={"username": "alice", "password": "wrong password"}),
        anon_client.get("/api/auth/me"),
        client_as(app, "admin").get("/api/auth/users"),
    ):
        assert response.headers["Cache-Control"] == "no-store"


def test_hsts_is_sent_over_https_only(app):
    client = client_as(app, "viewer")
    assert "Strict-Transport-Security" not in client.get(PROJECTS).headers
    secure = client.get(PROJECTS, base_url="https://localhost")
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")


def test_the_openapi_document_declares_who_may_call_what(anon_client):
    spec = anon_client.get("/openapi.json").json
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert "pmk_" in schemes["bearerAuth"]["description"]  # keys as bearer tokens too
    assert schemes["apiKey"]["in"] == "header"
    assert schemes["apiKey"]["name"] == "X-API-Key"
    assert schemes["basicAuth"]["scheme"] == "basic"  # a key as the password
    paths = spec["paths"]
    assert paths["/api/auth/login"]["post"]["security"] == []
    assert paths["/api/projects/"]["get"]["security"] == [{"bearerAuth": []}]
    key_forms = [{"bearerAuth": []}, {"apiKey": []}, {"basicAuth": []}]
    assert paths["/api/logs/"]["post"]["security"] == key_forms
    assert "Basic" in paths["/api/logs/"]["post"]["description"]  # the three key forms
    assert "429" in paths["/api/logs/batch"]["post"]["responses"]  # the ingest budget
    assert "429" not in paths["/api/projects/"]["post"]["responses"]


# --- injection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"username": {"$ne": ""}, "password": {"$ne": ""}},
        {"username": "alice", "password": {"$ne": ""}},
        {"username": {"$regex": ".*"}, "password": PASSWORD},
        {"username": ["alice"], "password": PASSWORD},
    ],
)
def test_operators_at_login_are_422_not_a_login(app, anon_client, payload):
    make_user(app)
    response = anon_client.post(LOGIN, json=payload)
    assert_error(response, 422)
    assert "access_token" not in response.get_data(as_text=True)


def test_operator_shaped_form_fields_at_login_are_422(app, anon_client):
    make_user(app)
    response = anon_client.post(LOGIN, data={"username[$ne]": "", "password[$ne]": ""})
    assert_error(response, 422)


def test_operator_text_is_a_plain_string_at_login(app, anon_client):
    make_user(app)
    response = anon_client.post(LOGIN, json={"username": '{"$ne": ""}', "password": PASSWORD})
    assert_401(response)


def test_an_operator_as_api_key_is_401(app, anon_client):
    assert_401(anon_client.get(PROJECTS, headers={"X-API-Key": '{"$ne": ""}'}))


def test_operators_in_query_strings_are_ignored_or_literal(app, ctx):
    make_project(name="one", owner="alice")
    make_project(name="two", owner="bob")
    client = client_as(app, "viewer")

    def names(query):
        response = client.get(f"{PROJECTS}?{query}")
        assert response.status_code == 200, response.json
        return sorted(p["name"] for p in response.json)

    assert names("owner=alice") == ["one"]
    assert names("owner[$ne]=x") == ["one", "two"]  # an unknown parameter: ignored
    assert names("owner=%7B%22%24ne%22%3A%22x%22%7D") == []  # owner == '{"$ne":"x"}'
    assert names("q=.%2A") == []  # q is literal text, not a pattern


def test_operators_in_bodies_are_422(client, ctx):
    svc = make_service()
    response = client.post(
        "/api/logs",
        json={
            "project_id": {"$ne": None},
            "service_id": str(svc.id),
            "message": "m",
            "severity": "info",
        },
    )
    assert_error(response, 422)
    assert_error(client.post(PROJECTS, json={"name": {"$gt": ""}}), 422)
    assert LogEntry.objects.count() == 0


# --- API4: sizes ----------------------------------------------------------------------


def test_the_body_cap_is_20_mib_by_default(app):
    assert Config.MAX_CONTENT_LENGTH == 20 * 1024 * 1024
    assert app.config["MAX_CONTENT_LENGTH"] == 20 * 1024 * 1024


def test_a_body_over_the_cap_is_413_and_nothing_is_stored(make_app):
    app = make_app(MAX_CONTENT_LENGTH=1024)
    with app.app_context():
        svc = make_service()
    client = client_as(app, "editor")
    entry = {"project_id": str(svc.project_id), "service_id": str(svc.id), "severity": "info"}
    response = client.post("/api/logs", json={**entry, "message": "x" * 2000})
    assert_error(response, 413)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.post("/api/logs", json={**entry, "message": "small"}).status_code == 201
    assert_error(app.test_client().post(LOGIN, data={"username": "a", "password": "b" * 2000}), 413)
    with app.app_context():
        assert LogEntry.objects.count() == 1


@pytest.mark.parametrize(
    "path", [PROJECTS, "/api/services", "/api/logs", "/api/metrics/cpu", "/api/auth/users"]
)
def test_page_size_over_1000_is_422(client, path):
    assert_error(client.get(f"{path}?page_size=1001"), 422)
    assert client.get(f"{path}?page_size=1000").status_code == 200


def test_a_log_batch_over_1000_entries_is_422_and_nothing_is_stored(client, ctx):
    svc = make_service()
    entry = {
        "project_id": str(svc.project_id),
        "service_id": str(svc.id),
        "message": "m",
        "severity": "info",
    }
    assert_error(client.post("/api/logs/batch", json=[entry] * 1001), 422)
    assert LogEntry.objects.count() == 0


def test_metric_points_over_10000_per_write_are_422(client, ctx):
    svc = make_service()
    created = client.post(
        "/api/metrics/cpu", json={"project_id": str(svc.project_id), "service_name": svc.name}
    )
    assert created.status_code == 201
    points = [{"load": 1.0}] * 10001
    assert_error(client.post(f"/api/metrics/cpu/{created.json['id']}/data", json=points), 422)


def test_a_huge_password_is_refused_before_hashing(app, anon_client):
    make_user(app)
    response = anon_client.post(LOGIN, json={"username": "alice", "password": "x" * 100_000})
    assert_error(response, 422)


# --- API8: errors without internals ----------------------------------------------------


def test_an_unexpected_error_is_a_500_without_internals(make_app):
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.get("/api/explode")
    def explode():
        raise RuntimeError("secret internals: mongodb://admin:hunter2@db")

    response = app.test_client().get("/api/explode")
    assert_error(response, 500)
    text = response.get_data(as_text=True)
    assert "hunter2" not in text
    assert "Traceback" not in text
    assert "RuntimeError" not in text
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_jwt_library_error_text_is_not_echoed(app, anon_client):
    token = other_secret(app)
    response = anon_client.get(PROJECTS, headers={"Authorization": f"Bearer {token}"})
    assert_401(response)
    assert "Signature" not in response.json["message"]
    assert set(response.json) == {"code", "status", "message"}


# --- the access decorator -------------------------------------------------------------


def test_access_refuses_an_unknown_role_at_import_time():
    with pytest.raises(ValueError, match="unknown role"):
        access("root")


def test_a_user_is_not_limited_to_a_project_but_a_key_is(app, ctx):
    svc = make_service()
    raw = auth.create_api_key(svc.project_id, "ci", None)["key"]
    scopes = {}

    @app.get("/api/whoami")
    @access("editor", keys=True)
    def whoami():
        scopes[request.headers.get("X-Who")] = project_scope()
        return {}

    client_as(app, "admin").get("/api/whoami", headers={"X-Who": "user"})
    app.test_client().get("/api/whoami", headers={"X-Who": "key", "X-API-Key": raw})
    assert scopes == {"user": None, "key": svc.project_id}
