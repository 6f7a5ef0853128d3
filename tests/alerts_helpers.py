"""Helpers of the alerts tests: scripted data written straight into the collections
(points, log entries) at chosen instants, and what evaluation left behind (events,
outbox rows)."""

from __future__ import annotations

from datetime import datetime

from bson import ObjectId

from polymicro.alerts import service as alerts
from polymicro.alerts.models import AlertInstance
from polymicro.alerts.outbox import OutboxEntry
from polymicro.events import service as events
from polymicro.logs.models import SEVERITY_LEVEL, LogEntry
from polymicro.metrics.models import CpuMetric, CpuPoint

EVENT = alerts.EVENT


def metric_id_of(svc) -> ObjectId:
    row = CpuMetric._get_collection().find_one({"service_id": svc.id})
    if row is not None:
        return row["_id"]
    now = datetime(2000, 1, 1)
    return (
        CpuMetric._get_collection()
        .insert_one(
            {
                "project_id": svc.project_id,
                "service_id": svc.id,
                "service_name": svc.name,
                "service_key": svc.name.casefold(),
                "created_at": now,
                "updated_at": now,
            }
        )
        .inserted_id
    )


def point(svc, when: datetime, load: float, memory: float | None = None) -> None:
    CpuPoint._get_collection().insert_one(
        {"metric_id": metric_id_of(svc), "time": when, "load": load, "memory": memory}
    )


def log_line(svc, when: datetime, severity: str = "error", message: str = "boom") -> None:
    LogEntry._get_collection().insert_one(
        {
            "project_id": svc.project_id,
            "service_id": svc.id,
            "severity": severity,
            "level": SEVERITY_LEVEL[severity],
            "message": message,
            "timestamp": when,
        }
    )


def rule_data(svc, **fields) -> dict:
    """A metric rule of ``svc``: avg load over 60 s above 80."""
    data = {
        "project_id": svc.project_id,
        "service_id": svc.id,
        "name": "high load",
        "kind": "metric_threshold",
        "aggregate": "avg",
        "field": "load",
        "window": 60,
        "operator": ">",
        "threshold": 80.0,
        "for_seconds": 0,
        "keep_firing_for": 0,
        "annotations": {"summary": "{service}: load {value} > {threshold}"},
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None or k == "service_id"}


def alert_events(instance_id=None) -> list[dict]:
    found, after = [], 0
    while True:
        page = events.read_events(after=after, type=[EVENT], limit=1000)
        found += page["events"]
        if len(page["events"]) < 1000:
            break
        after = page["next_after"]
    if instance_id is not None:
        found = [e for e in found if e["subject"]["id"] == str(instance_id)]
    return found


def chain(instance_id) -> list[tuple[str, str]]:
    """``(before, after)`` of an instance's events in version order."""
    found = sorted(alert_events(instance_id), key=lambda e: e["changes"]["alert"]["version"])
    return [(e["changes"]["alert"]["before"], e["changes"]["alert"]["after"]) for e in found]


def outbox_rows() -> list[dict]:
    return list(OutboxEntry._get_collection().find({}).sort("created_at", 1))


def instance_rows() -> list[dict]:
    return list(AlertInstance._get_collection().find({}))
