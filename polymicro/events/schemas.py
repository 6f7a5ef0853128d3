"""The event feed in the API contract."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from polymicro.common.fields import ObjectIdString, Trimmed, UTCDateTime
from polymicro.common.schemas import BaseQuerySchema, BaseSchema
from polymicro.common.sse import STREAMS, StreamArgsSchema
from polymicro.events.models import DEFAULT_LIMIT, MAX_LIMIT

SEQ_MAX = 2**53  # beyond any counter; keeps the integer inside what BSON and JSON hold
TYPE_PATTERN = r"^[a-z_]{1,30}\.[a-z_]{1,30}$"
MAX_TYPES = 10


class SubjectSchema(Schema):
    kind = fields.String(metadata={"description": "`project`, `service`, `api_key`, `user`."})
    id = fields.String()
    name = fields.String(allow_none=True)


class ActorSchema(Schema):
    kind = fields.String(
        metadata={"description": "`user`, `api_key`, `system` (no request) or `anonymous`."}
    )
    id = fields.String(metadata={"description": "The user's or the API key's id."})
    name = fields.String(metadata={"description": "The user's name."})
    prefix = fields.String(metadata={"description": "The API key's public prefix."})


class EventSchema(Schema):
    seq = fields.Integer(metadata={"description": "Position in the log: 1, 2, 3, … no gaps."})
    time = UTCDateTime()
    type = fields.String(metadata={"description": "`<kind>.<verb>`, e.g. `service.updated`."})
    project_id = ObjectIdString(allow_none=True)
    subject = fields.Nested(SubjectSchema)
    actor = fields.Nested(ActorSchema)
    request_id = fields.String(allow_none=True)
    changes = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(),
        allow_none=True,
        metadata={"description": "Updates only: `{field: {before, after}}` of what changed."},
    )


class EventPageSchema(Schema):
    events = fields.List(fields.Nested(EventSchema))
    next_after = fields.Integer(
        metadata={"description": "Pass as `after` to get what comes next (also `X-Next-After`)."}
    )
    next_before = fields.Integer(
        allow_none=True,
        metadata={"description": "Pass as `before` for the next older page; null at the end."},
    )


class EventFilterSchema(BaseQuerySchema):
    project_id = ObjectIdString()
    type = fields.List(
        fields.String(validate=validate.Regexp(TYPE_PATTERN)),
        validate=validate.Length(max=MAX_TYPES),
        metadata={
            "description": "Repeatable, up to 10: `?type=service.created&type=service.deleted`."
        },
    )
    actor = Trimmed(
        validate=validate.Length(min=1, max=100),
        metadata={"description": "A user id or name, an API key prefix, or `system`."},
    )


class EventQueryArgsSchema(EventFilterSchema):
    after = fields.Integer(
        validate=validate.Range(min=0, max=SEQ_MAX),
        metadata={"description": "Oldest first, events with a greater `seq` (a cursor)."},
    )
    before = fields.Integer(
        validate=validate.Range(min=1, max=SEQ_MAX),
        metadata={"description": "Newest first, events with a smaller `seq`."},
    )
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(1, MAX_LIMIT))


class EventStreamArgsSchema(EventFilterSchema, StreamArgsSchema):
    after = fields.Integer(
        validate=validate.Range(min=0, max=SEQ_MAX),
        metadata={
            "description": "Start after this `seq` (a `Last-Event-ID` header wins); "
            "default: only events from now on."
        },
    )


class StreamTokenRequestSchema(BaseSchema):
    stream = fields.String(required=True, validate=validate.OneOf(STREAMS))
    project_id = ObjectIdString(
        metadata={"description": "Limit the token to this project (the stream must ask for it)."}
    )


class StreamTokenSchema(Schema):
    token = fields.String(metadata={"description": "Pass as `?token=` to the stream."})
    expires_in = fields.Integer(metadata={"description": "Seconds it stays valid."})
    stream = fields.String()
    project_id = ObjectIdString(allow_none=True)
