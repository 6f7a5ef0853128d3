"""/api/events through HTTP with authentication on: the audit trail of every catalog
write, cursor reads, the live stream (SSE) and stream tokens.

Streams run on a ManualClock: a stream's sleeps move the clock on at once, and the
clock's ``on_sleep`` hook makes writes "while the stream waits", so a whole stream life
takes milliseconds.
"""

from __future__ import annotations

import itertools
import json
import threading

import pytest
from bson import ObjectId
from flask import g

from polymicro.auth import service as auth
from polymicro.common import clock
from polymicro.events import service as events
from polymicro.events.models import EventCounter
from polymicro.security import Principal
from tests.conftest import client_as, token_for
from tests.factories import make_project, make_service

ADMIN_ID = str(ObjectId())


def parse_sse(text: str) -> list[dict]:
    """SSE blocks as dicts: ``id``, ``event``, ``retry``, ``data`` (JSON when it is),
    ``comments``."""
    blocks = []
    for raw in text.split("\n\n"):
        if not raw.strip():
            continue
        block: dict = {"comments": []}
        data = []
        for line in raw.split("\n"):
            if line.startswith(":"):
                block["comments"].append(line[1:].strip())
                continue
            field, _, value = line.partition(": ")
            if field == "data":
                data.append(value)
            else:
                block[field] = value
        if data:
            text_data = "\n".join(data)
            try:
                block["data"] = json.loads(text_data)
            except ValueError:
                block["data"] = text_data
        blocks.append(block)
    return blocks


def event_blocks(blocks: list[dict]) -> list[dict]:
    return [b for b in blocks if "data" in b and "event" not in b]


def once(action):
    """An ``on_sleep`` hook that runs ``action`` at the first sleep only."""
    done = []

    def hook(_clock):
        if not done:
            done.append(True)
            action()

    return hook


@pytest.fixture
def admin(app):
    """A client with an admin token whose user id is ADMIN_ID."""
    test_client = app.test_client()
    token = token_for(app, "admin", ADMIN_ID)
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return test_client


@pytest.fixture
def manual(app):
    app.config["STREAM_MAX_SECONDS"] = 30
    with clock.use(clock.ManualClock()) as manual_clock:
        yield manual_clock


def stored(app) -> list[dict]:
    with app.app_context():
        return events.read_events(after=0, limit=1000)["events"]


def counter(app):
    with app.app_context():
        return EventCounter._get_collection().find_one({"_id": "events"})


@pytest.fixture
def world(app):
    with app.app_context():
        project = make_project(name="Shop")
        other = make_project(name="Other")
        svc = make_service(project, name="api")
        key = auth.create_api_key(project.id, "ci", "admin")
        user = auth.register_user(
            {"username": "target", "email": "t@example.com", "password": "password1"},
            by_admin=True,
        )
    return {
        "pid": str(project.id),
        "oid": str(other.id),
        "sid": str(svc.id),
        "kid": str(key["id"]),
        "uid": str(user["id"]),
        "key": key["key"],
    }


# --- every catalog write: exactly one event, with the actor and the changes ----------------

WRITES = [
    ("POST", "/api/projects", {"name": "New"}, 201, "project.created", None),
    (
        "PATCH",
        "/api/projects/{pid}",
        {"owner": "ops"},
        200,
        "project.updated",
        {"owner": {"before": None, "after": "ops"}},
    ),
    (
        "PUT",
        "/api/projects/{pid}",
        {"description": "d", "tags": ["x"]},
        200,
        "project.updated",
        {"description": {"before": "", "after": "d"}, "tags": {"before": [], "after": ["x"]}},
    ),
    ("DELETE", "/api/projects/{pid}", None, 204, "project.deleted", None),
    ("POST", "/api/services", {"project_id": "{pid}", "name": "web"}, 201, "service.created", None),
    (
        "PATCH",
        "/api/services/{sid}",
        {"status": "running"},
        200,
        "service.updated",
        {"status": {"before": "Unknown", "after": "Running"}},
    ),
    (
        "PUT",
        "/api/services/{sid}",
        {"port": 81, "name": "API2"},
        200,
        "service.updated",
        {"port": {"before": None, "after": 81}, "name": {"before": "api", "after": "API2"}},
    ),
    ("DELETE", "/api/services/{sid}", None, 204, "service.deleted", None),
    ("POST", "/api/projects/{pid}/keys", {"name": "deploy"}, 201, "api_key.created", None),
    ("DELETE", "/api/projects/{pid}/keys/{kid}", None, 204, "api_key.revoked", None),
    (
        "PATCH",
        "/api/auth/users/{uid}",
        {"role": "editor"},
        200,
        "user.updated",
        {"role": {"before": "viewer", "after": "editor"}},
    ),
    (
        "PATCH",
        "/api/auth/users/{uid}",
        {"is_active": False},
        200,
        "user.updated",
        {"is_active": {"before": True, "after": False}},
    ),
]


