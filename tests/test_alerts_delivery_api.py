"""/api/alert-receivers through the HTTP API, with authentication on, and a real local
HTTP receiver.

- Viewers read, editors write; anonymous callers and API keys get nothing.
- The secret is shown once (the creation), never in a read.
- A receiver URL on a private address is refused by default (422, nothing stored).
- Firing and resolved notifications arrive (the worker's jobs, run as ``flask worker
  --once`` runs them); the delivery log shows each attempt; a failed delivery is
  redelivered; a 410 disables the receiver, which shows why.
"""

from __future__ import annotations

import pytest
import standardwebhooks

from polymicro import worker
from polymicro.common import clock
from tests.alerts_delivery_helpers import Answer, Hook, alert_for, enqueue
from tests.conftest import client_as
from tests.factories import make_key, make_project, make_service, unique

BASE = "/api/alert-receivers"


@pytest.fixture
def hook():
    with Hook() as hook:
        yield hook


@pytest.fixture
def manual(app):
    start = clock.SystemClock().now().replace(microsecond=0)
    with clock.use(clock.ManualClock(start)) as manual:
        yield manual


@pytest.fixture
def private_ok(app):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    return app


@pytest.fixture
def editor(app):
    return client_as(app, "editor")


@pytest.fixture
def viewer(app):
    return client_as(app, "viewer")


@pytest.fixture
def svc(ctx, manual):
    return make_service()


def create(client, hook, **fields) -> dict:
    response = client.post(BASE + "/", json={"name": unique("receiver"), "url": hook.url, **fields})
    assert response.status_code == 201, response.json
    return response.json


def work(app) -> None:
    """One round of the worker, as ``flask worker --once`` runs it."""
    assert worker.serve(app, once=True) == 0


def log_of(client, receiver_id: str, **query) -> list[dict]:
    response = client.get(f"{BASE}/{receiver_id}/deliveries", query_string=query)
    assert response.status_code == 200, response.json
    return response.json


# --- who may do what ---------------------------------------------------------------------


def test_editors_create_and_viewers_read_without_the_secret(private_ok, editor, viewer, hook):
    made = create(editor, hook)
    assert made["secret"].startswith("whsec_")
    assert made["enabled"] is True
    assert made["project_ids"] == []
    assert made["matchers"] == {}
    listed = viewer.get(BASE + "/")
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json] == [made["id"]]
    assert "X-Pagination" in listed.headers
    one = viewer.get(f"{BASE}/{made['id']}").json
    for shown in (one, listed.json[0]):
        assert "secret" not in shown
        assert made["secret"] not in str(shown)
    changed = editor.patch(f"{BASE}/{made['id']}", json={"secret": made["secret"] + "x"})
    assert changed.status_code == 422  # not base64 any more
    rotated = editor.patch(
        f"{BASE}/{made['id']}", json={"secret": "whsec_" + "A" * 32, "name": "renamed"}
    )
    assert rotated.status_code == 200
    assert "secret" not in rotated.json
    assert rotated.json["name"] == "renamed"


def test_viewers_anonymous_callers_and_api_keys_cannot_write(app, private_ok, viewer, hook, ctx):
    body = {"name": "r", "url": hook.url}
    assert viewer.post(BASE + "/", json=body).status_code == 403
    assert app.test_client().post(BASE + "/", json=body).status_code == 401
    assert app.test_client().get(BASE + "/").status_code == 401
    key = make_key(make_project())["key"]
    assert app.test_client().get(BASE + "/", headers={"X-API-Key": key}).status_code in (401, 403)
    assert viewer.get(BASE + "/").json == []


