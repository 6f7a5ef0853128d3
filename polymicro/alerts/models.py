"""Alert documents.

- ``alert_rules``: what to watch (a project, optionally one service), the condition
  (``kind`` and its fields), ``for_seconds``/``keep_firing_for``, labels, annotation
  templates and ``enabled``.
- ``alert_instances``: one row per (rule, service), created the first time the rule's
  condition holds for that service.  ``state`` (inactive, pending, firing, resolved),
  ``version`` (every transition increments it: the compare-and-set of the workers),
  ``notified_version`` (the last transition that needs no notification or whose
  notification is in the outbox), the instants of the state machine and the silence.
- The outbox (``alert_outbox``) is in ``outbox.py``.
"""

from __future__ import annotations

import mongoengine as me

from polymicro.common.models import TimestampedDocument

KINDS = ("metric_threshold", "log_count", "liveness")
AGGREGATES = ("avg", "max", "p95")
METRIC_FIELDS = ("load", "memory")
OPERATORS = (">", ">=", "<", "<=", "==", "!=")
LIVENESS_STATES = ("critical", "offline")
STATES = ("inactive", "pending", "firing", "resolved")
MAX_WINDOW = 7 * 86400
MAX_FOR = 7 * 86400


class AlertRule(TimestampedDocument):
    project_id = me.ObjectIdField(required=True)
    service_id = me.ObjectIdField()  # None: every service of the project
    name = me.StringField(required=True, max_length=100)
    kind = me.StringField(required=True, choices=KINDS)
    # metric_threshold
    aggregate = me.StringField(choices=AGGREGATES)
    field = me.StringField(choices=METRIC_FIELDS)
    # log_count
    min_severity = me.StringField()
    text = me.StringField(max_length=500)
    # liveness
    states = me.ListField(me.StringField(choices=LIVENESS_STATES))
    # metric_threshold and log_count
    window = me.IntField(min_value=1)  # seconds
    operator = me.StringField(choices=OPERATORS)
    threshold = me.FloatField()
    for_seconds = me.IntField(required=True, default=0, min_value=0)
    keep_firing_for = me.IntField(required=True, default=0, min_value=0)
    labels = me.DictField()
    annotations = me.DictField()
    enabled = me.BooleanField(required=True, default=True)

    meta = {
        "collection": "alert_rules",
        "ordering": ["name", "id"],
        "indexes": [("project_id", "name"), "service_id", "enabled"],
    }


class AlertInstance(me.Document):
    rule_id = me.ObjectIdField(required=True)
    project_id = me.ObjectIdField(required=True)
    service_id = me.ObjectIdField(required=True)
    service_name = me.StringField()
    state = me.StringField(required=True, choices=STATES)
    version = me.IntField(required=True, default=1)
    notified_version = me.IntField(required=True, default=0)
    value = me.FloatField()
    active_at = me.DateTimeField()  # when the condition began to hold (pending)
    fired_at = me.DateTimeField()
    resolved_at = me.DateTimeField()
    last_true_at = me.DateTimeField()  # the last evaluation that found it true
    changed_at = me.DateTimeField()
    evaluated_at = me.DateTimeField()
    silenced_until = me.DateTimeField()
    labels = me.DictField()
    annotations = me.DictField()
    fingerprint = me.StringField()

    meta = {
        "collection": "alert_instances",
        "indexes": [
            {"fields": ["rule_id", "service_id"], "unique": True},
            ("project_id", "state"),
            ("state", "changed_at"),
            "service_id",
        ],
    }
