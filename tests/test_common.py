"""Conventions every endpoint shares: time format, error shape, database outage, docs.

The health probes are tested in ``test_operations_api.py``; the body-size cap, with the
other hostile bodies, in ``test_hostile_inputs.py``.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from polymicro import check_database, create_app
from polymicro.common.timeutil import format_time, parse_time
from polymicro.config import load_config
from tests.conftest import client_as, free_port, make_config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T18:10:47.123Z", datetime(2026, 11, 26, 18, 10, 47, 123000)),
        ("2026-11-26T18:10:47.123456z", datetime(2026, 11, 26, 18, 10, 47, 123000)),
        ("2026-11-26T20:10:47+02:00", datetime(2026, 11, 26, 18, 10, 47)),
        ("2026-11-26T13:10:47-05:00", datetime(2026, 11, 26, 18, 10, 47)),
        ("2026-11-26T18:10:47", datetime(2026, 11, 26, 18, 10, 47)),
        ("2026-11-26 18:10:47", datetime(2026, 11, 26, 18, 10, 47)),
        ("2026-11-26", datetime(2026, 11, 26)),
    ],
)
def test_parse_time_accepts_the_contract_forms(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-11-31", "26/11/2026", "1" * 100, "now"])
def test_parse_time_rejects_the_rest(text):
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError is the contract
        parse_time(text)


def test_format_time_is_rfc3339_utc_milliseconds():
    assert format_time(datetime(2026, 11, 26, 18, 10, 47, 123999)) == "2026-11-26T18:10:47.123Z"


def test_environment_overrides_settings(monkeypatch):
    monkeypatch.setenv("POLYMICRO_MONGODB_TIMEOUT_MS", "1234")
    monkeypatch.setenv("POLYMICRO_REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("POLYMICRO_MONGODB_MOCK", "yes")
    settings = load_config()
    assert settings["MONGODB_TIMEOUT_MS"] == 1234
    assert settings["REDIS_URL"] == "redis://example:6379/1"
    assert settings["MONGODB_MOCK"] is True


def test_bad_environment_value_is_a_readable_error(monkeypatch):
    monkeypatch.setenv("POLYMICRO_MONGODB_TIMEOUT_MS", "soon")
    with pytest.raises(RuntimeError, match="POLYMICRO_MONGODB_TIMEOUT_MS"):
        load_config()


def test_openapi_and_docs_are_served(client):
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json["paths"]
    for path in (
        "/api/projects/",
        "/api/services/",
        "/api/logs/",
        "/api/metrics/cpu/",
        "/api/health",
    ):
        assert path in paths
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200


def test_if_match_is_documented_as_optional(client):
    spec = client.get("/openapi.json").json
    assert spec["components"]["parameters"]["IF_MATCH"]["required"] is False


def test_unknown_route_is_404_in_the_error_shape(client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert set(response.json) >= {"code", "status", "message"}


def test_unexpected_error_is_500_without_internals(app):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.route("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert "secret" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)
    assert response.json["code"] == 500


@pytest.fixture
def unreachable_app():
    """An app whose database does not answer (a closed local port)."""
    port = free_port()
    app = create_app(make_config(f"mongodb://127.0.0.1:{port}/x", MONGODB_TIMEOUT_MS=300))
    yield app
    from polymicro.extensions import close_db

    close_db()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/projects", None),
        ("post", "/api/projects", {"name": "x"}),
        ("get", "/api/projects/0123456789abcdef01234567", None),
        ("get", "/api/services", None),
        ("get", "/api/logs", None),
        ("get", "/api/metrics/cpu", None),
    ],
)
def test_unreachable_database_is_503_with_a_clear_message(unreachable_app, method, path, body):
    response = getattr(client_as(unreachable_app), method)(path, json=body)
    assert response.status_code == 503
    assert response.json["message"] == "The database is unavailable; try again shortly."


def test_startup_logs_a_readable_message_when_the_database_is_down(caplog):
    port = free_port()
    config = make_config(f"mongodb://127.0.0.1:{port}/x", MONGODB_TIMEOUT_MS=200, TESTING=False)
    with caplog.at_level("ERROR"):
        check_database(create_app(config))
    from polymicro.extensions import close_db

    close_db()
    assert f"Cannot reach MongoDB at 127.0.0.1:{port}" in caplog.text
