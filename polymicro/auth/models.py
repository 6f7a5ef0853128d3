"""Users (collection ``users``) and project API keys (collection ``api_keys``)."""

from __future__ import annotations

import mongoengine as me

from polymicro.common.models import TimestampedDocument

ROLES = ("viewer", "editor", "admin")


class User(TimestampedDocument):
    username = me.StringField(required=True, max_length=50)
    username_key = me.StringField(required=True)  # casefold: unique case-insensitively
    email = me.StringField(required=True, max_length=254)  # stored lower-case, unique
    full_name = me.StringField(max_length=100)  # display name (optional)
    password_hash = me.StringField(required=True)  # argon2id
    role = me.StringField(required=True, choices=ROLES, default="viewer")
    is_active = me.BooleanField(required=True, default=True)
    # Refresh tokens issued before this moment are refused (set when the password
    # changes or the account is switched off).
    tokens_valid_after = me.DateTimeField()

    meta = {
        "collection": "users",
        "indexes": [
            {"fields": ["username_key"], "unique": True},
            {"fields": ["email"], "unique": True},
            "created_at",
        ],
    }


class ApiKey(TimestampedDocument):
    """A machine credential for one project.  Only a SHA-256 of the key is stored: keys
    are 256-bit random, so a fast hash is as safe as a slow one and costs nothing per
    request.  ``prefix`` (public, part of the key) finds the row."""

    project_id = me.ObjectIdField(required=True)
    name = me.StringField(required=True, max_length=100)
    prefix = me.StringField(required=True)
    key_hash = me.StringField(required=True)
    created_by = me.StringField()
    revoked_at = me.DateTimeField()

    meta = {
        "collection": "api_keys",
        "indexes": [{"fields": ["prefix"], "unique": True}, ("project_id", "created_at")],
    }