def test_a_private_url_is_refused_by_default_and_nothing_is_stored(client, hook):
    response = client.post(BASE + "/", json={"name": "inside", "url": hook.url})
    assert response.status_code == 422
    assert "POLYMICRO_WEBHOOK_ALLOW_PRIVATE" in response.json["errors"]["json"]["url"][0]
    metadata = client.post(
        BASE + "/", json={"name": "cloud", "url": "http://169.254.169.254/latest/meta-data"}
    )
    assert metadata.status_code == 422
    assert client.get(BASE + "/").json == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://127.0.0.1/"}, "name"),
        ({"name": "x"}, "url"),
        ({"name": "x", "url": "ftp://127.0.0.1/"}, "url"),
        ({"name": "x", "url": "http://127.0.0.1/", "secret": "nope"}, "secret"),
        ({"name": "x", "url": "http://127.0.0.1/", "project_ids": ["0" * 24]}, "project_ids"),
        ({"name": "x", "url": "http://127.0.0.1/", "project_ids": ["zz"]}, "project_ids"),
        ({"name": "x", "url": "http://127.0.0.1/", "matchers": {"a.b": "c"}}, "matchers"),
        ({"name": "x", "url": "http://127.0.0.1/", "matchers": {"a": 1}}, "matchers"),
        ({"name": "x", "url": "http://127.0.0.1/", "enabled": "yes"}, "enabled"),
        ({"name": "x", "url": "http://u:p@127.0.0.1/"}, "url"),
        ({"name": "x", "url": "http://127.0.0.1:70000/"}, "url"),
        ({"name": "x", "url": "http://127.0.0.1/\u00e9"}, "url"),
        ({"name": "x", "url": "http://127.0.0.1/", "colour": "red"}, "colour"),
    ],
)
def test_bad_bodies_are_422_and_store_nothing(private_ok, client, body, field):
    response = client.post(BASE + "/", json=body)
    assert response.status_code == 422, response.json
    assert field in response.json["errors"]["json"]
    assert client.get(BASE + "/").json == []


def test_names_are_unique_and_unknown_ids_are_404(private_ok, client, hook):
    made = create(client, hook, name="Pager")
    assert client.post(BASE + "/", json={"name": "pager", "url": hook.url}).status_code == 409
    missing = "0" * 24
    assert client.get(f"{BASE}/{missing}").status_code == 404
    assert client.patch(f"{BASE}/{missing}", json={"enabled": False}).status_code == 404
    assert client.delete(f"{BASE}/{missing}").status_code == 404
    assert client.get(f"{BASE}/{missing}/deliveries").status_code == 404
    redeliver = f"{BASE}/{made['id']}/deliveries/{missing}/redeliver"
    assert client.post(redeliver).status_code == 404


# --- notifications through the worker -----------------------------------------------------


def test_firing_and_resolved_arrive_signed_and_the_log_shows_them(
    app, private_ok, editor, viewer, hook, svc, manual
):
    made = create(editor, hook, project_ids=[str(svc.project_id)])
    with app.app_context():
        alert = alert_for(svc)
        enqueue(alert, "firing", version=2)
    work(app)
    manual.advance(120)
    with app.app_context():
        enqueue(alert_for(svc, "resolved", instance_id=alert["id"]), "resolved", version=3)
    work(app)
    assert [r.json["status"] for r in hook.received] == ["firing", "resolved"]
    for request in hook.received:
        payload = standardwebhooks.Webhook(made["secret"]).verify(request.body, request.headers)
        assert payload["receiver"] == made["name"]
        assert payload["alerts"][0]["labels"]["service"] == svc.name
    rows = log_of(viewer, made["id"])
    assert [r["alert_status"] for r in rows] == ["resolved", "firing"]  # newest first
    for row in rows:
        assert row["status"] == "delivered"
        (attempt,) = row["attempts"]
        assert attempt["status_code"] == 200
        assert attempt["error"] is None
        assert row["payload"]["version"] == "4"
        assert row["key"].startswith(alert["id"])
    assert log_of(viewer, made["id"], status="pending") == []
    assert len(log_of(viewer, made["id"], status="delivered")) == 2


