"""The project resource in the API contract."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from polymicro.common.fields import (
    Name,
    ObjectIdString,
    SearchText,
    Tag,
    Tags,
    Trimmed,
    UTCDateTime,
)
from polymicro.common.schemas import BaseQuerySchema, BaseSchema


class MicroserviceSchema(Schema):
    """A service as the dashboard's project tree reads it (camelCase, read-only)."""

    id = ObjectIdString()
    name = fields.String()
    type = fields.Constant("microservice")
    project_id = ObjectIdString(data_key="projectId")
    status = fields.String()
    health = fields.String()
    version = fields.String(allow_none=True)
    last_deployment = UTCDateTime(data_key="lastDeployed", allow_none=True)
    port = fields.Integer(allow_none=True)
    url = fields.String(allow_none=True)
    uptime = fields.String(allow_none=True)
    children = fields.Constant([])


class ProjectRetentionSchema(BaseSchema):
    """Per-project retention: days, shorter than (or equal to) the global setting; null
    or left out: the global setting applies."""

    logs_days = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1, max=36500),
        metadata={"description": "Days log entries are kept (≤ POLYMICRO_RETENTION_LOGS_DAYS)."},
    )
    points_days = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1, max=36500),
        metadata={
            "description": "Days raw CPU points are kept (≤ POLYMICRO_RETENTION_POINTS_DAYS)."
        },
    )


class ProjectSchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    name = Name(required=True)
    description = Trimmed(validate=validate.Length(max=2000))
    owner = Trimmed(allow_none=True, validate=validate.Length(max=100))
    tags = Tags()
    path = Trimmed(
        allow_none=True,
        validate=validate.Length(max=1024),
        metadata={"description": "Kept for the dashboard; never used to touch the host."},
    )
    tests_dir_path = Trimmed(validate=validate.Length(max=1024))
    # Not nullable: apispec documents a nullable Nested as "any object or null", which
    # would promise that unknown keys are accepted.  {} (or null values) clears it.
    retention = fields.Nested(
        ProjectRetentionSchema,
        metadata={
            "description": "Shorter retention for this project's logs and points (editors "
            "set it); {} clears it, a key left out or null follows the global setting."
        },
    )
    microservices = fields.List(fields.Nested(MicroserviceSchema), dump_only=True)
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)


class ProjectUpdateSchema(ProjectSchema):
    """PUT and PATCH: any subset of the writable fields; the others keep their value."""

    name = Name()


class ProjectQueryArgsSchema(BaseQuerySchema):
    q = SearchText(
        metadata={"description": "Name contains this text (case-insensitive, literal)."},
    )
    owner = Trimmed(validate=validate.Length(max=100))
    tag = Tag(validate=validate.Length(max=50))
    sort = fields.String(
        load_default="name",
        validate=validate.OneOf(["name", "-name", "created_at", "-created_at", "usage"]),
        metadata={
            "description": "`usage`: largest estimated storage first (see "
            "`/api/projects/{id}/usage`; the order may lag writes by the cache's lifetime)."
        },
    )


class UsageSchema(Schema):
    """What a project stores, computed on each request."""

    project_id = ObjectIdString()
    logs = fields.Integer(metadata={"description": "Log entries stored."})
    points = fields.Integer(metadata={"description": "CPU points stored (raw)."})
    rollups = fields.Integer(metadata={"description": "CPU rollup buckets stored (5m and 1h)."})
    oldest = UTCDateTime(
        allow_none=True, metadata={"description": "Oldest log or point time; null if none."}
    )
    newest = UTCDateTime(
        allow_none=True, metadata={"description": "Newest log or point time; null if none."}
    )
    storage_bytes = fields.Integer(
        data_key="storage_bytes",
        attribute="bytes",
        metadata={
            "description": "Estimated stored size: each kind's count × its collection's "
            "average document size (collStats), indexes not included."
        },
    )
