"""CPU metrics entries and their points.

An entry (collection ``cpu_metrics``) is small and fixed-size: which project and service
it belongs to.  Its points live in ``cpu_points``, one small document per point, read
through the ``(metric_id, time)`` index.  No document grows with time, a window is an
index range scan, and downsampling is an aggregation over that range.

(On a real MongoDB a time-series collection would store points even more compactly;
mongomock and SecantusDB do not offer them, so the portable layout is used everywhere.)
"""

from __future__ import annotations

from datetime import timedelta

import mongoengine as me

from polymicro.common.models import TimestampedDocument
from polymicro.common.timeutil import utcnow

# Limits of what is stored and read (the schemas and the service both use them).
DEFAULT_POINTS = 500  # points per entry returned by a read unless ``points`` says otherwise
MAX_POINTS_PER_WRITE = 10_000  # points per request (append, create, replace)
MAX_LOAD = 100_000.0  # percent: 1000 fully busy cores
MAX_THREADS = 10_000_000
MIN_STEP = timedelta(seconds=10)
MAX_STEP = timedelta(days=1)
DEFAULT_STEP = timedelta(minutes=5)
DEFAULT_SERIES_WINDOW = timedelta(hours=24)
MAX_BUCKETS = 10_000


class CpuMetric(TimestampedDocument):
    project_id = me.ObjectIdField(required=True)
    service_id = me.ObjectIdField(required=True)
    # The service's current name (kept in step when the service is renamed): the
    # dashboard matches entries to services by name.
    service_name = me.StringField(required=True, max_length=100)
    service_key = me.StringField(required=True)  # casefold(service_name)

    meta = {
        "collection": "cpu_metrics",
        "indexes": [
            {"fields": ["project_id", "service_id"], "unique": True},
            "service_id",
            "service_key",
            "created_at",
        ],
    }


class CpuPoint(me.Document):
    metric_id = me.ObjectIdField(required=True)
    time = me.DateTimeField(required=True, default=utcnow)
    load = me.FloatField(required=True, min_value=0)
    memory = me.FloatField(min_value=0, max_value=100)  # optional: null when not measured
    threads = me.IntField(min_value=0)  # optional: null when not measured

    meta = {
        "collection": "cpu_points",
        "indexes": [{"fields": ["metric_id", "time"]}],
    }
