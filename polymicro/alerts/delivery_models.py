"""Webhook receivers and their deliveries (the delivery half of the alerts domain).

The alerts domain is split in two halves joined by the outbox (``outbox.py``):

- evaluation: ``models.py``, ``schemas.py``, ``resources.py``, ``service.py``,
  ``rules.py`` (rules, instances, states, backtest) enqueue one outbox row per
  transition;
- delivery: ``delivery_models.py`` (this file), ``delivery_schemas.py``,
  ``delivery_resources.py`` and ``delivery.py`` (the rules) fan each row out to the
  receivers that match it and send the webhooks.

Documents:

- ``alert_receivers``: a webhook URL, its signing secret (kept as given: the HMAC
  needs it), which projects and labels it gets, and whether it is enabled (with why
  not: a ``410 Gone`` disables it).
- ``alert_deliveries``: one notification to one receiver (``(key, receiver_id)`` is
  unique: the outbox key of the transition).  ``body`` is the exact JSON that is signed
  and sent, the same on every attempt and redelivery.  ``next_attempt_at`` is when it is
  due; claiming it moves ``next_attempt_at`` to the end of a lease and increments
  ``version`` (a compare-and-set: two workers never send the same attempt).  Finished
  ones are kept ``DELIVERIES_KEEP_DAYS`` (a TTL index on ``done_at``).
"""

from __future__ import annotations

import mongoengine as me

from polymicro.common.models import TimestampedDocument

DELIVERY_STATUSES = ("pending", "delivered", "failed", "cancelled")
NAME_LENGTH = 100
MAX_MATCHERS = 20
ATTEMPTS_KEPT = 50  # the last attempts of a delivery kept in its log
# Finished deliveries (delivered, failed, cancelled) are kept this long (TTL index on
# `done_at`; a pending delivery has none, so it never expires).
DELIVERIES_KEEP_DAYS = 30


class Receiver(TimestampedDocument):
    name = me.StringField(required=True, max_length=NAME_LENGTH)
    name_key = me.StringField(required=True)
    url = me.StringField(required=True)
    secret = me.StringField(required=True)  # whsec_<base64>
    project_ids = me.ListField(me.ObjectIdField())  # empty: every project
    matchers = me.DictField()  # label -> value, all must be equal
    enabled = me.BooleanField(default=True)
    disabled_reason = me.StringField()
    disabled_at = me.DateTimeField()

    meta = {
        "collection": "alert_receivers",
        "indexes": [{"fields": ["name_key"], "unique": True}],
        "ordering": ["name_key"],
    }


class Attempt(me.EmbeddedDocument):
    at = me.DateTimeField(required=True)
    status_code = me.IntField()
    error = me.StringField()
    duration_ms = me.FloatField()
    response_bytes = me.IntField()
    response_truncated = me.BooleanField(default=False)


class Delivery(me.Document):
    key = me.StringField(required=True)  # the outbox key: "<instance id>:<version>"
    receiver_id = me.ObjectIdField(required=True)
    project_id = me.ObjectIdField(required=True)
    alert_id = me.StringField()
    alertname = me.StringField()
    alert_status = me.StringField(required=True)  # firing | resolved
    body = me.StringField(required=True)  # the JSON sent, signed as is
    status = me.StringField(required=True, choices=DELIVERY_STATUSES, default="pending")
    version = me.IntField(required=True, default=1)
    created_at = me.DateTimeField(required=True)
    retry_from = me.DateTimeField(required=True)  # the retry window starts here
    next_attempt_at = me.DateTimeField(required=True)
    attempt_count = me.IntField(default=0)
    attempts = me.EmbeddedDocumentListField(Attempt)
    last_error = me.StringField()
    done_at = me.DateTimeField()  # delivered, failed or cancelled

    meta = {
        "collection": "alert_deliveries",
        "indexes": [
            {"fields": ["key", "receiver_id"], "unique": True},
            ("status", "next_attempt_at"),
            ("receiver_id", "-created_at"),
            {"fields": ["done_at"], "expireAfterSeconds": DELIVERIES_KEEP_DAYS * 86400},
        ],
    }
