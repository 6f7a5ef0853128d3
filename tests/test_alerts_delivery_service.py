"""Webhook delivery at the service layer, against a real local HTTP receiver.

Outbox rows are made with ``outbox.enqueue`` (the seam), not by evaluation.  The worker
jobs ``fan_out`` and ``deliver_due`` are called directly; time is a ManualClock (the
backoff, Retry-After and the retry window never wait).
"""

from __future__ import annotations

from datetime import UTC, timedelta
from email.utils import format_datetime

import flask
import pytest
import standardwebhooks
from bson import ObjectId

from polymicro.alerts import delivery, outbox
from polymicro.alerts.delivery_models import Delivery, Receiver
from polymicro.common import clock
from polymicro.errors import Conflict, InvalidInput
from polymicro.projects import service as projects
from tests.alerts_delivery_helpers import Answer, Hook, alert_for, enqueue
from tests.conftest import free_port
from tests.factories import make_project, make_service, unique


@pytest.fixture
def manual(ctx):
    ctx.config["WEBHOOK_ALLOW_PRIVATE"] = True
    start = clock.SystemClock().now().replace(microsecond=0)  # HTTP dates have seconds
    with clock.use(clock.ManualClock(start)) as manual:
        yield manual


@pytest.fixture
def hook():
    with Hook() as hook:
        yield hook


@pytest.fixture
def svc(manual):
    return make_service()


def receiver(hook, **fields) -> dict:
    return delivery.create_receiver({"name": unique("receiver"), "url": hook.url, **fields})


def deliveries(**filters) -> list[Delivery]:
    return list(Delivery.objects(**filters).order_by("created_at", "id"))


def run_worker() -> int:
    delivery.fan_out()
    return delivery.deliver_due()


# --- fan-out -------------------------------------------------------------------------------


def test_a_transition_reaches_each_matching_receiver_once(manual, hook, svc):
    everyone = receiver(hook)
    this_project = receiver(hook, project_ids=[svc.project_id])
    other_project = receiver(hook, project_ids=[make_project().id])
    paging = receiver(hook, matchers={"severity": "page", "service": svc.name})
    quiet = receiver(hook, matchers={"severity": "info"})
    off = receiver(hook, enabled=False)
    alert = alert_for(svc)
    key = enqueue(alert)
    enqueue(alert)  # a retry of the enqueue: the same key, no second row
    assert delivery.fan_out() == 1
    assert delivery.fan_out() == 0  # nothing pending any more
    got = {d.receiver_id for d in deliveries()}
    assert got == {everyone["id"], this_project["id"], paging["id"]}
    assert other_project["id"] not in got
    assert quiet["id"] not in got
    assert off["id"] not in got
    assert outbox.pending() == []
    # A crash after the upserts but before mark_fanned_out: the fan-out runs again and
    # creates nothing new.
    outbox.OutboxEntry._get_collection().update_one({"key": key}, {"$set": {"fanned_out": False}})
    assert delivery.fan_out() == 1
    assert len(deliveries()) == 3


def test_firing_and_resolved_notifications_arrive_as_alertmanager_payloads(manual, hook, svc):
    made = receiver(hook)
    alert = alert_for(svc)
    enqueue(alert, "firing", version=2)
    run_worker()
    manual.advance(300)
    resolved = alert_for(svc, "resolved", instance_id=alert["id"], fired_at=alert["fired_at"])
    enqueue(resolved, "resolved", version=3)
    run_worker()
    assert len(hook.received) == 2
    firing, done = (r.json for r in hook.received)
    assert firing["version"] == "4"
    assert firing["status"] == "firing"
    assert done["status"] == "resolved"
    assert firing["receiver"] == made["name"]
    labels = firing["commonLabels"]
    assert labels["alertname"] == "HighLoad"
    assert labels["service"] == svc.name
    assert labels["project"] == projects.require_project(svc.project_id)["name"]
    assert labels["severity"] == "page"
    assert firing["groupLabels"] == {k: labels[k] for k in ("alertname", "project", "service")}
    assert firing["groupKey"].startswith("{}:{alertname=")
    assert firing["truncatedAlerts"] == 0
    assert firing["externalURL"] == flask.current_app.config["EXTERNAL_URL"]
    (first,) = firing["alerts"]
    assert set(first) == {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    }
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert first["annotations"]["summary"] == f"{svc.name} load is 97.5"
    assert first["generatorURL"].endswith(f"/api/v1/alert-rules/{alert['rule_id']}")
    (last,) = done["alerts"]
    assert last["status"] == "resolved"
    assert last["startsAt"] == first["startsAt"]
    assert last["endsAt"] > last["startsAt"]
    assert last["fingerprint"] == first["fingerprint"]
    assert [d.status for d in deliveries()] == ["delivered", "delivered"]


