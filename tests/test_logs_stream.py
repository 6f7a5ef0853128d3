"""GET /api/logs/stream: the live log tail (SSE), with authentication on.

Streams run on a ManualClock (see test_events_api.py): the whole life of a stream takes
milliseconds, and the clock's ``on_sleep`` hook stores entries while the stream waits.
"""

from __future__ import annotations

import pytest
from bson import ObjectId

from polymicro.auth import service as auth
from polymicro.common import clock
from polymicro.logs import service as logs
from polymicro.logs.models import LogEntry
from tests.conftest import client_as
from tests.factories import make_project, make_service
from tests.test_events_api import event_blocks, once, parse_sse


@pytest.fixture
def manual(app):
    app.config["STREAM_MAX_SECONDS"] = 10
    with clock.use(clock.ManualClock()) as manual_clock:
        yield manual_clock


@pytest.fixture
def world(app):
    with app.app_context():
        project = make_project(name="Shop")
        other = make_project(name="Other")
        return {
            "project": project,
            "other": other,
            "api": make_service(project, name="api"),
            "web": make_service(project, name="web"),
            "elsewhere": make_service(other, name="db"),
        }


@pytest.fixture
def viewer(app):
    return client_as(app, "viewer")


def store(app, svc, message="m", severity="info", **extra) -> str:
    with app.app_context():
        entry = logs.create_log(
            {
                "project_id": svc.project_id,
                "service_id": svc.id,
                "severity": severity,
                "message": message,
                **extra,
            }
        )
    return str(entry.id)


def store_many(app, svc, n, prefix="m") -> list[str]:
    with app.app_context():
        entries = [
            {"project_id": svc.project_id, "service_id": svc.id, "severity": "info", "message": m}
            for m in (f"{prefix}{i}" for i in range(n))
        ]
        return [str(i) for i in logs.create_logs(entries)]


def read(client, path, headers=None) -> list[dict]:
    response = client.get(path, headers=headers or {})
    assert response.status_code == 200, response.get_json()
    assert response.mimetype == "text/event-stream"
    return parse_sse(response.get_data(as_text=True))


def messages_of(blocks) -> list[str]:
    return [b["data"]["message"] for b in event_blocks(blocks)]


def test_it_starts_with_the_last_50_entries_oldest_first(app, viewer, world, manual):
    ids = store_many(app, world["api"], 60)
    sent = event_blocks(read(viewer, "/api/logs/stream"))
    assert [b["id"] for b in sent] == ids[10:]
    assert [b["data"]["id"] for b in sent] == ids[10:]
    assert sent[0]["data"]["message"] == "m10"
    assert set(sent[0]["data"]) >= {"project_id", "service_id", "severity", "timestamp"}


@pytest.mark.parametrize(("tail", "expected"), [(0, []), (3, ["m7", "m8", "m9"])])
def test_tail_chooses_how_many_entries_come_first(app, viewer, world, manual, tail, expected):
    store_many(app, world["api"], 10)
    assert messages_of(read(viewer, f"/api/logs/stream?tail={tail}")) == expected


def test_new_entries_are_sent_as_they_are_stored(app, viewer, world, manual):
    store(app, world["api"], "before")
    manual.on_sleep = once(lambda: store_many(app, world["api"], 3, "new"))
    assert messages_of(read(viewer, "/api/logs/stream")) == ["before", "new0", "new1", "new2"]


def test_the_list_filters_apply_to_the_backlog_and_the_live_entries(app, viewer, world, manual):
    api, web, elsewhere = world["api"], world["web"], world["elsewhere"]

    def write_all(tag):
        store(app, api, f"{tag} api error disk full", "error")
        store(app, api, f"{tag} api info disk ok", "info")
        store(app, web, f"{tag} web critical DISK gone", "critical")
        store(app, elsewhere, f"{tag} other error disk", "error")

    write_all("old")
    manual.on_sleep = once(lambda: write_all("new"))
    pid = world["project"].id
    path = f"/api/logs/stream?project_id={pid}&min_severity=error&q=disk"
    assert messages_of(read(viewer, path)) == [
        "old api error disk full",
        "old web critical DISK gone",
        "new api error disk full",
        "new web critical DISK gone",
    ]
    manual.on_sleep = once(lambda: write_all("newer"))
    path = f"/api/logs/stream?service_id={api.id}&severity=info&tail=1"
    assert messages_of(read(viewer, path)) == ["new api info disk ok", "newer api info disk ok"]


