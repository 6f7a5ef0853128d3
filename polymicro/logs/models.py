"""Log entries (collection ``logs``)."""

from __future__ import annotations

import mongoengine as me

from polymicro.common.timeutil import utcnow

SEVERITIES = ("debug", "info", "warn", "error", "critical")
# Numeric rank stored beside the name: ``min_severity`` is one indexed range query and
# ``severity`` filters are ``level $in`` on the same index (the two map one to one, so
# a second set of indexes on the name would only slow every insert down).
SEVERITY_LEVEL = {name: rank for rank, name in enumerate(SEVERITIES)}
SEVERITY_ALIASES = {"warning": "warn", "fatal": "critical"}


class LogEntry(me.Document):
    project_id = me.ObjectIdField(required=True)
    service_id = me.ObjectIdField(required=True)
    severity = me.StringField(required=True, choices=SEVERITIES)
    level = me.IntField(required=True, min_value=0, max_value=len(SEVERITIES) - 1)
    message = me.StringField(required=True, max_length=16384)
    timestamp = me.DateTimeField(required=True, default=utcnow)
    source = me.StringField(max_length=256)
    test_id = me.StringField(max_length=256)
    func_id = me.StringField(max_length=256)
    attributes = me.DictField()

    # Every list is newest first with _id as tie-breaker (stable pages); each filter the
    # API offers has an index that also serves that sort (the tie-breaker included: an
    # index ending in -timestamp alone would leave MongoDB an in-memory sort).
    meta = {
        "collection": "logs",
        "ordering": ["-timestamp", "-id"],
        "indexes": [
            {"fields": ["-timestamp", "-id"]},
            {"fields": ["project_id", "-timestamp", "-id"]},
            {"fields": ["service_id", "-timestamp", "-id"]},
            {"fields": ["project_id", "level", "-timestamp", "-id"]},
            {"fields": ["level", "-timestamp", "-id"]},
            {"fields": ["source", "-timestamp", "-id"]},
            {"fields": ["test_id", "-timestamp", "-id"]},
            {"fields": ["func_id", "-timestamp", "-id"]},
        ],
    }


# Typical stored size of a log entry (BSON bytes, measured on SecantusDB with the demo
# data) for the usage estimate where the database gives no collStats.
TYPICAL_LOG_BYTES = 260
