"""The service resource in the API contract."""

from __future__ import annotations

from marshmallow import fields, validate

from polymicro.common.fields import (
    CaseInsensitiveChoice,
    ObjectIdString,
    SearchText,
    StrictInteger,
    Tags,
    Trimmed,
    UTCDateTime,
)
from polymicro.common.schemas import BaseQuerySchema, BaseSchema
from polymicro.services.models import HEALTHS, STATUSES


class TrimmedUrl(fields.Url):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = value.strip()
        return super()._deserialize(value, attr, data, **kwargs)


class ServiceSchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    project_id = ObjectIdString(required=True)
    name = Trimmed(required=True, validate=validate.Length(min=1, max=100))
    description = Trimmed(allow_none=True, validate=validate.Length(max=2000))
    port = StrictInteger(allow_none=True, validate=validate.Range(min=1, max=65535))
    url = TrimmedUrl(
        allow_none=True,
        schemes={"http", "https"},
        require_tld=False,
        validate=validate.Length(max=2048),
    )
    status = CaseInsensitiveChoice(STATUSES)
    health = CaseInsensitiveChoice(HEALTHS)
    version = Trimmed(allow_none=True, validate=validate.Length(max=64))
    uptime = Trimmed(allow_none=True, validate=validate.Length(max=64))
    last_deployment = UTCDateTime(allow_none=True)
    container_name = Trimmed(allow_none=True, validate=validate.Length(max=255))
    tags = Tags()
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)


class ServiceUpdateSchema(ServiceSchema):
    """PUT and PATCH: any subset; ``project_id`` may be repeated but not changed (422)."""

    project_id = ObjectIdString()
    name = Trimmed(validate=validate.Length(min=1, max=100))


class ServiceQueryArgsSchema(BaseQuerySchema):
    project_id = ObjectIdString()
    status = CaseInsensitiveChoice(STATUSES)
    health = CaseInsensitiveChoice(HEALTHS)
    q = SearchText(
        metadata={"description": "Name contains this text (case-insensitive, literal)."},
    )
