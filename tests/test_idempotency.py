"""Idempotency-Key on the ingest POSTs (polymicro/common/idempotency.py).

Through the API with authentication on, at the service layer (claim / complete / release
with a controlled clock), and across workers: on the wire run (SecantusDB) a gunicorn with
two workers gets the same request from several connections at once.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Response

from polymicro.common import idempotency
from polymicro.common.timeutil import utcnow
from polymicro.errors import Conflict, InvalidInput
from polymicro.logs.models import LogEntry
from polymicro.metrics.models import CpuPoint
from polymicro_dev import GunicornSettings, Processes, start_gunicorn
from tests.conftest import INSTANCE_DIR, USES_REAL_DB, client_as


@pytest.fixture
def world(client):
    project = client.post("/api/projects", json={"name": "Shop"}).json
    svc = client.post("/api/services", json={"project_id": project["id"], "name": "api"}).json
    metric = client.post(
        "/api/metrics/cpu", json={"project_id": project["id"], "service_name": "api"}
    ).json
    entry = {"project_id": project["id"], "service_id": svc["id"], "severity": "info"}
    return {"project": project, "service": svc, "metric": metric, "entry": entry}


def _log(world, message="hello"):
    return {**world["entry"], "message": message}


def _key(value):
    return {"Idempotency-Key": value}


# --- through the API -------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["single", "batch", "points"])
def test_a_retry_gets_the_first_answer_and_stores_nothing_twice(client, world, endpoint):
    path, body = {
        "single": ("/api/logs", _log(world)),
        "batch": ("/api/logs/batch", [_log(world, "a"), _log(world, "b")]),
        "points": (f"/api/metrics/cpu/{world['metric']['id']}/data", [{"load": 1.0}]),
    }[endpoint]
    first = client.post(path, json=body, headers=_key("k-1"))
    again = client.post(path, json=body, headers=_key("k-1"))
    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    stored = {"single": 1, "batch": 2, "points": 1}[endpoint]
    assert LogEntry.objects.count() + CpuPoint.objects.count() == stored


def test_the_same_key_with_another_body_is_422_and_stores_nothing(client, world):
    assert client.post("/api/logs", json=_log(world), headers=_key("k")).status_code == 201
    other = client.post("/api/logs", json=_log(world, "other"), headers=_key("k"))
    assert other.status_code == 422
    assert "Idempotency-Key" in other.json["errors"]["headers"]
    assert LogEntry.objects.count() == 1


def test_the_same_key_on_another_endpoint_is_422(client, world):
    body = [{"load": 1.0}]
    assert client.post("/api/logs/batch", json=[_log(world)], headers=_key("k")).status_code == 201
    path = f"/api/metrics/cpu/{world['metric']['id']}/data"
    assert client.post(path, json=body, headers=_key("k")).status_code == 422
    assert CpuPoint.objects.count() == 0


def test_a_request_still_in_flight_is_409(client, world, app):
    body = _log(world)
    with app.test_request_context():
        held = _claim_as_the_client(app, client, "busy", "/api/logs", body)
    answer = client.post("/api/logs", json=body, headers=_key("busy"))
    assert answer.status_code == 409
    assert LogEntry.objects.count() == 0
    assert isinstance(held, idempotency.Claim)


def test_a_claim_left_by_a_dead_worker_is_taken_over_after_its_lease(
    client, world, app, monkeypatch
):
    body = _log(world)
    with app.test_request_context():
        _claim_as_the_client(app, client, "orphan", "/api/logs", body)
    later = utcnow() + timedelta(seconds=idempotency.LEASE_SECONDS + 1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: later)
    assert client.post("/api/logs", json=body, headers=_key("orphan")).status_code == 201
    replay = client.post("/api/logs", json=body, headers=_key("orphan"))
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert LogEntry.objects.count() == 1


def test_a_key_expires_after_its_hours(client, world, monkeypatch, app):
    body = _log(world)
    assert client.post("/api/logs", json=body, headers=_key("old")).status_code == 201
    hours = app.config["IDEMPOTENCY_KEY_HOURS"]
    almost = utcnow() + timedelta(hours=hours) - timedelta(minutes=1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: almost)
    replay = client.post("/api/logs", json=body, headers=_key("old"))
    assert replay.headers.get("Idempotent-Replayed") == "true"
    after = utcnow() + timedelta(hours=hours, minutes=1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: after)
    fresh = client.post("/api/logs", json=body, headers=_key("old"))
    assert fresh.status_code == 201
    assert "Idempotent-Replayed" not in fresh.headers
    assert LogEntry.objects.count() == 2


def test_a_failed_request_frees_its_key(client, world):
    bad = {**_log(world), "service_id": world["project"]["id"]}  # no such service
    assert client.post("/api/logs", json=bad, headers=_key("fix")).status_code == 422
    good = client.post("/api/logs", json=_log(world), headers=_key("fix"))
    assert good.status_code == 201
    assert "Idempotent-Replayed" not in good.headers
    assert LogEntry.objects.count() == 1


def test_keys_belong_to_their_caller(app, world):
    one, other = client_as(app, "editor"), client_as(app, "editor")  # two users
    for caller in (one, other):
        assert caller.post("/api/logs", json=_log(world), headers=_key("same")).status_code == 201
    assert LogEntry.objects.count() == 2


def test_an_api_key_is_a_caller_of_its_own(client, world, app):
    key = client.post(f"/api/projects/{world['project']['id']}/keys", json={"name": "w"}).json
    service = app.test_client()
    headers = {"X-API-Key": key["key"], **_key("svc")}
    first = service.post("/api/logs", json=_log(world), headers=headers)
    again = service.post("/api/logs", json=_log(world), headers=headers)
    by_user = client.post("/api/logs", json=_log(world), headers=_key("svc"))
    assert (first.status_code, again.status_code, by_user.status_code) == (201, 201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in by_user.headers
    assert LogEntry.objects.count() == 2


@pytest.mark.parametrize("value", ["", " ", "x" * 256, "clé", '"unterminated'])
def test_a_malformed_key_is_refused_and_stores_nothing(client, world, value):
    answer = client.post("/api/logs", json=_log(world), headers=_key(value))
    assert answer.status_code == 422
    assert LogEntry.objects.count() == 0


def test_a_quoted_key_is_the_same_as_a_bare_one(client, world):
    client.post("/api/logs", json=_log(world), headers=_key("abc"))
    again = client.post("/api/logs", json=_log(world), headers=_key('"abc"'))
    assert again.headers["Idempotent-Replayed"] == "true"


def test_without_the_header_nothing_changes(client, world):
    for _ in range(2):
        assert client.post("/api/logs", json=_log(world)).status_code == 201
    assert LogEntry.objects.count() == 2


def test_the_openapi_document_names_the_header(client):
    paths = client.get("/openapi.json").json["paths"]
    for path in ("/api/logs/", "/api/logs/batch", "/api/metrics/cpu/{metric_id}/data"):
        parameters = paths[path]["post"]["parameters"]
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in parameters)
        assert "409" in paths[path]["post"]["responses"]


def _claim_as_the_client(app, client, key, path, body):
    """Claim ``key`` for ``client``'s user as a request to ``path`` would."""
    import jwt

    token = client.environ_base["HTTP_AUTHORIZATION"].split()[1]
    user = jwt.decode(token, options={"verify_signature": False})["sub"]
    data = json.dumps(body).encode()
    print_ = idempotency.fingerprint("POST", path, b"", data)
    return idempotency.claim(f"user:{user}", key, print_, 24)


