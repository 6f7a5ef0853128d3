"""Event documents (collection ``events``) and their sequence counter (``event_counters``).

An event is never updated or deleted by the application; the TTL index on ``time`` (made
by ``service.ensure_retention``, because its length is a setting) removes old ones.

A *hole* is a row ``{seq, type: "hole", time}`` written by a reader for a ``seq`` whose
writer never inserted its event (it crashed or failed after taking the number).  Holes
are never returned; they make the sequence gap-free, so a reader can tell "not yet
committed" from "never will be".
"""

from __future__ import annotations

import mongoengine as me

HOLE = "hole"


DEFAULT_LIMIT = 100  # events per cursor read unless `limit` says otherwise
MAX_LIMIT = 1000


class Event(me.Document):
    seq = me.IntField(required=True, min_value=1)
    time = me.DateTimeField(required=True)
    type = me.StringField(required=True, max_length=64)
    project_id = me.ObjectIdField()
    subject = me.DictField()  # {kind, id, name}
    actor = me.DictField()  # {kind, id?, name?, prefix?}
    # What ``?actor=`` matches: the actor's kind, id, name and key prefix (one index).
    actor_keys = me.ListField(me.StringField())
    request_id = me.StringField()
    changes = me.DictField()  # {field: {before, after}}, updates only

    # The unique index on seq is what makes the sequence safe: a writer and a reader
    # declaring a hole race on it, and exactly one of them wins (see service.py).
    meta = {
        "collection": "events",
        "indexes": [
            {"fields": ["seq"], "unique": True},
            {"fields": ["project_id", "seq"]},
            {"fields": ["type", "seq"]},
            {"fields": ["actor_keys", "seq"]},
        ],
    }


class EventCounter(me.Document):
    """``{_id: "events", seq: last seq handed out, settled: every seq up to it is stored}``."""

    id = me.StringField(primary_key=True)
    seq = me.IntField(default=0)
    settled = me.IntField(default=0)

    meta = {"collection": "event_counters"}
