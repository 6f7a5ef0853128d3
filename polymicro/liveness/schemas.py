"""Heartbeats and liveness in the API contract."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from polymicro.common.fields import CaseInsensitiveChoice, ObjectIdString, Trimmed, UTCDateTime
from polymicro.common.schemas import BaseQuerySchema, BaseSchema
from polymicro.liveness.models import NOTE_LENGTH, REPORTED, STATES

RUN_ID_LENGTH = 100
MAX_TRANSITIONS = 100


class RunSignalSchema(BaseSchema):
    """The body of ``/heartbeat/start`` and ``/heartbeat/fail`` (optional)."""

    run_id = Trimmed(
        allow_none=True,
        validate=validate.Length(min=1, max=RUN_ID_LENGTH),
        metadata={
            "description": "Pairs a start with its finish (a heartbeat or a fail) when runs "
            "overlap; none: the run `default`."
        },
    )
    note = Trimmed(
        allow_none=True,
        validate=validate.Length(max=NOTE_LENGTH),
        metadata={"description": "Shown with the liveness and in a transition's reason."},
    )


class HeartbeatSchema(RunSignalSchema):
    """The body of ``/heartbeat`` (optional)."""

    status = CaseInsensitiveChoice(
        REPORTED,
        load_default="passing",
        metadata={"description": "What the service says of itself (default passing)."},
    )


STATE = {"enum": [*STATES, None]}


class LivenessSummarySchema(Schema):
    state = fields.String(
        allow_none=True,
        metadata={
            **STATE,
            "description": "passing, warning, critical, offline or unknown; null until the "
            "first heartbeat.",
        },
    )
    since = UTCDateTime(allow_none=True, metadata={"description": "When the state began."})
    reason = fields.String(allow_none=True)
    last_seen = UTCDateTime(
        allow_none=True, metadata={"description": "The last heartbeat (server time)."}
    )
    deadline = UTCDateTime(
        allow_none=True,
        metadata={
            "description": "When missing starts: the last heartbeat + TTL + grace, or an open "
            "run's start + grace."
        },
    )
    next_change = UTCDateTime(
        allow_none=True,
        metadata={"description": "When the state changes unless a heartbeat comes first."},
    )


class RunSchema(Schema):
    id = fields.String()
    started = UTCDateTime()
    deadline = UTCDateTime()


class TransitionSchema(Schema):
    at = UTCDateTime()
    before = fields.String(allow_none=True, metadata=STATE)
    after = fields.String(metadata={"enum": list(STATES)})
    reason = fields.String(allow_none=True)
    until = UTCDateTime(allow_none=True, metadata={"description": "null: still the state."})
    duration_seconds = fields.Float()


class UptimeSchema(Schema):
    day = fields.Float(data_key="24h", attribute="24h", allow_none=True)
    week = fields.Float(data_key="7d", attribute="7d", allow_none=True)
    month = fields.Float(data_key="30d", attribute="30d", allow_none=True)


class ServiceLivenessSchema(LivenessSummarySchema):
    service_id = ObjectIdString()
    project_id = ObjectIdString()
    reported = fields.String(
        allow_none=True, metadata={"description": "What the last heartbeats reported."}
    )
    note = fields.String(allow_none=True)
    failures = fields.Integer(metadata={"description": "Failed heartbeats in a row."})
    heartbeat_ttl = fields.Integer(metadata={"description": "In effect (seconds)."})
    heartbeat_grace = fields.Integer(metadata={"description": "In effect (seconds)."})
    heartbeat_failures = fields.Integer(metadata={"description": "In effect."})
    runs = fields.List(fields.Nested(RunSchema), metadata={"description": "Open job runs."})
    transitions = fields.List(
        fields.Nested(TransitionSchema), metadata={"description": "Newest first."}
    )
    uptime = fields.Nested(
        UptimeSchema,
        metadata={
            "description": "Percent of the time up (passing or warning) out of the time up "
            "or down (critical or offline), from the transitions; unknown time counts for "
            "neither. null: nothing known in that window."
        },
    )


class LivenessQueryArgsSchema(BaseQuerySchema):
    transitions = fields.Integer(
        load_default=20,
        validate=validate.Range(min=0, max=MAX_TRANSITIONS),
        metadata={"description": "How many of the last transitions to show."},
    )