def _fill(value, world):
    if isinstance(value, str):
        return value.format(**world)
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind", "changes"),
    WRITES,
    ids=[f"{w[0]} {w[1]} {w[4]}" for w in WRITES],
)
def test_a_catalog_write_emits_one_event_with_actor_and_changes(
    app, admin, world, method, path, body, status, kind, changes
):
    before = stored(app)
    response = admin.open(
        _fill(path, world), method=method, json=_fill(body, world), headers={"X-Request-ID": "r-42"}
    )
    assert response.status_code == status, response.get_json()
    new = stored(app)[len(before) :]
    assert len(new) == 1
    (event,) = new
    assert event["type"] == kind
    assert event["actor"] == {"kind": "user", "id": ADMIN_ID, "name": "test-admin"}
    assert event["request_id"] == "r-42"
    assert event["changes"] == changes
    subject_id = response.json["id"] if status == 201 else path.rsplit("/", 1)[1].strip("{}")
    assert event["subject"]["id"] == world.get(subject_id, subject_id)
    if kind.startswith(("project", "service", "api_key")):
        expected_project = response.json["id"] if kind == "project.created" else world["pid"]
        assert str(event["project_id"]) == expected_project
    else:
        assert event["project_id"] is None
    assert world["key"] not in json.dumps(event, default=str)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/api/projects/{pid}", {"name": "Shop"}),
        ("PUT", "/api/services/{sid}", {"name": "api"}),
        ("PATCH", "/api/auth/users/{uid}", {"role": "viewer"}),
    ],
)
def test_a_write_that_changes_nothing_emits_nothing(app, admin, world, method, path, body):
    before = counter(app)
    assert admin.open(_fill(path, world), method=method, json=body).status_code == 200
    assert counter(app) == before


def test_revoking_a_revoked_key_emits_nothing_more(app, admin, world):
    path = _fill("/api/projects/{pid}/keys/{kid}", world)
    assert admin.delete(path).status_code == 204
    after_first = counter(app)
    assert admin.delete(path).status_code == 204
    assert counter(app) == after_first


# A fixed id that names nothing: test ids must be the same in every pytest-xdist worker.
UNKNOWN_ID = "65f0c0ffee0000000000c0de"
FAILURES = [
    ("POST", "/api/projects", {"name": ""}, "admin", 422),
    ("POST", "/api/projects", {"name": "shop"}, "admin", 409),
    ("POST", "/api/projects", {"name": "x", "id": "y"}, "admin", 422),
    ("PATCH", "/api/projects/{pid}", {"name": "OTHER"}, "admin", 409),
    ("PATCH", f"/api/projects/{UNKNOWN_ID}", {"owner": "x"}, "admin", 404),
    ("DELETE", "/api/projects/{pid}", None, "editor", 403),
    ("POST", "/api/projects", {"name": "x"}, "viewer", 403),
    ("POST", "/api/services", {"project_id": UNKNOWN_ID, "name": "x"}, "admin", 422),
    ("POST", "/api/services", {"project_id": "{pid}", "name": "API"}, "admin", 409),
    ("PATCH", "/api/services/{sid}", {"project_id": "{oid}"}, "admin", 422),
    ("PATCH", "/api/services/{sid}", {"port": 0}, "admin", 422),
    ("DELETE", f"/api/services/{UNKNOWN_ID}", None, "admin", 404),
    ("POST", f"/api/projects/{UNKNOWN_ID}/keys", {"name": "k"}, "admin", 404),
    ("DELETE", f"/api/projects/{{pid}}/keys/{UNKNOWN_ID}", None, "admin", 404),
    ("PATCH", f"/api/auth/users/{UNKNOWN_ID}", {"role": "editor"}, "admin", 404),
    ("PATCH", "/api/auth/users/{uid}", {"role": "owner"}, "admin", 422),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "role", "status"),
    FAILURES,
    ids=[f"{f[0]} {f[1]} {f[4]}" for f in FAILURES],
)
def test_a_failed_write_emits_no_event(app, world, method, path, body, role, status):
    before = counter(app)
    response = client_as(app, role).open(_fill(path, world), method=method, json=_fill(body, world))
    assert response.status_code == status, response.get_json()
    assert counter(app) == before  # no event, not even a seq taken


