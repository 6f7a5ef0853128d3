from marshmallow import Schema, fields


class HealthSchema(Schema):
    status = fields.String(metadata={"description": "`ok` or `unavailable`."})
    version = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.String())
