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
    # True once every stored point of the entry is in its rollups or in an hour marked
    # dirty (entries created since rollups exist; older ones after `flask rollups
    # rebuild`).  Until then its series are computed from raw points.
    rollups = me.BooleanField()

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


# --- rollups ------------------------------------------------------------------------

ROLLUP_SIZES = {"5m": timedelta(minutes=5), "1h": timedelta(hours=1)}
PERCENTILES = (0.5, 0.9, 0.95, 0.99)  # stored in every rollup bucket (exact, see service)


class _Rollup(me.Document):
    """The points of one entry in one bucket (``time`` = its start), as partial sums
    that merge exactly (``count``, ``*_sum``, ``*_min``, ``*_max``) plus the bucket's
    own percentiles (which do not merge: see the service).  Rewritten whole from the
    raw points each time the bucket is recomputed (an upsert by ``(metric_id, time)``).

    Their retention is their own (``POLYMICRO_RETENTION_ROLLUPS_*_DAYS``): a TTL index
    on ``time`` applied by :func:`rollup_retention` (no TTL in ``meta``: its value is a
    setting, and ``meta`` is read at import time).
    """

    metric_id = me.ObjectIdField(required=True)
    time = me.DateTimeField(required=True)
    count = me.IntField(required=True)
    load_sum = me.FloatField()
    load_min = me.FloatField()
    load_max = me.FloatField()
    load_p = me.ListField(me.FloatField())  # PERCENTILES of load, in order
    memory_count = me.IntField()
    memory_sum = me.FloatField()
    memory_min = me.FloatField()
    memory_max = me.FloatField()
    memory_p = me.ListField(me.FloatField())
    threads_max = me.IntField()

    meta = {"abstract": True}


class CpuRollup5m(_Rollup):
    meta = {
        "collection": "cpu_rollups_5m",
        "indexes": [{"fields": ["metric_id", "time"], "unique": True}],
    }


class CpuRollup1h(_Rollup):
    meta = {
        "collection": "cpu_rollups_1h",
        "indexes": [{"fields": ["metric_id", "time"], "unique": True}],
    }


ROLLUPS = {"5m": CpuRollup5m, "1h": CpuRollup1h}
# The setting that keeps each rollup size (days; 0 keeps forever).
ROLLUP_RETENTION_SETTINGS = {
    "5m": "RETENTION_ROLLUPS_5M_DAYS",
    "1h": "RETENTION_ROLLUPS_1H_DAYS",
}
ROLLUP_TTL_INDEX = "time_ttl"


class CpuRollupDirty(me.Document):
    """An hour of an entry whose rollups may not match its raw points any more: points
    were stored in it after its rollups were last computed.  Marked with ``$inc`` on
    ``version`` after every write of points; the worker recomputes the hour and removes
    the mark only if ``version`` is still the one it read (compare-and-set), so a point
    stored meanwhile keeps the hour marked.  Reads compute marked hours from raw."""

    metric_id = me.ObjectIdField(required=True)
    time = me.DateTimeField(required=True)  # the hour's start
    version = me.IntField(required=True, default=0)

    meta = {
        "collection": "cpu_rollup_dirty",
        "indexes": [{"fields": ["metric_id", "time"], "unique": True}],
    }


# Typical stored sizes (BSON bytes, measured on SecantusDB) for the usage estimate where
# the database gives no collStats.
TYPICAL_POINT_BYTES = 90
TYPICAL_ROLLUP_BYTES = 330
