"""Storage helpers shared by the documents."""

from __future__ import annotations

import mongoengine as me

from polymicro.common.timeutil import utcnow


def name_key(name: str) -> str:
    """The case-insensitive form of a name, used for uniqueness and name search."""
    return name.casefold()


class TimestampedDocument(me.Document):
    """``created_at``/``updated_at`` kept by the service layer (naive UTC, ms)."""

    meta = {"abstract": True}

    created_at = me.DateTimeField(required=True, default=utcnow)
    updated_at = me.DateTimeField(required=True)

    def clean(self):
        # A new document's updated_at equals its created_at to the millisecond.
        if self.updated_at is None:
            self.updated_at = self.created_at
