"""Alert evaluation at the service layer, with a manual clock.

- Metric thresholds (avg, max, p95 of load or memory), log counts (severity floor,
  literal text) and liveness, measured by database aggregations.
- The state machine in the database: ``for`` survives a restart, ``keep_firing_for``
  prevents flapping, a liveness rule keeps its state while the service is ``unknown``.
- One event per transition; one outbox row per firing/resolved transition, re-enqueued
  after a crash between the two; silenced transitions are not notified.
- The backtest replays exactly what the worker records.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from polymicro.alerts import outbox
from polymicro.alerts import service as alerts
from polymicro.alerts.models import AlertInstance
from polymicro.common import clock
from polymicro.errors import InvalidInput
from polymicro.liveness import service as liveness
from tests.alerts_helpers import (
    chain,
    instance_rows,
    log_line,
    outbox_rows,
    point,
    rule_data,
)
from tests.factories import make_project, make_service

EVERY = 15


@pytest.fixture
def manual(ctx):
    with clock.use(clock.ManualClock()) as manual:
        yield manual


@pytest.fixture
def svc(ctx):
    return make_service(make_project())


def rounds(manual, count: int, every: int = EVERY) -> int:
    recorded = 0
    for _ in range(count):
        manual.advance(every)
        recorded += alerts.evaluate_all()
    return recorded


def only_instance() -> dict:
    rows = instance_rows()
    assert len(rows) == 1, rows
    return rows[0]


def test_metric_threshold_pending_then_firing_then_resolved(manual, svc):
    alerts.create_rule(rule_data(svc, for_seconds=30))
    start = manual.now()
    for second in range(1, 300, 5):
        point(svc, start + timedelta(seconds=second), 95.0 if second < 120 else 10.0)
    assert alerts.evaluate_all() == 0  # nothing yet at start (window holds no point)
    manual.advance(EVERY)
    assert alerts.evaluate_all() == 1
    row = only_instance()
    assert row["state"] == "pending"
    assert row["active_at"] == manual.now()
    rounds(manual, 1)
    assert only_instance()["state"] == "pending"
    rounds(manual, 1)  # active_at + 30 s
    row = only_instance()
    assert row["state"] == "firing"
    assert row["annotations"]["summary"] == f"{svc.name}: load 95 > 80"
    rounds(manual, 12)  # the high points leave the 60 s window
    row = only_instance()
    assert row["state"] == "resolved"
    assert chain(row["_id"]) == [
        ("inactive", "pending"),
        ("pending", "firing"),
        ("firing", "resolved"),
    ]
    rows = outbox_rows()
    assert [(r["status"], r["key"]) for r in rows] == [
        ("firing", f"{row['_id']}:2"),
        ("resolved", f"{row['_id']}:3"),
    ]
    assert rows[0]["alert"]["labels"]["alertname"] == "high load"
    assert row["notified_version"] == row["version"] == 3


@pytest.mark.parametrize(
    ("aggregate", "field", "threshold", "fires"),
    [
        ("avg", "load", 50.0, False),  # avg of 1..20 and 90 ≈ 14
        ("max", "load", 50.0, True),
        ("p95", "load", 19.5, True),  # nearest rank of 21 values: the 20th = 20
        ("p95", "load", 20.0, False),
        ("avg", "memory", 40.0, True),  # memory: 50 on the points that have it
    ],
)
def test_aggregates(manual, svc, aggregate, field, threshold, fires):
    now = manual.now()
    for i in range(1, 21):
        point(svc, now - timedelta(seconds=i), float(i), memory=50.0 if i % 2 else None)
    point(svc, now - timedelta(seconds=30), 90.0)
    point(svc, now - timedelta(seconds=120), 1000.0)  # outside the window
    alerts.create_rule(rule_data(svc, aggregate=aggregate, field=field, threshold=threshold))
    assert alerts.evaluate_all() == (1 if fires else 0)


def test_a_rule_of_a_project_watches_each_service(manual, svc):
    other = make_service(project_id=svc.project_id)
    quiet = make_service(project_id=svc.project_id)
    alerts.create_rule(rule_data(svc, service_id=None))
    for s in (svc, other):
        point(s, manual.now(), 99.0)
    point(quiet, manual.now(), 1.0)
    assert alerts.evaluate_all() == 2
    assert {r["service_id"] for r in instance_rows()} == {svc.id, other.id}


def test_log_count_with_severity_floor_and_text(manual, svc):
    alerts.create_rule(
        rule_data(
            svc,
            kind="log_count",
            aggregate=None,
            field=None,
            min_severity="error",
            text="Timeout",
            threshold=2.0,
            operator=">=",
            annotations={"summary": "{value} timeouts on {service}"},
        )
    )
    now = manual.now()
    log_line(svc, now - timedelta(seconds=5), "error", "db timeout (a+b)")
    log_line(svc, now - timedelta(seconds=6), "info", "timeout")  # below the floor
    log_line(svc, now - timedelta(seconds=7), "critical", "other")  # no text
    assert alerts.evaluate_all() == 0
    log_line(svc, now - timedelta(seconds=8), "critical", "TIMEOUT again")
    assert alerts.evaluate_all() == 1
    assert only_instance()["annotations"]["summary"] == f"2 timeouts on {svc.name}"


def test_a_worker_restarted_during_for_fires_at_active_at_plus_for(manual, svc):
    alerts.create_rule(rule_data(svc, for_seconds=120, window=600))
    start = manual.now()
    for second in range(0, 600, 10):
        point(svc, start + timedelta(seconds=second), 99.0)
    manual.advance(1)
    alerts.evaluate_all()
    active_at = only_instance()["active_at"]
    # "The worker dies": a minute with no evaluation, then a worker evaluates again
    # (a new process knows only the database: evaluation keeps no memory of its own).
    manual.advance(60)
    assert alerts.evaluate_all() == 0
    manual.set(active_at + timedelta(seconds=119))
    assert alerts.evaluate_all() == 0
    manual.set(active_at + timedelta(seconds=120))
    assert alerts.evaluate_all() == 1
    assert only_instance()["fired_at"] == active_at + timedelta(seconds=120)


def test_liveness_rule_keeps_its_state_while_unknown(manual, svc, monkeypatch):
    alerts.create_rule(
        rule_data(
            svc,
            kind="liveness",
            aggregate=None,
            field=None,
            window=None,
            operator=None,
            threshold=None,
        )
    )
    states = {"value": "critical"}
    monkeypatch.setattr(
        liveness, "liveness_of", lambda ids: {sid: {"state": states["value"]} for sid in ids}
    )
    assert alerts.evaluate_all() == 1
    assert only_instance()["state"] == "firing"
    states["value"] = "unknown"
    assert rounds(manual, 3) == 0
    assert only_instance()["state"] == "firing"
    states["value"] = "passing"
    assert rounds(manual, 1) == 1
    assert only_instance()["state"] == "resolved"
    states["value"] = "unknown"  # after an outage: nothing fires
    assert rounds(manual, 3) == 0
    states["value"] = None  # liveness off: does not hold
    assert rounds(manual, 1) == 0


def test_liveness_rule_on_real_heartbeats(manual, svc):
    svc.update(heartbeat_ttl=10, heartbeat_grace=10)
    alerts.create_rule(
        rule_data(
            svc,
            kind="liveness",
            aggregate=None,
            field=None,
            window=None,
            operator=None,
            threshold=None,
            states=["critical"],
        )
    )
    liveness.heartbeat(svc.id)
    assert alerts.evaluate_all() == 0
    for _ in range(6):  # 30 s with no heartbeat: critical (the worker observing)
        manual.advance(5)
        liveness.record_due()
    assert alerts.evaluate_all() == 1
    assert only_instance()["state"] == "firing"
    liveness.heartbeat(svc.id)
    assert alerts.evaluate_all() == 1
    assert only_instance()["state"] == "resolved"


def test_no_flap_an_alternating_series_fires_once_and_resolves_once(manual, svc):
    alerts.create_rule(rule_data(svc, window=EVERY, for_seconds=0, keep_firing_for=60))
    start = manual.now()
    for i in range(40):  # high then low, each for one interval, for 10 minutes
        point(svc, start + timedelta(seconds=i * EVERY + 1), 90.0 if i % 2 == 0 else 10.0)
    rounds(manual, 60)
    row = only_instance()
    assert chain(row["_id"]) == [("inactive", "firing"), ("firing", "resolved")]
    assert [r["status"] for r in outbox_rows()] == ["firing", "resolved"]


def test_a_crash_between_transition_and_enqueue_is_enqueued_next_round(manual, svc, monkeypatch):
    alerts.create_rule(rule_data(svc))
    point(svc, manual.now(), 99.0)
    real = outbox.enqueue

    def crash(*args, **kwargs):
        raise RuntimeError("the worker died here")

    monkeypatch.setattr(outbox, "enqueue", crash)
    assert alerts.evaluate_all() == 0  # the rule failed after its transition (logged)
    row = only_instance()
    assert row["state"] == "firing"
    assert row["notified_version"] < row["version"]
    assert outbox_rows() == []
    monkeypatch.setattr(outbox, "enqueue", real)
    manual.advance(EVERY)
    alerts.evaluate_all()
    alerts.evaluate_all()
    assert [(r["status"], r["key"]) for r in outbox_rows()] == [("firing", f"{row['_id']}:1")]
    assert only_instance()["notified_version"] == 1


def test_a_silenced_instance_transitions_without_notifications(manual, svc):
    alerts.create_rule(rule_data(svc))
    point(svc, manual.now(), 99.0)
    alerts.evaluate_all()
    alert_id = only_instance()["_id"]
    with pytest.raises(InvalidInput):
        alerts.silence(alert_id, manual.now())
    view = alerts.silence(alert_id, manual.now() + timedelta(minutes=10))
    assert view["silenced"] is True
    rounds(manual, 5)  # the point leaves the window: resolved, silenced
    row = only_instance()
    assert row["state"] == "resolved"
    assert row["notified_version"] == row["version"]
    assert [r["status"] for r in outbox_rows()] == ["firing"]
    point(svc, manual.now(), 99.0)
    alerts.evaluate_all()  # fires again, silenced
    assert [r["status"] for r in outbox_rows()] == ["firing"]
    manual.advance(600)
    point(svc, manual.now(), 99.0)
    rounds(manual, 5)  # silence over: the resolve is notified
    assert [r["status"] for r in outbox_rows()] == ["firing", "resolved"]
    assert len(chain(alert_id)) == 4


def test_disabling_or_deleting_a_rule_ends_its_alerts(manual, svc):
    rule = alerts.create_rule(rule_data(svc))
    point(svc, manual.now(), 99.0)
    alerts.evaluate_all()
    alerts.update_rule(rule["id"], {"enabled": False})
    assert alerts.evaluate_all() == 1
    assert only_instance()["state"] == "resolved"
    alerts.update_rule(rule["id"], {"enabled": True})
    assert alerts.evaluate_all() == 1
    alerts.delete_rule(rule["id"])
    assert AlertInstance.objects.count() == 0
    assert [r["status"] for r in outbox_rows()] == ["firing", "resolved", "firing", "resolved"]


def test_backtest_replays_what_the_worker_records(manual, svc):
    rule = alerts.create_rule(rule_data(svc, window=30, for_seconds=30, keep_firing_for=30))
    start = manual.now()
    loads = [90, 90, 90, 90, 10, 90, 10, 10, 10, 10, 90, 90, 90, 90, 90, 10, 10, 10, 10, 10]
    for i, load in enumerate(loads * 2):
        point(svc, start + timedelta(seconds=i * EVERY + 1), float(load))
    recorded = []
    for i in range(len(loads) * 2 + 4):
        manual.set(start + timedelta(seconds=(i + 1) * EVERY))
        if alerts.evaluate_all():
            row = only_instance()
            recorded.append((manual.now(), row["state"]))
    result = alerts.backtest(rule["id"], start + timedelta(seconds=EVERY), manual.now())
    assert [(t["at"], t["after"]) for t in result["transitions"]] == recorded
    assert "firing" in [state for _, state in recorded]
    assert result["steps"] == len(loads) * 2 + 4
    # it wrote nothing
    assert len(outbox_rows()) == len([s for _, s in recorded if s in ("firing", "resolved")])


def test_backtest_bounds_its_steps(manual, svc, app):
    rule = alerts.create_rule(rule_data(svc))
    limit = app.config["ALERTS_BACKTEST_MAX_STEPS"]
    until = manual.now()
    with pytest.raises(InvalidInput):
        alerts.backtest(rule["id"], until - timedelta(seconds=EVERY * limit), until)
    assert (
        alerts.backtest(rule["id"], until - timedelta(seconds=EVERY * (limit - 1)), until)["steps"]
        == limit
    )


def test_flask_worker_once_evaluates_one_round(app, manual, svc):
    alerts.create_rule(rule_data(svc))
    point(svc, manual.now(), 99.0)
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert only_instance()["state"] == "firing"
    assert [r["status"] for r in outbox_rows()] == ["firing"]


def test_rule_events_name_the_rule(manual, svc):
    from polymicro.events import service as events

    rule = alerts.create_rule(rule_data(svc))
    alerts.update_rule(rule["id"], {"threshold": 90.0})
    alerts.delete_rule(rule["id"])
    found = events.read_events(
        after=0, type=["alert_rule.created", "alert_rule.updated", "alert_rule.deleted"], limit=10
    )["events"]
    assert [e["type"] for e in found] == [
        "alert_rule.created",
        "alert_rule.updated",
        "alert_rule.deleted",
    ]
    assert {e["subject"]["id"] for e in found} == {str(rule["id"])}
    assert found[1]["changes"] == {"threshold": {"before": 80.0, "after": 90.0}}
