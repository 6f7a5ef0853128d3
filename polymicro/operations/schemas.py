from marshmallow import Schema, fields

from polymicro.common.fields import ObjectIdString, UTCDateTime

CHECK_VALUES = "`ok` or `unavailable`."


class LivenessSchema(Schema):
    status = fields.String(metadata={"description": "Always `ok`: the process answers."})
    version = fields.String(metadata={"description": "Version of the service."})


class HealthSchema(Schema):
    status = fields.String(
        metadata={"description": "`ok` when every check is; else `unavailable`."}
    )
    version = fields.String(metadata={"description": "Version of the service."})
    checks = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={
            "description": f"`database` and `cache`, each {CHECK_VALUES}",
            "example": {"database": "ok", "cache": "ok"},
        },
    )


class RetentionOverrideSchema(Schema):
    project_id = ObjectIdString(metadata={"description": "The project that shortens it."})
    days = fields.Integer(metadata={"description": "The project's `retention` value."})
    effective_days = fields.Integer(
        metadata={"description": "What applies: the shorter of the two."}
    )
    horizon = UTCDateTime(metadata={"description": "Rows older than this are not shown."})
    oldest = UTCDateTime(
        allow_none=True, metadata={"description": "The oldest stored row of the project."}
    )
    behind = fields.Boolean(
        metadata={"description": "Rows older than the horizon plus the margin are stored."}
    )


class RetentionKindSchema(Schema):
    kind = fields.String(metadata={"description": "`logs`, `points`, `events`, …"})
    setting = fields.String(metadata={"description": "The setting that says how long."})
    days = fields.Integer(metadata={"description": "The setting's value; 0 keeps forever."})
    index_days = fields.Float(
        allow_none=True,
        metadata={"description": "What the database's TTL index says (days); null: no TTL index."},
    )
    index_name = fields.String(metadata={"description": "The TTL index's name."})
    horizon = UTCDateTime(
        allow_none=True,
        metadata={"description": "Rows older than this are not shown; null: kept forever."},
    )
    oldest = UTCDateTime(
        allow_none=True,
        metadata={
            "description": "The oldest stored row; null: none, or no index on the time "
            "field to find it cheaply (a kind kept forever has no TTL index)."
        },
    )
    behind = fields.Boolean(
        metadata={
            "description": "Rows older than the horizon plus "
            "POLYMICRO_RETENTION_BEHIND_MARGIN_MINUTES are still stored (here or in an "
            "override): the deletion is not keeping up."
        }
    )
    overrides = fields.List(fields.Nested(RetentionOverrideSchema))


class RetentionSchema(Schema):
    kinds = fields.List(fields.Nested(RetentionKindSchema))
    margin_minutes = fields.Integer(
        metadata={"description": "POLYMICRO_RETENTION_BEHIND_MARGIN_MINUTES."}
    )