def test_the_signature_verifies_with_the_reference_library(manual, hook, svc):
    made = receiver(hook)
    enqueue(alert_for(svc))
    run_worker()
    (request,) = hook.received
    verified = standardwebhooks.Webhook(made["secret"]).verify(request.body, request.headers)
    assert verified["status"] == "firing"
    assert request.headers["webhook-signature"].startswith("v1,")
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(delivery.generate_secret()).verify(request.body, request.headers)
    tampered = request.body.replace(b"firing", b"resolved")
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(made["secret"]).verify(tampered, request.headers)


def test_a_given_secret_is_used_and_a_bad_one_refused(manual, hook, svc):
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    made = receiver(hook, secret=secret)
    assert made["secret"] == secret
    enqueue(alert_for(svc))
    run_worker()
    request = hook.received[0]
    standardwebhooks.Webhook(secret).verify(request.body, request.headers)
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_short", "whsec_!!!not base64!!!"):
        with pytest.raises(InvalidInput):
            receiver(hook, secret=bad)
    assert Receiver.objects.count() == 1


# --- retries -------------------------------------------------------------------------------


def test_a_500_is_retried_with_backoff_until_it_is_delivered(manual, hook, svc):
    receiver(hook)
    hook.answer(Answer(500), Answer(502), Answer(200))
    enqueue(alert_for(svc))
    assert run_worker() == 1
    (row,) = deliveries()
    assert row.status == "pending"
    base = flask.current_app.config["WEBHOOK_RETRY_BASE_SECONDS"]
    wait = (row.next_attempt_at - manual.now()).total_seconds()
    assert 0 <= wait <= base
    assert row.attempts[0].status_code == 500
    assert row.last_error == "HTTP 500"
    manual.advance(base)
    assert delivery.deliver_due() == 1
    row.reload()
    wait = (row.next_attempt_at - manual.now()).total_seconds()
    assert 0 <= wait <= 2 * base  # the second wait is drawn from twice the first range
    manual.advance(2 * base)
    assert delivery.deliver_due() == 1
    row.reload()
    assert row.status == "delivered"
    assert [a.status_code for a in row.attempts] == [500, 502, 200]
    assert row.attempt_count == 3
    assert all(a.duration_ms is not None and a.at for a in row.attempts)
    assert len(hook.received) == 3
    # One message: the webhook-id is the same on every attempt (receivers deduplicate).
    assert len({r.headers["webhook-id"] for r in hook.received}) == 1


def test_the_backoff_has_full_jitter_and_a_cap(ctx):
    ctx.config.update(WEBHOOK_RETRY_BASE_SECONDS=10, WEBHOOK_RETRY_MAX_SECONDS=3600)
    waits = [delivery.backoff_seconds(n) for n in range(1, 30) for _ in range(5)]
    assert all(0 <= w <= 3600 for w in waits)
    assert max(delivery.backoff_seconds(1) for _ in range(50)) <= 10
    assert len({round(w, 6) for w in waits}) > 100  # drawn, not fixed


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(manual, hook, svc, form):
    receiver(hook)
    now = manual.now()
    if form == "seconds":
        value = "120"
    else:
        value = format_datetime((now + timedelta(seconds=120)).replace(tzinfo=UTC), usegmt=True)
    hook.answer(Answer(503, {"Retry-After": value}), Answer(429, {"Retry-After": "5"}))
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    assert row.next_attempt_at == now + timedelta(seconds=120)
    manual.advance(119)
    assert delivery.deliver_due() == 0
    manual.advance(1)
    assert delivery.deliver_due() == 1
    row.reload()
    assert row.next_attempt_at == manual.now() + timedelta(seconds=5)
    manual.advance(5)
    assert delivery.deliver_due() == 1
    row.reload()
    assert row.status == "delivered"