def test_it_resumes_after_the_last_event_id(app, viewer, world, manual):
    ids = store_many(app, world["api"], 5)
    manual.on_sleep = once(lambda: store(app, world["api"], "live"))
    blocks = read(viewer, "/api/logs/stream", {"Last-Event-ID": ids[2]})
    assert messages_of(blocks) == ["m3", "m4", "live"]  # no backlog on a resume


def test_resume_after_a_disconnect_loses_nothing_stored_after_it(app, viewer, world, manual):
    store_many(app, world["api"], 2)
    manual.on_sleep = once(lambda: store(app, world["api"], "first-live"))
    response = viewer.get("/api/logs/stream", buffered=False)
    received = []
    for chunk in response.response:
        received += event_blocks(parse_sse(chunk if isinstance(chunk, str) else chunk.decode()))
        if received and received[-1]["data"]["message"] == "first-live":
            break
    response.close()
    store_many(app, world["api"], 2, "away")
    manual.on_sleep = once(lambda: store(app, world["api"], "second-live"))
    again = read(viewer, "/api/logs/stream", {"Last-Event-ID": received[-1]["id"]})
    received += event_blocks(again)
    assert [b["data"]["message"] for b in received] == [
        "m0",
        "m1",
        "first-live",
        "away0",
        "away1",
        "second-live",
    ]


def test_an_unknown_last_event_id_resets_and_starts_afresh(app, viewer, world, manual):
    store_many(app, world["api"], 2)
    blocks = read(viewer, "/api/logs/stream?tail=1", {"Last-Event-ID": "not-an-id"})
    assert [b["event"] for b in blocks if "event" in b] == ["reset"]
    assert messages_of(blocks) == ["m1"]


def test_an_entry_committed_late_with_an_older_id_is_sent_once(app, viewer, world, manual):
    late_id = ObjectId()  # made now, stored after a newer entry (a slow batch, another worker)
    newest = store(app, world["api"], "newer")

    def store_late():
        with app.app_context():
            svc = world["api"]
            LogEntry(
                id=late_id,
                project_id=svc.project_id,
                service_id=svc.id,
                severity="warn",
                level=2,
                message="late",
            ).save(force_insert=True)

    manual.on_sleep = once(store_late)
    sent = event_blocks(read(viewer, "/api/logs/stream"))
    assert [b["data"]["message"] for b in sent] == ["newer", "late"]
    assert sent[1]["data"]["id"] == str(late_id)
    assert sent[1]["id"] == newest  # Last-Event-ID never moves back


def test_the_log_stream_needs_credentials(app, world, manual):
    assert app.test_client().get("/api/logs/stream").status_code == 401
    with app.app_context():
        key = auth.create_api_key(world["project"].id, "ci", None)["key"]
    keyed = app.test_client().get("/api/logs/stream", headers={"X-API-Key": key})
    assert keyed.status_code == 403


def test_a_project_logs_token_opens_that_project_only(app, viewer, world, manual):
    pid, oid = world["project"].id, world["other"].id
    body = {"stream": "logs", "project_id": str(pid)}
    minted = viewer.post("/api/events/stream-token", json=body)
    assert minted.status_code == 201
    token = minted.json["token"]
    store(app, world["api"], "mine")
    store(app, world["elsewhere"], "theirs")
    anon = app.test_client()
    blocks = read(anon, f"/api/logs/stream?project_id={pid}&token={token}")
    assert messages_of(blocks) == ["mine"]
    assert anon.get(f"/api/logs/stream?project_id={oid}&token={token}").status_code == 403
    assert anon.get(f"/api/logs/stream?token={token}").status_code == 403
    assert anon.get(f"/api/events/stream?project_id={pid}&token={token}").status_code == 403


@pytest.mark.parametrize(
    "query", ["tail=-1", "tail=1001", "tail=x", "min_severity=loud", "project_id=1"]
)
def test_bad_parameters_are_422(viewer, manual, query):
    response = viewer.get(f"/api/logs/stream?{query}")
    assert response.status_code == 422
    assert response.json["errors"]["query"]
