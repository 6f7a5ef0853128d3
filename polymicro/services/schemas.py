"""The service resource in the API contract."""

from __future__ import annotations

from marshmallow import fields, validate

from polymicro.common.fields import (
    CaseInsensitiveChoice,
    HttpUrl,
    Name,
    ObjectIdString,
    SearchText,
    StrictInteger,
    Tags,
    Trimmed,
    UTCDateTime,
)
from polymicro.common.schemas import BaseQuerySchema, BaseSchema
from polymicro.services.models import HEALTHS, STATUSES


class ServiceSchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    project_id = ObjectIdString(required=True)
    name = Name(required=True)
    description = Trimmed(allow_none=True, validate=validate.Length(max=2000))
    port = StrictInteger(allow_none=True, validate=validate.Range(min=1, max=65535))
    url = HttpUrl(allow_none=True, validate=validate.Length(max=2048))
    status = CaseInsensitiveChoice(STATUSES)
    health = CaseInsensitiveChoice(HEALTHS)
    version = Trimmed(allow_none=True, validate=validate.Length(max=64))
    uptime = Trimmed(allow_none=True, validate=validate.Length(max=64))
    last_deployment = UTCDateTime(allow_none=True)
    container_name = Trimmed(allow_none=True, validate=validate.Length(max=255))
    tags = Tags()
    discovered = fields.Boolean(
        dump_only=True,
        metadata={"description": "Registered by ingest (OTLP/Loki) when a shipper first named it."},
    )
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)


class ServiceUpdateSchema(ServiceSchema):
    """PUT and PATCH: any subset; ``project_id`` may be repeated but not changed (422)."""

    project_id = ObjectIdString()
    name = Name()


class ServiceQueryArgsSchema(BaseQuerySchema):
    project_id = ObjectIdString()
    status = CaseInsensitiveChoice(STATUSES)
    health = CaseInsensitiveChoice(HEALTHS)
    q = SearchText(
        metadata={"description": "Name contains this text (case-insensitive, literal)."},
    )