def test_retries_stop_after_the_retry_window(manual, hook, svc):
    manual_hours = 2
    flask.current_app.config.update(WEBHOOK_RETRY_HOURS=manual_hours, WEBHOOK_RETRY_MAX_SECONDS=600)
    receiver(hook)
    hook.answer(*[Answer(500)] * 100)
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    started = row.retry_from
    for _ in range(100):
        manual.advance(600)
        delivery.deliver_due()
        row.reload()
        if row.status != "pending":
            break
    assert row.status == "failed"
    assert "retries exhausted" in row.last_error
    assert row.done_at <= started + timedelta(hours=manual_hours)
    assert row.done_at >= started + timedelta(hours=manual_hours) - timedelta(seconds=600)
    sent = len(hook.received)
    manual.advance(3600)
    assert delivery.deliver_due() == 0
    assert len(hook.received) == sent


def test_a_410_disables_the_receiver_and_cancels_what_it_had_pending(manual, hook, svc):
    made = receiver(hook)
    hook.answer(Answer(410))
    enqueue(alert_for(svc))
    enqueue(alert_for(svc))
    delivery.fan_out()
    assert delivery.deliver_due(limit=1) == 1
    stored = delivery.get_receiver(made["id"])
    assert stored["enabled"] is False
    assert "410 Gone" in stored["disabled_reason"]
    assert delivery.deliver_due() == 0  # the other one is cancelled, not sent
    assert sorted(d.status for d in deliveries()) == ["cancelled", "failed"]
    assert len(hook.received) == 1
    enqueue(alert_for(svc))
    delivery.fan_out()
    assert len(deliveries()) == 2  # a disabled receiver gets no new deliveries
    again = delivery.update_receiver(made["id"], {"enabled": True})
    assert again["enabled"] is True
    assert again["disabled_reason"] is None


# --- redelivery ----------------------------------------------------------------------------


def test_a_failed_delivery_is_redelivered_with_the_same_message_id(manual, hook, svc):
    made = receiver(hook)
    flask.current_app.config["WEBHOOK_RETRY_HOURS"] = 0
    hook.answer(Answer(500))
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    assert row.status == "failed"
    redone = delivery.redeliver(made["id"], row.id)
    assert redone["status"] == "pending"
    with pytest.raises(Conflict):
        delivery.redeliver(made["id"], row.id)  # still pending
    flask.current_app.config.update(WEBHOOK_RETRY_HOURS=24)
    assert delivery.deliver_due() == 1
    row.reload()
    assert row.status == "delivered"
    assert [a.status_code for a in row.attempts] == [500, 200]
    first, second = hook.received
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


# --- safety --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
        "http://240.0.0.1/",
        "http://100.64.0.1/",
    ],
)
def test_private_addresses_are_refused_by_default(ctx, url):
    with pytest.raises(delivery.UnsafeURL):
        delivery.check_url(url)
    with pytest.raises(InvalidInput):
        delivery.create_receiver({"name": unique("receiver"), "url": url})
    assert Receiver.objects.count() == 0


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "file:///etc/passwd", "http://user:pw@8.8.8.8/", "http:///x"]
)
def test_only_plain_http_urls_are_accepted(ctx, url):
    ctx.config["WEBHOOK_ALLOW_PRIVATE"] = True
    with pytest.raises(delivery.UnsafeURL):
        delivery.check_url(url)


def test_a_public_address_is_accepted(ctx):
    target = delivery.check_url("https://8.8.8.8:8443/alerts?x=1")
    assert target.addresses == ("8.8.8.8",)
    assert (target.scheme, target.port, target.path) == ("https", 8443, "/alerts?x=1")


def test_the_address_is_checked_again_at_each_delivery(manual, hook, svc):
    receiver(hook)
    enqueue(alert_for(svc))
    delivery.fan_out()
    # As if the name now resolved to an inside address (DNS rebinding).
    flask.current_app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    assert delivery.deliver_due() == 1
    (row,) = deliveries()
    assert row.status == "pending"
    assert row.attempts[0].status_code is None
    assert "refused" in row.attempts[0].error
    assert "loopback" in row.attempts[0].error
    assert hook.received == []