def test_a_stale_if_match_emits_no_event(app, admin, world):
    before = counter(app)
    response = admin.patch(
        f"/api/projects/{world['pid']}", json={"owner": "x"}, headers={"If-Match": '"stale"'}
    )
    assert response.status_code == 412
    assert counter(app) == before


def test_logs_and_cpu_points_emit_no_events(app, admin, world):
    before = counter(app)
    entry = {"project_id": world["pid"], "service_id": world["sid"], "severity": "info"}
    key_headers = {"X-API-Key": world["key"]}
    assert admin.post("/api/logs", json={**entry, "message": "m"}).status_code == 201
    batch = [{**entry, "message": f"m{i}"} for i in range(3)]
    assert admin.post("/api/logs/batch", json=batch, headers=key_headers).status_code == 201
    metric_body = {"project_id": world["pid"], "service_name": "api"}
    metric = admin.post("/api/metrics/cpu", json=metric_body)
    assert metric.status_code == 201
    points = admin.post(f"/api/metrics/cpu/{metric.json['id']}/data", json=[{"load": 1.0}])
    assert points.status_code == 201
    assert counter(app) == before


def test_with_auth_off_the_actor_is_anonymous(app, world):
    app.config["AUTH_ENABLED"] = False
    response = app.test_client().post("/api/projects", json={"name": "Open"})
    assert response.status_code == 201
    assert stored(app)[-1]["actor"] == {"kind": "anonymous"}


def test_an_api_key_actor_is_its_id_and_public_prefix_never_the_secret(app):
    key_id = ObjectId()
    raw = "pmk_0a1b2c3d4e5f_s3cr3t-part"
    principal = Principal(kind="key", role="editor", project_id=ObjectId(), key_id=key_id)
    with app.test_request_context(headers={"X-API-Key": raw}):
        g.principal = principal
        event = events.publish("service.updated", {"id": "s", "name": "api"})
    assert event["actor"] == {"kind": "api_key", "id": str(key_id), "prefix": "0a1b2c3d4e5f"}
    assert "s3cr3t" not in json.dumps(stored(app), default=str)


# --- cursor reads over HTTP ---------------------------------------------------------------


@pytest.fixture
def seven(app, admin):
    """Seven events: projects a..g created through the API."""
    ids = [admin.post("/api/projects", json={"name": f"p{n}"}).json["id"] for n in "abcdefg"]
    return ids


def test_after_returns_seq_order_and_the_next_cursor_in_body_and_header(admin, seven):
    response = admin.get("/api/events?after=0&limit=3")
    assert response.status_code == 200
    body = response.json
    assert [e["seq"] for e in body["events"]] == [1, 2, 3]
    assert body["next_after"] == 3
    assert response.headers["X-Next-After"] == "3"
    first = body["events"][0]
    assert set(first) == {
        "seq",
        "time",
        "type",
        "project_id",
        "subject",
        "actor",
        "request_id",
        "changes",
    }
    assert first["time"].endswith("Z")
    body = admin.get(f"/api/events?after={body['next_after']}&limit=10").json
    assert [e["seq"] for e in body["events"]] == [4, 5, 6, 7]
    assert body["next_after"] == 7


def test_newest_first_browsing_with_before(admin, seven):
    body = admin.get("/api/events?limit=3").json
    assert [e["seq"] for e in body["events"]] == [7, 6, 5]
    assert (body["next_before"], body["next_after"]) == (5, 7)
    body = admin.get("/api/events?before=5&limit=10").json
    assert [e["seq"] for e in body["events"]] == [4, 3, 2, 1]
    assert body["next_before"] is None


