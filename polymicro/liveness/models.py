"""Liveness documents.

- ``liveness``: one row per service that has sent a heartbeat (``_id`` is the service's
  id).  It holds what the heartbeats said (``last_seen``, ``reported``, the open job
  runs) and the instants computed from them (``due``: when missing starts), the state
  last *recorded* (``state``, ``since``, ``reason``: what the last transition said), the
  ``version`` that every write increments (the compare-and-set), and ``next_check``:
  when the derived state can change next with no heartbeat (what the worker looks for).
- ``liveness_transitions``: each recorded change, for the history and the uptime
  (``(service_id, version)`` is unique: one row per recorded change, whoever retries).
- ``liveness_observer``: one row, ``{_id: "observer", last_tick, outage_start,
  outage_end}``: when polymicro was last seen observing, and its latest outage.
"""

from __future__ import annotations

import mongoengine as me

from polymicro.services.models import LIVENESS_STATES

STATES = LIVENESS_STATES  # passing, warning, critical, offline, unknown
REPORTED = ("passing", "warning", "critical")  # what a heartbeat may say
NOTE_LENGTH = 500
# Transitions are read for 30 days of uptime; kept a little longer (TTL index on `at`).
TRANSITIONS_KEEP_DAYS = 40
OBSERVER_ID = "observer"


class LivenessState(me.Document):
    id = me.ObjectIdField(primary_key=True)  # the service's id
    project_id = me.ObjectIdField(required=True)
    version = me.IntField(required=True, default=1)
    # What the heartbeats said.
    last_seen = me.DateTimeField(required=True)
    reported = me.StringField(required=True)  # passing | warning | critical
    reported_since = me.DateTimeField(required=True)
    reported_reason = me.StringField()
    note = me.StringField()
    failures = me.IntField(default=0)  # consecutive failed heartbeats
    runs = me.ListField(me.DictField())  # open job runs: [{id, started}], oldest first
    # The instants computed from them (at each heartbeat, with the service's settings).
    ttl = me.IntField(required=True)
    grace = me.IntField(required=True)
    window = me.IntField(required=True)  # ttl + grace, seconds
    deadline = me.DateTimeField(required=True)  # last_seen + ttl + grace
    run_deadline = me.DateTimeField()  # oldest open run + grace
    due = me.DateTimeField(required=True)  # min(deadline, run_deadline)
    # The state last recorded (published as an event), and when it may change next.
    state = me.StringField()
    since = me.DateTimeField()
    reason = me.StringField()
    next_check = me.DateTimeField()

    meta = {
        "collection": "liveness",
        # The worker's `next_check`, a project's services, and the filter's ranges
        # (rules.candidates): `due`, and `reported` with `due`.
        "indexes": ["project_id", "next_check", "due", ("reported", "due")],
    }


class LivenessTransition(me.Document):
    service_id = me.ObjectIdField(required=True)
    project_id = me.ObjectIdField(required=True)
    version = me.IntField(required=True)  # the state's version that recorded it
    at = me.DateTimeField(required=True)  # when the change happened
    before = me.StringField()  # None: the first heartbeat
    after = me.StringField(required=True)
    reason = me.StringField()

    meta = {
        "collection": "liveness_transitions",
        "indexes": [
            {"fields": ["service_id", "version"], "unique": True},
            {"fields": ["service_id", "-at"]},
            {"fields": ["at"], "expireAfterSeconds": TRANSITIONS_KEEP_DAYS * 86400},
        ],
    }


class Observer(me.Document):
    id = me.StringField(primary_key=True)
    last_tick = me.DateTimeField()
    outage_start = me.DateTimeField()
    outage_end = me.DateTimeField()

    meta = {"collection": "liveness_observer"}
