"""Project documents (collection ``projects``)."""

from __future__ import annotations

import mongoengine as me

from polymicro.common.models import TimestampedDocument


class Project(TimestampedDocument):
    name = me.StringField(required=True, max_length=100)
    # casefold(name): unique index = case-insensitive uniqueness; also the sort key and
    # what ``q`` searches.
    name_key = me.StringField(required=True)
    description = me.StringField(default="", max_length=2000)
    owner = me.StringField(max_length=100)
    tags = me.ListField(me.StringField(max_length=50), default=list)
    path = me.StringField(max_length=1024)
    tests_dir_path = me.StringField(default="tests", max_length=1024)
    # Per-project retention, shorter than the global settings: {"logs_days": 7,
    # "points_days": 3} (keys left out follow the global setting).
    retention = me.DictField(default=dict)

    meta = {
        "collection": "projects",
        "indexes": [
            {"fields": ["name_key"], "unique": True},
            "owner",
            "tags",
            "created_at",
        ],
    }