def test_filters_by_project_type_and_actor(app, admin, seven, world):
    client_as(app, "editor").patch(f"/api/projects/{seven[2]}", json={"owner": "x"})
    body = admin.get(f"/api/events?after=0&project_id={seven[2]}").json
    assert [e["type"] for e in body["events"]] == ["project.created", "project.updated"]
    body = admin.get("/api/events?after=0&type=project.updated").json
    assert [e["subject"]["id"] for e in body["events"]] == [seven[2]]
    body = admin.get("/api/events?after=0&actor=test-editor").json
    assert [e["type"] for e in body["events"]] == ["project.updated"]
    body = admin.get(f"/api/events?after=0&actor={ADMIN_ID}").json
    assert len(body["events"]) == 7
    body = admin.get("/api/events?after=0&actor=system").json  # the world fixture's writes
    assert {e["type"] for e in body["events"]} == {
        "project.created",
        "service.created",
        "api_key.created",
    }


def test_a_cursor_older_than_what_is_kept_is_410(admin, seven, manual):
    manual.advance(91 * 86400)
    response = admin.get("/api/events?after=0")
    assert response.status_code == 410
    assert response.json["code"] == 410
    assert "no longer kept" in response.json["message"]


@pytest.mark.parametrize(
    "query",
    [
        "after=-1",
        "after=abc",
        "after=1.5",
        f"after={2**60}",
        "before=0",
        "limit=0",
        "limit=1001",
        "type=Project.Created",
        "type=nodot",
        "project_id=xyz",
        "actor=",
        "&".join(f"type=a.b{n}" for n in "abcdefghijk"),
    ],
)
def test_bad_query_parameters_are_422(admin, seven, query):
    response = admin.get(f"/api/events?{query}")
    assert response.status_code == 422, response.json
    assert response.json["errors"]["query"]


def test_after_and_before_together_are_422(admin, seven):
    response = admin.get("/api/events?after=1&before=5")
    assert response.status_code == 422
    assert "before" in response.json["errors"]["query"]


def test_reading_events_needs_a_user(app, world):
    assert app.test_client().get("/api/events").status_code == 401
    keyed = app.test_client().get("/api/events", headers={"X-API-Key": world["key"]})
    assert keyed.status_code == 403


# --- the live stream ----------------------------------------------------------------------


def read_stream(client, path, headers=None) -> list[dict]:
    response = client.get(path, headers=headers or {})
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "text/event-stream"
    return parse_sse(response.get_data(as_text=True))


def test_the_stream_sends_retry_then_each_event_with_its_seq(admin, seven, manual):
    blocks = read_stream(admin, "/api/events/stream?after=4")
    assert blocks[0]["retry"] == "3000"
    sent = event_blocks(blocks)
    assert [b["id"] for b in sent] == ["5", "6", "7"]
    listed = admin.get("/api/events?after=4").json["events"]
    assert [b["data"] for b in sent] == listed
    assert "reconnect" in blocks[-1]["comments"][0]


def test_without_a_cursor_the_stream_starts_with_new_events_only(admin, seven, manual):
    def write(clk):
        if clk.monotonic() == 2:
            admin.post("/api/projects", json={"name": "late"})

    manual.on_sleep = write
    sent = event_blocks(read_stream(admin, "/api/events/stream"))
    assert [b["data"]["subject"]["name"] for b in sent] == ["late"]


def test_resume_after_a_disconnect_loses_and_repeats_nothing(admin, seven, manual):
    def write_one(clk):
        if clk.monotonic() == 1:
            admin.post("/api/projects", json={"name": "during-first"})

    manual.on_sleep = write_one
    response = admin.get("/api/events/stream?after=0", buffered=False)
    received = []
    for chunk in response.response:
        received += event_blocks(parse_sse(chunk if isinstance(chunk, str) else chunk.decode()))
        if received and received[-1]["id"] == "8":
            break
    response.close()  # the client goes away
    assert [b["id"] for b in received] == [str(n) for n in range(1, 9)]
    manual.on_sleep = None
    for name in ("while-away-1", "while-away-2"):
        admin.post("/api/projects", json={"name": name})

    manual.on_sleep = once(lambda: admin.post("/api/projects", json={"name": "during-second"}))
    last = received[-1]["id"]
    again = event_blocks(read_stream(admin, "/api/events/stream", {"Last-Event-ID": last}))
    received += again
    assert [b["id"] for b in again] == ["9", "10", "11"]
    assert [b["data"]["seq"] for b in received] == list(range(1, 12))