# --- the service layer -------------------------------------------------------------------


@pytest.fixture
def answer():
    return Response(b'{"ok": true}', 201, mimetype="application/json")


@pytest.mark.usefixtures("ctx")
def test_service_claim_complete_replay(answer):
    held = idempotency.claim("user:1", "k", "fp", 24)
    assert isinstance(held, idempotency.Claim)
    with pytest.raises(Conflict):
        idempotency.claim("user:1", "k", "fp", 24)
    idempotency.complete(held, answer)
    replay = idempotency.claim("user:1", "k", "fp", 24)
    assert isinstance(replay, idempotency.Replay)
    assert (replay.status, replay.body) == (201, b'{"ok": true}')
    assert replay.headers["Content-Type"] == "application/json"
    with pytest.raises(InvalidInput):
        idempotency.claim("user:1", "k", "another request", 24)
    assert isinstance(idempotency.claim("user:2", "k", "fp", 24), idempotency.Claim)


@pytest.mark.usefixtures("ctx")
def test_service_release_frees_the_key():
    held = idempotency.claim("user:1", "k", "fp", 24)
    idempotency.release(held)
    assert isinstance(idempotency.claim("user:1", "k", "another request", 24), idempotency.Claim)


@pytest.mark.usefixtures("ctx")
def test_service_a_request_that_outlived_its_lease_cannot_complete(monkeypatch, answer):
    held = idempotency.claim("user:1", "k", "fp", 24)
    later = utcnow() + timedelta(seconds=idempotency.LEASE_SECONDS + 1)
    monkeypatch.setattr(idempotency, "utcnow", lambda: later)
    taken = idempotency.claim("user:1", "k", "fp", 24)
    assert isinstance(taken, idempotency.Claim)
    with pytest.raises(Conflict):
        idempotency.complete(held, answer)
    idempotency.complete(taken, answer)


