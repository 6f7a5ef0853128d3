"""Service documents (collection ``services``)."""

from __future__ import annotations

import mongoengine as me

from polymicro.common.models import TimestampedDocument

STATUSES = ("Running", "Stopped", "Starting", "Error", "Unknown")
HEALTHS = ("Healthy", "Warning", "Degraded", "Critical", "Unknown")
# What a service's heartbeats say about it (derived by the liveness domain, which shows
# it in the views as `liveness` and maps it onto `health` and `status`).
LIVENESS_STATES = ("passing", "warning", "critical", "offline", "unknown")
MAX_HEARTBEAT_SECONDS = 30 * 86400
MAX_HEARTBEAT_FAILURES = 100


class Service(TimestampedDocument):
    # Plain ObjectIds, not ReferenceFields: nothing dereferences behind our back.
    project_id = me.ObjectIdField(required=True)
    name = me.StringField(required=True, max_length=100)
    name_key = me.StringField(required=True)  # casefold(name), unique per project
    description = me.StringField(max_length=2000)
    port = me.IntField(min_value=1, max_value=65535)
    url = me.StringField(max_length=2048)
    status = me.StringField(choices=STATUSES, default="Unknown")
    health = me.StringField(choices=HEALTHS, default="Unknown")
    version = me.StringField(max_length=64)
    uptime = me.StringField(max_length=64)
    last_deployment = me.DateTimeField()
    container_name = me.StringField(max_length=255)
    tags = me.ListField(me.StringField(max_length=50), default=list)
    # Registered by ingest (OTLP/Loki) the first time a shipper named it, not by a person.
    discovered = me.BooleanField(default=False)
    # Liveness settings (None: the defaults, POLYMICRO_HEARTBEAT_*); the state itself
    # lives in the liveness domain's collection.
    heartbeat_ttl = me.IntField(min_value=1, max_value=MAX_HEARTBEAT_SECONDS)
    heartbeat_grace = me.IntField(min_value=0, max_value=MAX_HEARTBEAT_SECONDS)
    heartbeat_failures = me.IntField(min_value=1, max_value=MAX_HEARTBEAT_FAILURES)
    heartbeat_from_ingest = me.BooleanField(default=False)

    meta = {
        "collection": "services",
        "indexes": [
            {"fields": ["project_id", "name_key"], "unique": True},
            "name_key",
            "status",
            "health",
            "created_at",
        ],
    }