def test_the_stream_waits_for_a_seq_still_being_written(app, admin, seven, manual, monkeypatch):
    taken, resume = threading.Event(), threading.Event()
    real_allocate = events._allocate

    def allocate():
        seq = real_allocate()
        if threading.current_thread().name == "slow-writer":
            taken.set()
            resume.wait(10)
        return seq

    def slow_write():
        with app.app_context():
            events.publish("project.updated", {"id": "x", "name": "slow"})

    monkeypatch.setattr(events, "_allocate", allocate)
    writer = threading.Thread(target=slow_write, name="slow-writer", daemon=True)
    writer.start()
    assert taken.wait(10)  # seq 8 taken, not stored
    admin.post("/api/projects", json={"name": "fast"})  # seq 9 stored first
    seen_before_commit = []

    def watch(clk):
        if clk.monotonic() == 3:
            resume.set()
            writer.join(10)

    manual.on_sleep = watch
    response = admin.get("/api/events/stream?after=7", buffered=False)
    for chunk in response.response:
        blocks = event_blocks(parse_sse(chunk if isinstance(chunk, str) else chunk.decode()))
        if manual.monotonic() < 3:
            seen_before_commit += blocks
        if any(b["id"] == "9" for b in blocks):
            sent = blocks
            break
    response.close()
    assert seen_before_commit == []  # 9 was held back while 8 was in flight
    assert [b["id"] for b in sent] == ["8", "9"]


def test_a_resume_point_that_is_gone_gets_a_reset(admin, seven, manual):
    manual.advance(91 * 86400)
    admin.post("/api/projects", json={"name": "after-the-horizon"})  # seq 8
    blocks = read_stream(admin, "/api/events/stream", {"Last-Event-ID": "3"})
    reset = [b for b in blocks if b.get("event") == "reset"]
    assert len(reset) == 1
    assert reset[0]["id"] == "8"  # resume from here after reloading
    assert "reload" in reset[0]["data"]["message"]
    assert event_blocks(blocks) == []


@pytest.mark.parametrize("last_event_id", ["garbage", "-4", "999"])
def test_a_resume_point_that_never_existed_gets_a_reset(admin, seven, manual, last_event_id):
    blocks = read_stream(admin, "/api/events/stream", {"Last-Event-ID": last_event_id})
    assert [b["id"] for b in blocks if b.get("event") == "reset"] == ["7"]


def test_keep_alive_at_least_every_15_seconds_and_a_bounded_life(app, admin, seven, manual):
    app.config["STREAM_MAX_SECONDS"] = 100
    response = admin.get("/api/events/stream", buffered=False)
    times = []
    for chunk in response.response:
        times.append(manual.monotonic())
        assert chunk
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 15
    assert times[-1] == pytest.approx(100, abs=1)  # then it ends: the client reconnects


def test_the_keep_alive_is_a_comment(admin, seven, manual):
    blocks = read_stream(admin, "/api/events/stream")
    assert any("keep-alive" in b["comments"] for b in blocks)
    assert event_blocks(blocks) == []


def test_a_filtered_stream_moves_last_event_id_past_what_it_filters_out(admin, seven, manual):
    def write(clk):
        if clk.monotonic() == 1:
            admin.patch(f"/api/projects/{seven[0]}", json={"owner": "x"})  # seq 8
            admin.patch(f"/api/projects/{seven[1]}", json={"owner": "x"})  # seq 9

    manual.on_sleep = write
    blocks = read_stream(admin, f"/api/events/stream?project_id={seven[1]}&after=7")
    assert [(b["id"], b["data"]["seq"]) for b in event_blocks(blocks)] == [("9", 9)]
    manual.on_sleep = None
    admin.patch(f"/api/projects/{seven[0]}", json={"owner": "y"})  # seq 10, filtered out
    blocks = read_stream(admin, f"/api/events/stream?project_id={seven[1]}&after=9")
    assert [b["id"] for b in blocks if "id" in b and "data" not in b] == ["10"]


def test_the_stream_needs_credentials(app, world, manual):
    assert app.test_client().get("/api/events/stream").status_code == 401
    keyed = app.test_client().get("/api/events/stream", headers={"X-API-Key": world["key"]})
    assert keyed.status_code == 403


def test_bad_stream_filters_are_422(admin, manual):
    assert admin.get("/api/events/stream?project_id=nope").status_code == 422
    assert admin.get("/api/events/stream?after=-3").status_code == 422
    too_long = admin.get("/api/events/stream", headers={"Last-Event-ID": "9" * 65})
    assert too_long.status_code == 422
    assert too_long.json["errors"]["headers"]["Last-Event-ID"]


# --- stream tokens ------------------------------------------------------------------------


def mint(client, **body):
    response = client.post("/api/events/stream-token", json={"stream": "events", **body})
    assert response.status_code == 201, response.get_json()
    return response.json