def test_retries_after_500s_then_redelivery(app, private_ok, editor, hook, svc, manual):
    made = create(editor, hook)
    app.config["WEBHOOK_RETRY_HOURS"] = 1
    app.config["WEBHOOK_RETRY_MAX_SECONDS"] = 600
    hook.answer(*[Answer(500, body=b"down")] * 50)
    with app.app_context():
        enqueue(alert_for(svc))
    work(app)
    (row,) = log_of(editor, made["id"])
    assert row["status"] == "pending"
    assert row["attempts"][0]["status_code"] == 500
    for _ in range(30):
        manual.advance(600)
        work(app)
        (row,) = log_of(editor, made["id"])
        if row["status"] != "pending":
            break
    assert row["status"] == "failed"
    assert row["attempt_count"] == len(row["attempts"]) >= 3
    assert all(a["status_code"] == 500 for a in row["attempts"])
    sent = len(hook.received)
    hook.script.clear()  # the receiver is back
    again = editor.post(f"{BASE}/{made['id']}/deliveries/{row['id']}/redeliver")
    assert again.status_code == 202, again.json
    assert again.json["status"] == "pending"
    assert editor.post(f"{BASE}/{made['id']}/deliveries/{row['id']}/redeliver").status_code == 409
    work(app)
    (row,) = log_of(editor, made["id"])
    assert row["status"] == "delivered"
    assert row["attempts"][-1]["status_code"] == 200
    assert len(hook.received) == sent + 1


def test_viewers_cannot_redeliver(app, private_ok, editor, viewer, hook, svc):
    made = create(editor, hook)
    with app.app_context():
        enqueue(alert_for(svc))
    work(app)
    (row,) = log_of(viewer, made["id"])
    assert viewer.post(f"{BASE}/{made['id']}/deliveries/{row['id']}/redeliver").status_code == 403


def test_a_410_disables_the_receiver_which_shows_why(app, private_ok, editor, hook, svc):
    made = create(editor, hook)
    hook.answer(Answer(410, body=b"gone"))
    with app.app_context():
        enqueue(alert_for(svc))
    work(app)
    shown = editor.get(f"{BASE}/{made['id']}").json
    assert shown["enabled"] is False
    assert "410 Gone" in shown["disabled_reason"]
    assert shown["disabled_at"] is not None
    (row,) = log_of(editor, made["id"])
    assert row["status"] == "failed"
    redeliver = f"{BASE}/{made['id']}/deliveries/{row['id']}/redeliver"
    assert editor.post(redeliver).status_code == 409  # disabled: enable it first
    enabled = editor.patch(f"{BASE}/{made['id']}", json={"enabled": True}).json
    assert enabled["enabled"] is True
    assert enabled["disabled_reason"] is None
    assert editor.post(redeliver).status_code == 202
    work(app)
    assert log_of(editor, made["id"])[0]["status"] == "delivered"


def test_deleting_a_receiver_deletes_its_log(app, private_ok, editor, hook, svc):
    made = create(editor, hook)
    with app.app_context():
        enqueue(alert_for(svc))
    work(app)
    assert editor.delete(f"{BASE}/{made['id']}").status_code == 204
    assert editor.get(f"{BASE}/{made['id']}").status_code == 404
    assert editor.get(f"{BASE}/{made['id']}/deliveries").status_code == 404


def test_the_v1_paths_are_the_same_endpoints(private_ok, client, hook):
    made = create(client, hook)
    assert client.get(f"/api/v1/alert-receivers/{made['id']}").json["name"] == made["name"]


def test_flask_worker_once_sends_the_notifications(app, private_ok, editor, hook, svc):
    create(editor, hook)
    with app.app_context():
        enqueue(alert_for(svc))
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert len(hook.received) == 1


def test_receiver_changes_are_events_without_the_secret(app, private_ok, editor, hook):
    made = create(editor, hook)
    new_secret = "whsec_" + "B" * 32
    editor.patch(f"{BASE}/{made['id']}", json={"secret": new_secret, "enabled": False})
    editor.delete(f"{BASE}/{made['id']}")
    listed = editor.get("/api/events", query_string={"limit": 100}).json
    events = listed["events"] if isinstance(listed, dict) else listed
    ours = sorted(
        (e for e in events if e["type"].startswith("alert_receiver.")), key=lambda e: e["seq"]
    )
    types = [e["type"] for e in ours]
    assert types == [
        "alert_receiver.created",
        "alert_receiver.updated",
        "alert_receiver.deleted",
    ]
    text = str(events)
    assert made["secret"] not in text
    assert new_secret not in text
