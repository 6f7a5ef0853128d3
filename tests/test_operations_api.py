"""/api/health (the contract's check), /api/health/live and /api/health/ready."""

from __future__ import annotations

import socket
import time

import pytest

from polymicro import __version__, create_app
from polymicro.extensions import cache, close_db
from polymicro.operations import service
from tests.conftest import free_port, make_config

HEALTH, LIVE, READY = "/api/health", "/api/health/live", "/api/health/ready"
PROBE_LIMIT_SECONDS = 1.5  # the brief's bound; the service's own budget is 1 s
ALL_OK = {"database": "ok", "cache": "ok"}


def _app_on(uri: str):
    """An app on ``uri`` with a patient request timeout (5 s): the probes must not use it."""
    return create_app(make_config(uri))


@pytest.fixture
def down_app():
    """Nothing listens on the database's port."""
    yield _app_on(f"mongodb://127.0.0.1:{free_port()}/x")
    close_db()


@pytest.fixture
def hung_app():
    """The database's port accepts connections (the kernel completes them) but nothing
    ever answers: the case a plain ping would wait on for its whole socket timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield _app_on(f"mongodb://127.0.0.1:{listener.getsockname()[1]}/x")
        close_db()


def timed_get(app, path):
    client = app.test_client()  # no credentials: the probes are public
    start = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - start


# --- healthy ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [HEALTH, READY])
def test_health_and_ready_answer_the_contract_when_all_is_well(app, path):
    response = app.test_client().get(path)

    assert response.status_code == 200
    assert response.json == {"status": "ok", "version": __version__, "checks": ALL_OK}
    assert response.headers["Cache-Control"] == "no-store"


def test_live_answers_status_and_version_only(app):
    response = app.test_client().get(LIVE)

    assert response.status_code == 200
    assert response.json == {"status": "ok", "version": __version__}
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", [f"{HEALTH}/", f"{LIVE}/", f"{READY}/"])
def test_trailing_slash_works(app, path):
    assert app.test_client().get(path).status_code == 200


def test_the_openapi_document_lists_the_three_probes(app):
    paths = app.test_client().get("/openapi.json").json["paths"]
    assert {HEALTH, LIVE, READY} <= set(paths)
    assert set(paths[READY]["get"]["responses"]) >= {"200", "503"}


# --- database down or hung --------------------------------------------------------------


@pytest.mark.parametrize("path", [HEALTH, READY])
def test_an_unreachable_database_is_a_503_within_the_budget(down_app, path):
    response, elapsed = timed_get(down_app, path)

    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["checks"] == {"database": "unavailable", "cache": "ok"}
    assert response.json["version"] == __version__
    assert elapsed < PROBE_LIMIT_SECONDS


@pytest.mark.parametrize("path", [HEALTH, READY])
def test_a_hung_database_cannot_hold_the_probe(hung_app, path):
    response, elapsed = timed_get(hung_app, path)

    assert response.status_code == 503
    assert response.json["checks"] == {"database": "unavailable", "cache": "ok"}
    assert elapsed < PROBE_LIMIT_SECONDS


@pytest.mark.parametrize("fixture", ["down_app", "hung_app"])
def test_live_is_200_while_the_database_is_down(request, fixture, monkeypatch):
    def no_database(*args, **kwargs):
        raise AssertionError("liveness touched the database")

    monkeypatch.setattr(service, "ping_db", no_database)
    response, elapsed = timed_get(request.getfixturevalue(fixture), LIVE)

    assert response.status_code == 200
    assert response.json == {"status": "ok", "version": __version__}
    assert elapsed < 0.5


# --- cache down or hung -----------------------------------------------------------------


@pytest.fixture
def backend(app):
    with app.app_context():
        return cache.cache


@pytest.mark.parametrize(
    "broken_set",
    [
        pytest.param(lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")), id="raises"),
        pytest.param(lambda *a, **k: False, id="refuses"),
    ],
)
def test_a_failing_cache_is_named(app, backend, monkeypatch, broken_set):
    monkeypatch.setattr(backend, "set", broken_set)
    response = app.test_client().get(READY)

    assert response.status_code == 503
    assert response.json["checks"] == {"database": "ok", "cache": "unavailable"}


def test_a_cache_that_returns_something_else_is_named(app, backend, monkeypatch):
    monkeypatch.setattr(backend, "get", lambda key: "not what was written")
    response = app.test_client().get(HEALTH)

    assert response.status_code == 503
    assert response.json["checks"] == {"database": "ok", "cache": "unavailable"}


def test_a_hung_cache_cannot_hold_the_probe(app, backend, monkeypatch):
    def slow_set(*args, **kwargs):
        time.sleep(2.5)
        return True

    monkeypatch.setattr(backend, "set", slow_set)
    response, elapsed = timed_get(app, READY)

    assert response.status_code == 503
    assert response.json["checks"] == {"database": "ok", "cache": "unavailable"}
    assert elapsed < PROBE_LIMIT_SECONDS


def test_checks_run_side_by_side_within_one_budget(app, backend, monkeypatch):
    """A database and a cache that each take 0.6 s: 0.6 s in all, not 1.2 s."""
    real_ping, real_set = service.ping_db, backend.set

    def slow_ping():
        time.sleep(0.6)
        real_ping()

    def slow_set(*args, **kwargs):
        time.sleep(0.6)
        return real_set(*args, **kwargs)

    monkeypatch.setattr(service, "ping_db", slow_ping)
    monkeypatch.setattr(backend, "set", slow_set)
    response, elapsed = timed_get(app, READY)

    assert response.status_code == 200, response.json
    assert elapsed < 1.0


def test_with_every_check_slot_taken_the_probe_answers_at_once(app):
    pool = service._get_pool()
    taken = 0  # waits for checks an earlier test left running (a hung cache sleeps on)
    while taken < service.MAX_IN_FLIGHT and pool.slots.acquire(timeout=5):
        taken += 1
    try:
        response, elapsed = timed_get(app, READY)
    finally:
        for _ in range(taken):
            pool.slots.release()

    assert taken == service.MAX_IN_FLIGHT
    assert response.status_code == 503
    assert response.json["checks"] == {"database": "unavailable", "cache": "unavailable"}
    assert elapsed < 0.2
    assert app.test_client().get(READY).status_code == 200  # slots given back: ready again