def test_a_stream_token_opens_the_stream_without_headers(app, admin, seven, manual):
    response = client_as(app, "viewer").post("/api/events/stream-token", json={"stream": "events"})
    assert response.headers["Cache-Control"] == "no-store"
    token = response.json
    assert token["expires_in"] == 60
    blocks = read_stream(app.test_client(), f"/api/events/stream?after=5&token={token['token']}")
    assert [b["id"] for b in event_blocks(blocks)] == ["6", "7"]


def test_a_stream_token_expires_after_60_seconds(app, admin, seven, manual):
    token = mint(admin)["token"]
    manual.advance(59)
    assert app.test_client().get(f"/api/events/stream?token={token}").status_code == 200
    manual.advance(1)
    response = app.test_client().get(f"/api/events/stream?token={token}")
    assert response.status_code == 401
    assert "expired" in response.json["message"]


def test_a_project_token_is_for_that_project_only(app, admin, seven, manual):
    token = mint(admin, project_id=seven[0])["token"]
    anon = app.test_client()
    ok = anon.get(f"/api/events/stream?project_id={seven[0]}&token={token}")
    assert ok.status_code == 200
    other = anon.get(f"/api/events/stream?project_id={seven[1]}&token={token}")
    assert other.status_code == 403
    unscoped = anon.get(f"/api/events/stream?token={token}")
    assert unscoped.status_code == 403
    assert seven[0] in unscoped.json["message"]


def test_an_events_token_does_not_open_the_log_stream(app, admin, manual):
    token = mint(admin)["token"]
    assert app.test_client().get(f"/api/logs/stream?token={token}").status_code == 403


def test_a_stream_token_is_no_credential_anywhere_else(app, admin, seven, manual):
    token = mint(admin)["token"]
    anon = app.test_client()
    assert anon.get(f"/api/events?token={token}").status_code == 401
    assert anon.get(f"/api/projects?token={token}").status_code == 401
    as_bearer = anon.get("/api/events/stream", headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401


def test_no_long_lived_credential_is_accepted_in_the_url(app, world, manual):
    access_token = token_for(app, "admin")
    anon = app.test_client()
    for credential in (access_token, world["key"], "garbage"):
        response = anon.get(f"/api/events/stream?token={credential}")
        assert response.status_code == 401, credential
    with_header = client_as(app, "admin").get(f"/api/events/stream?token={access_token}")
    assert with_header.status_code == 401  # the token in the URL decides, and it is refused


def test_minting_needs_a_user_and_a_valid_body(app, world):
    anon = app.test_client()
    assert anon.post("/api/events/stream-token", json={"stream": "events"}).status_code == 401
    keyed = anon.post(
        "/api/events/stream-token", json={"stream": "events"}, headers={"X-API-Key": world["key"]}
    )
    assert keyed.status_code == 403
    viewer = client_as(app, "viewer")
    for body in ({}, {"stream": "metrics"}, {"stream": "logs", "project_id": "x"}, {"x": 1}):
        assert viewer.post("/api/events/stream-token", json=body).status_code == 422, body


# --- caps ---------------------------------------------------------------------------------


def test_past_the_cap_a_stream_gets_503_with_retry_after(app, admin, manual):
    app.config["STREAMS_MAX"] = 2
    first = admin.get("/api/events/stream", buffered=False)
    second = admin.get("/api/logs/stream", buffered=False)
    assert (first.status_code, second.status_code) == (200, 200)
    refused = admin.get("/api/events/stream")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "10"
    assert "maximum of 2" in refused.json["message"]
    assert admin.get("/api/events").status_code == 200  # JSON endpoints are not capped
    first.close()  # a stream that ends gives its slot back
    assert admin.get("/api/events/stream", buffered=False).status_code == 200


def test_a_stream_read_to_its_end_gives_its_slot_back(app, admin, manual):
    app.config["STREAMS_MAX"] = 1
    for _ in range(3):
        read_stream(admin, "/api/events/stream")


def test_streams_disabled_point_at_the_stream_server(app, admin, manual):
    app.config["STREAMS_ENABLED"] = False
    response = admin.get("/api/events/stream")
    assert response.status_code == 503
    assert "stream server" in response.json["message"]
    assert "Retry-After" not in response.headers
    assert admin.get("/api/logs/stream").status_code == 503
    assert admin.get("/api/events").status_code == 200
