"""Webhook delivery with several workers at once: each attempt is sent once.

On SecantusDB in every run (mongomock is not atomic under threads: on the mongomock run
the ``wire_uri`` fixture starts a SecantusDB of this module's own).  Three apps on one
database stand for three ``flask worker`` processes; their threads start together at a
barrier, and a small random pause before each claim interleaves them (a device, not a
wait for a rule: the time is a manual clock that stands still during the race).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from polymicro import create_app
from polymicro.alerts import delivery
from polymicro.alerts.delivery_models import Delivery
from polymicro.common import caching, clock
from polymicro.extensions import close_db
from tests.alerts_delivery_helpers import Answer, Hook, alert_for, enqueue
from tests.conftest import _empty_database, make_config
from tests.factories import make_service, unique

WORKERS = 3
ALERTS = 15


@pytest.fixture
def apps(wire_uri, redis_url):
    made = [
        create_app(make_config(wire_uri, redis_url, WEBHOOK_ALLOW_PRIVATE=True))
        for _ in range(WORKERS)
    ]
    caching.reset_state()
    with made[0].app_context(), clock.use(clock.ManualClock()) as manual:
        _empty_database()
        made[0].manual = manual
        yield made
        _empty_database()
    close_db()


@pytest.fixture
def jitter(monkeypatch):
    real_claim = delivery._claim

    def claim(*args):
        time.sleep(random.random() / 500)
        return real_claim(*args)

    monkeypatch.setattr(delivery, "_claim", claim)


def race(apps, job) -> list:
    barrier = threading.Barrier(len(apps))
    results: list = [None] * len(apps)
    errors: list = []

    def run(index, app):
        try:
            with app.app_context():
                barrier.wait()
                results[index] = job()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(apps)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    return results


def test_three_workers_fan_out_and_send_each_notification_once(apps, jitter):
    with Hook() as hook:
        svc = make_service()
        for _ in range(2):
            delivery.create_receiver({"name": unique("receiver"), "url": hook.url})
        for _ in range(ALERTS):
            enqueue(alert_for(svc))
        race(apps, delivery.fan_out)
        assert Delivery.objects.count() == 2 * ALERTS
        sent = race(apps, lambda: delivery.deliver_due(limit=1000))
        assert sum(sent) == 2 * ALERTS
        assert len(hook.received) == 2 * ALERTS
        ids = [r.headers["webhook-id"] for r in hook.received]
        assert len(set(ids)) == len(ids)
        for row in Delivery.objects:
            assert row.status == "delivered"
            assert row.attempt_count == 1


def test_three_workers_retry_each_failure_once(apps, jitter):
    with Hook() as hook:
        svc = make_service()
        delivery.create_receiver({"name": unique("receiver"), "url": hook.url})
        for _ in range(ALERTS):
            enqueue(alert_for(svc))
        delivery.fan_out()
        hook.answer(*[Answer(500)] * ALERTS)
        race(apps, lambda: delivery.deliver_due(limit=1000))
        assert len(hook.received) == ALERTS
        for row in Delivery.objects:
            assert row.status == "pending"
            assert row.attempt_count == 1
        apps[0].manual.advance(apps[0].config["WEBHOOK_RETRY_BASE_SECONDS"])
        assert sum(race(apps, lambda: delivery.deliver_due(limit=1000))) == ALERTS
        assert len(hook.received) == 2 * ALERTS
        for row in Delivery.objects:
            assert row.status == "delivered"
            assert [a.status_code for a in row.attempts] == [500, 200]
