"""Base schemas shared by the domains."""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, validates_schema

from polymicro.common.fields import UTCDateTime


class BaseSchema(Schema):
    """JSON bodies: unknown fields are an error (422), never silently dropped."""

    class Meta:
        unknown = RAISE


class BaseQuerySchema(Schema):
    """Query strings: other parameters are ignored (``page``/``page_size`` are parsed by
    flask-smorest's own schema from the same query string)."""

    class Meta:
        unknown = EXCLUDE


class TimeWindowSchema(BaseQuerySchema):
    """``since``/``until`` filters (inclusive), validated as a pair."""

    since = UTCDateTime(metadata={"description": "Only items at or after this time."})
    until = UTCDateTime(metadata={"description": "Only items at or before this time."})

    @validates_schema
    def _ordered(self, data, **kwargs):
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and since > until:
            raise ValidationError("`since` must not be after `until`.", "since")
