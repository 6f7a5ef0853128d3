from marshmallow import Schema, fields

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
