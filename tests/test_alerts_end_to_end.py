"""Issue 13 from end to end, the way users meet it, through the HTTP API with auth on:
a shipper posts CPU points with its project's API key, an editor sets a rule and a
webhook receiver (a real local HTTP server), and the worker's rounds (as ``flask worker
--once`` runs them) evaluate, fan out and send.  The receiver gets one signed firing
notification in Alertmanager's format, then one resolved, and nothing twice.

The two halves of the domain (evaluation, delivery) are joined only by the outbox; this
is the test that they agree on its ``alert`` dict.
"""

from __future__ import annotations

import pytest
import standardwebhooks

from polymicro import worker
from polymicro.common import clock
from tests.alerts_delivery_helpers import Hook
from tests.conftest import client_as
from tests.factories import make_key, make_project, make_service, metric_body


@pytest.fixture
def manual(app):
    start = clock.SystemClock().now().replace(microsecond=0)
    with clock.use(clock.ManualClock(start)) as manual:
        yield manual


@pytest.fixture
def hook(app):
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True  # the receiver is on 127.0.0.1
    with Hook() as hook:
        yield hook


def round_of(app, manual, seconds: float = 15) -> None:
    """One worker round (every job is due: a round of ``--once``), then time moves."""
    assert worker.serve(app, once=True) == 0
    manual.advance(seconds)


def test_a_rule_fires_and_resolves_and_the_receiver_gets_each_once(app, ctx, manual, hook):
    project = make_project(name="Shop")
    svc = make_service(project, name="checkout")
    editor = client_as(app, "editor")
    shipper = app.test_client()
    shipper.environ_base["HTTP_X_API_KEY"] = make_key(project)["key"]

    receiver = editor.post("/api/alert-receivers/", json={"name": "pager", "url": hook.url}).json
    secret = receiver["secret"]
    rule = editor.post(
        "/api/alert-rules",
        json={
            "project_id": str(project.id),
            "service_id": str(svc.id),
            "name": "HighLoad",
            "kind": "metric_threshold",
            "aggregate": "avg",
            "field": "load",
            "window": 60,
            "operator": ">",
            "threshold": 90,
            "for": 30,
            "keep_firing_for": 0,
            "labels": {"severity": "page"},
            "annotations": {"summary": "{service} load is {value}"},
        },
    )
    assert rule.status_code == 201, rule.json
    metric = shipper.post("/api/metrics/cpu", json=metric_body(svc))
    assert metric.status_code == 201, metric.json
    data_url = f"/api/metrics/cpu/{metric.json['id']}/data"

    def ship(load: float) -> None:
        answer = shipper.post(data_url, json={"load": load, "memory": 40})
        assert answer.status_code == 201, answer.json

    # busy for a minute and a half: pending at once, firing once `for` (30 s) has passed
    for _ in range(6):
        ship(97.0)
        round_of(app, manual)
    # quiet again: the window (60 s) forgets the busy points, and the alert resolves
    for _ in range(8):
        ship(5.0)
        round_of(app, manual)

    states = [a["state"] for a in editor.get(f"/api/alerts?rule_id={rule.json['id']}").json]
    assert states == ["resolved"]
    bodies = [received.json for received in hook.received]
    assert [body["status"] for body in bodies] == ["firing", "resolved"]
    firing, resolved = bodies
    assert firing["version"] == "4"
    assert firing["receiver"] == "pager"
    [alert] = firing["alerts"]
    assert alert["labels"]["alertname"] == "HighLoad"
    assert alert["labels"]["service"] == "checkout"
    assert alert["labels"]["severity"] == "page"
    assert alert["annotations"]["summary"].startswith("checkout load is 97")
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
    verifier = standardwebhooks.Webhook(secret)
    for received in hook.received:
        verifier.verify(received.body, received.headers)  # raises when the signature is wrong
    log = editor.get(f"/api/alert-receivers/{receiver['id']}/deliveries").json
    assert sorted(d["status"] for d in log) == ["delivered", "delivered"]
