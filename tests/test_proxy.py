"""Trusted proxies (POLYMICRO_TRUSTED_PROXIES): behind the Ingress or the compose nginx,
every caller reaches the app from the proxy's address.  With the proxy trusted, the
per-address limits (login) count the client's address from X-Forwarded-For; without,
the X-Forwarded-* headers change nothing (anyone can send them)."""

from __future__ import annotations

import pytest
from werkzeug.middleware.proxy_fix import ProxyFix

from polymicro import create_app
from polymicro.config import load_config
from polymicro.extensions import close_db
from tests.conftest import make_config
from tests.limits_helpers import limited_app

PROXY = "10.0.0.9"  # where every request comes from: the proxy
LOGIN = "/api/auth/login"
WRONG = {"username": "nobody", "password": "wrong password"}


@pytest.fixture
def behind_proxy(mongodb_uri, redis_url):
    """``behind_proxy(hops)``: an app with a login limit of 2 per minute, trusting
    ``hops`` proxies, and a client whose every request comes from :data:`PROXY`."""

    def factory(hops: int):
        app = limited_app(
            mongodb_uri, redis_url, RATELIMIT_LOGIN="2 per minute", TRUSTED_PROXIES=hops
        )
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = PROXY
        return app, client

    yield factory
    close_db()


def _login(client, forwarded_for: str | None, path: str = LOGIN) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post(path, json=WRONG, headers=headers).status_code


def test_by_default_no_proxy_is_trusted():
    assert load_config()["TRUSTED_PROXIES"] == 0


def test_without_trusted_proxies_a_forged_forwarded_for_changes_nothing(behind_proxy):
    app, client = behind_proxy(0)
    assert not isinstance(app.wsgi_app, ProxyFix)
    assert _login(client, "203.0.113.1") == 401
    assert _login(client, "203.0.113.2") == 401
    # A third "client" is the same address to the limiter: the proxy's (or the forger's).
    assert _login(client, "203.0.113.3") == 429
    assert _login(client, None) == 429
    secure = client.get("/api/health/live", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in secure.headers  # still plain HTTP


def test_with_one_trusted_proxy_the_login_limit_counts_per_forwarded_address(behind_proxy):
    app, client = behind_proxy(1)
    assert isinstance(app.wsgi_app, ProxyFix)
    assert _login(client, "203.0.113.1") == 401
    assert _login(client, "203.0.113.1") == 401
    assert _login(client, "203.0.113.1") == 429  # that client's budget is spent
    assert _login(client, "203.0.113.2") == 401  # another client behind the same proxy
    assert _login(client, "203.0.113.2", "/api/v1/auth/login") == 401
    assert _login(client, "203.0.113.2") == 429
    # The proxy appends the address it saw: what the client wrote before it is ignored,
    # so a client cannot buy a fresh budget by forging the header.
    assert _login(client, "198.51.100.7, 203.0.113.1") == 429
    assert _login(client, "198.51.100.8, 203.0.113.1") == 429


def test_with_a_trusted_proxy_the_scheme_is_the_clients(behind_proxy):
    _app, client = behind_proxy(1)
    secure = client.get("/api/health/live", headers={"X-Forwarded-Proto": "https"})
    assert secure.headers["Strict-Transport-Security"].startswith("max-age=")
    plain = client.get("/api/health/live", headers={"X-Forwarded-Proto": "http"})
    assert "Strict-Transport-Security" not in plain.headers


def test_the_address_scheme_and_host_are_trusted_for_the_same_hops(behind_proxy):
    app, _client = behind_proxy(2)
    assert (app.wsgi_app.x_for, app.wsgi_app.x_proto, app.wsgi_app.x_host) == (2, 2, 2)
    assert app.wsgi_app.x_port == 0  # not asked for: the Host header carries the port
    assert app.wsgi_app.x_prefix == 0


def test_a_negative_number_of_proxies_stops_start_up():
    with pytest.raises(RuntimeError, match="POLYMICRO_TRUSTED_PROXIES"):
        create_app(make_config(TRUSTED_PROXIES=-1))


def test_the_setting_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("POLYMICRO_TRUSTED_PROXIES", "1")
    assert load_config()["TRUSTED_PROXIES"] == 1