def test_the_response_is_read_only_up_to_the_bound(manual, hook, svc):
    flask.current_app.config["WEBHOOK_MAX_RESPONSE_BYTES"] = 1024
    receiver(hook)
    hook.answer(Answer(200, body=b"x" * 5_000_000))
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    assert row.status == "delivered"
    (attempt,) = row.attempts
    assert attempt.response_bytes == 1024
    assert attempt.response_truncated is True


def test_redirects_are_not_followed(manual, hook, svc):
    receiver(hook)
    hook.answer(Answer(302, {"Location": "http://127.0.0.1:1/elsewhere"}))
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    assert row.status == "pending"
    assert row.attempts[0].status_code == 302
    assert "redirects are not followed" in row.last_error
    assert len(hook.received) == 1


def test_a_slow_receiver_times_out(manual, hook, svc):
    flask.current_app.config["WEBHOOK_TIMEOUT_SECONDS"] = 0.3
    receiver(hook)
    hook.answer(Answer(200, delay=1.0))
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    assert row.status == "pending"
    assert "timed out" in row.attempts[0].error


def test_an_unreachable_receiver_is_retried(manual, svc):
    delivery.create_receiver(
        {"name": unique("receiver"), "url": f"http://127.0.0.1:{free_port()}/"}
    )
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    assert row.status == "pending"
    assert row.attempts[0].status_code is None
    assert "Connection" in row.last_error or "refused" in row.last_error.lower()


# --- several workers ---------------------------------------------------------------------


def test_a_claim_is_a_compare_and_set(manual, hook, svc):
    receiver(hook)
    enqueue(alert_for(svc))
    delivery.fan_out()
    (row,) = deliveries()
    snapshot = {"_id": row.id, "version": row.version}
    now = manual.now()
    assert delivery._claim(snapshot, now) is not None
    assert delivery._claim(snapshot, now) is None  # a second worker with the same view
    assert delivery.deliver_due() == 0  # leased: not due until the lease ends
    manual.advance(10 * 2 + delivery.LEASE_EXTRA_SECONDS)  # the claimant died mid-send
    assert delivery.deliver_due() == 1
    assert len(hook.received) == 1


def test_a_deleted_receiver_takes_its_log_with_it(manual, hook, svc):
    made = receiver(hook)
    enqueue(alert_for(svc))
    run_worker()
    delivery.delete_receiver(made["id"])
    assert Delivery.objects.count() == 0
    assert Receiver.objects(id=ObjectId(str(made["id"]))).count() == 0


def test_https_goes_to_the_checked_address_and_a_tls_failure_is_an_attempt(manual, hook, svc):
    port = hook.server.server_address[1]
    delivery.create_receiver({"name": unique("receiver"), "url": f"https://127.0.0.1:{port}/"})
    enqueue(alert_for(svc))
    run_worker()
    (row,) = deliveries()
    assert row.status == "pending"  # a plain-HTTP server cannot speak TLS: retried
    assert row.attempts[0].status_code is None
    assert "SSL" in row.last_error or "ssl" in row.last_error


def test_a_round_stops_claiming_after_its_time_budget(manual, hook, svc, monkeypatch):
    receiver(hook)
    for _ in range(3):
        enqueue(alert_for(svc))
    delivery.fan_out()
    real_post = delivery.post

    def slow_post(*args):
        manual.advance(delivery.ROUND_SECONDS)  # as if the receiver took a minute
        return real_post(*args)

    monkeypatch.setattr(delivery, "post", slow_post)
    assert delivery.deliver_due() == 2  # the third waits for the next round
    assert delivery.deliver_due() == 1


def test_a_bad_outbox_row_does_not_hold_up_the_others(manual, hook, svc):
    receiver(hook)
    bad = enqueue(alert_for(svc, labels="not a mapping"))
    enqueue(alert_for(svc))
    assert delivery.fan_out() == 1
    assert [row["key"] for row in outbox.pending()] == [bad]  # retried next round
    assert delivery.deliver_due() == 1
    assert len(hook.received) == 1
