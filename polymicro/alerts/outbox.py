"""The outbox between alert evaluation and webhook delivery (the seam of the domain).

Evaluation (``service.py``) records each firing/resolved transition of an alert
instance with a compare-and-set on the instance's ``version``, then calls
:func:`enqueue` with the instance's public view and the key ``"<instance id>:<version>"``.
The instance keeps ``notified_version``: evaluation re-enqueues any instance whose
``notified_version`` is behind its ``version`` (a crash between the transition and the
enqueue), and :func:`enqueue` is an upsert by key, so a retry never makes a second row.

Delivery (``delivery.py``) fans each pending row out to the receivers that match it
(one delivery per receiver, unique by ``(key, receiver)``), then marks the row
``fanned_out``.  A crash anywhere leaves a row or a delivery to pick up next round.

``alert`` is the instance as ``GET /api/alerts`` shows it::

    {"id", "rule_id", "rule_name", "project_id", "service_id", "service_name",
     "state", "value", "labels": {..}, "annotations": {"summary", "description", ..},
     "active_at", "fired_at", "resolved_at", "fingerprint"}

(ids as strings, instants as naive-UTC datetimes).
"""

from __future__ import annotations

from datetime import datetime

import mongoengine as me

from polymicro.common.timeutil import utcnow

STATUSES = ("firing", "resolved")


class OutboxEntry(me.Document):
    key = me.StringField(required=True)  # "<instance id>:<version>": one row per transition
    status = me.StringField(required=True, choices=STATUSES)
    alert = me.DictField(required=True)
    project_id = me.ObjectIdField(required=True)
    created_at = me.DateTimeField(required=True)
    fanned_out = me.BooleanField(default=False)

    meta = {
        "collection": "alert_outbox",
        "indexes": [{"fields": ["key"], "unique": True}, ("fanned_out", "created_at")],
    }


def enqueue(alert: dict, status: str, key: str, now: datetime | None = None) -> None:
    """Record one notification to send (idempotent: an upsert by ``key``)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    OutboxEntry._get_collection().update_one(
        {"key": key},
        {
            "$setOnInsert": {
                "key": key,
                "status": status,
                "alert": alert,
                "project_id": OutboxEntry.project_id.to_mongo(alert["project_id"]),
                "created_at": now or utcnow(),
                "fanned_out": False,
            }
        },
        upsert=True,
    )


def pending(limit: int = 500) -> list[dict]:
    """Rows not fanned out yet, oldest first (raw documents)."""
    return list(
        OutboxEntry._get_collection().find({"fanned_out": False}).sort("created_at", 1).limit(limit)
    )


def mark_fanned_out(key: str) -> None:
    OutboxEntry._get_collection().update_one({"key": key}, {"$set": {"fanned_out": True}})
