"""The service resource in the API contract."""

from __future__ import annotations

from marshmallow import fields, validate

from polymicro.common.fields import (
    CaseInsensitiveChoice,
    HttpUrl,
    Name,
    ObjectIdString,
    SearchText,
    StrictBoolean,
    StrictInteger,
    Tags,
    Trimmed,
    UTCDateTime,
)
from polymicro.common.schemas import BaseQuerySchema, BaseSchema
from polymicro.services.models import (
    HEALTHS,
    LIVENESS_STATES,
    MAX_HEARTBEAT_FAILURES,
    MAX_HEARTBEAT_SECONDS,
    STATUSES,
)


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
    heartbeat_ttl = StrictInteger(
        allow_none=True,
        validate=validate.Range(min=1, max=MAX_HEARTBEAT_SECONDS),
        metadata={
            "description": "Seconds between two heartbeats at most; null: the default "
            "(POLYMICRO_HEARTBEAT_TTL_SECONDS). Takes effect at the next heartbeat."
        },
    )
    heartbeat_grace = StrictInteger(
        allow_none=True,
        validate=validate.Range(min=0, max=MAX_HEARTBEAT_SECONDS),
        metadata={
            "description": "Seconds a heartbeat may be late before the service is critical; "
            "null: the default, never less than one TTL."
        },
    )
    heartbeat_failures = StrictInteger(
        allow_none=True,
        validate=validate.Range(min=1, max=MAX_HEARTBEAT_FAILURES),
        metadata={"description": "Consecutive failed heartbeats before critical; null: 1."},
    )
    heartbeat_from_ingest = StrictBoolean(
        metadata={"description": "Stored logs and CPU points count as heartbeats."},
    )
    liveness = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={
            "description": "What the heartbeats say: passing, warning, critical, offline or "
            "unknown; null until the first heartbeat. When set, `health` and `status` show "
            "it (see the README, Liveness).",
            "enum": [*LIVENESS_STATES, None],
        },
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
    liveness = CaseInsensitiveChoice(
        LIVENESS_STATES,
        metadata={"description": "Services whose heartbeats say this now (derived)."},
    )
    q = SearchText(
        metadata={"description": "Name contains this text (case-insensitive, literal)."},
    )