@pytest.mark.usefixtures("ctx")
def test_service_the_record_has_a_ttl_index_and_is_unique_per_caller_and_key():
    indexes = idempotency.IdempotencyRecord._get_collection().index_information()
    specs = {tuple(k for k, _ in v["key"]): v for v in indexes.values()}
    assert specs[("caller", "key")].get("unique") is True
    assert specs[("expires_at",)].get("expireAfterSeconds") == 0


def test_the_write_and_its_answer_commit_together(client, world, monkeypatch):
    # The answer cannot be recorded (the claim was taken over): where the database has
    # transactions the write is rolled back with it; without them (mongomock) the write
    # stays, as the module docstring says.
    def lost(held, response):
        raise Conflict("taken over")

    monkeypatch.setattr(idempotency, "complete", lost)
    answer = client.post("/api/logs", json=_log(world), headers=_key("lost"))
    assert answer.status_code == 409
    assert LogEntry.objects.count() == (0 if USES_REAL_DB else 1)


# --- across workers ---------------------------------------------------------------------


def test_concurrent_retries_across_workers_store_once(app, world, mongodb_uri):
    body = json.dumps(_log(world)).encode()
    token = client_as(app, "editor").environ_base["HTTP_AUTHORIZATION"]
    headers = {"Content-Type": "application/json", "Authorization": token}
    if mongodb_uri:  # two gunicorn workers on the session's database
        with _gunicorn(app, mongodb_uri) as port:
            statuses, bodies = _race(lambda: _post_http(port, body, headers), 8)
            replay = _post_http(port, body, headers)
    else:  # mongomock lives in this process: threads on one app

        def post():
            response = app.test_client().post(
                "/api/logs", data=body, headers={**headers, **_key("race")}
            )
            return response.status_code, response.data, dict(response.headers)

        statuses, bodies = _race(post, 8)
        replay = post()
    assert set(statuses) <= {201, 409}
    assert statuses.count(201) >= 1
    assert len(set(bodies)) == 1  # every 201 carries the one answer
    assert replay[0] == 201
    assert replay[2].get("Idempotent-Replayed") == "true"
    assert replay[1] == bodies[0]
    assert LogEntry.objects.count() == 1


def _race(send, n):
    results, start = [], threading.Barrier(n)

    def run():
        start.wait()
        results.append(send())

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = [r[0] for r in results]
    bodies = [r[1] for r in results if r[0] == 201]
    return statuses, bodies


def _post_http(port, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/logs", body=body, headers={**headers, **_key("race")})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


@contextlib.contextmanager
def _gunicorn(app, mongodb_uri):
    """gunicorn (2 workers) serving this test's database and secret, started and stopped
    by polymicro_dev (also when starting fails); yields its port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMICRO_")}
    env.update(
        POLYMICRO_MONGODB_URI=mongodb_uri,
        POLYMICRO_SECRET_KEY=app.config["SECRET_KEY"],
        POLYMICRO_RATELIMIT_ENABLED="false",
        POLYMICRO_INSTANCE_PATH=INSTANCE_DIR,
        POLYMICRO_GUNICORN_LOGLEVEL="warning",
        POLYMICRO_LOG_LEVEL="WARNING",
    )
    with (
        tempfile.TemporaryDirectory(prefix="polymicro-idempotency-") as logs,
        Processes() as procs,
    ):
        settings = GunicornSettings(workers=2, threads=4)
        yield start_gunicorn(procs, env, Path(logs), settings, ready_path="/api/health/live").port


def test_every_key_the_openapi_pattern_allows_is_accepted(client):
    """The fuzz run sends any value the documented schema allows (it once sent blanks,
    which strip to nothing): each must parse, and the refused examples must not match."""
    import re

    from hypothesis import given, settings
    from hypothesis import strategies as st

    paths = client.get("/openapi.json").json["paths"]
    (parameter,) = [
        p for p in paths["/api/logs/batch"]["post"]["parameters"] if p["name"] == "Idempotency-Key"
    ]
    pattern = parameter["schema"]["pattern"]

    @settings(max_examples=500, deadline=None)
    @given(st.from_regex(pattern, fullmatch=True).filter(lambda v: "\n" not in v))
    def accepted(value):
        assert len(value) <= parameter["schema"]["maxLength"]
        assert idempotency.parse_key(value)

    accepted()
    for refused in ["", " ", "   ", "x" * 256, "clé", '"unterminated', '""']:
        assert not re.match(pattern, refused), refused
