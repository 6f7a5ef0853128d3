"""Alert rules and alert instances in the API contract."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates

from polymicro.alerts.models import (
    AGGREGATES,
    KINDS,
    LIVENESS_STATES,
    MAX_FOR,
    MAX_WINDOW,
    METRIC_FIELDS,
    OPERATORS,
    STATES,
)
from polymicro.alerts.rules import TEMPLATE_VARIABLES, unknown_placeholders
from polymicro.common.fields import (
    CaseInsensitiveChoice,
    Name,
    ObjectIdString,
    StrictFloat,
    StrictInteger,
    Trimmed,
    UTCDateTime,
)
from polymicro.common.schemas import BaseQuerySchema, BaseSchema, TimeWindowSchema
from polymicro.logs.models import SEVERITIES, SEVERITY_ALIASES

LABEL_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
MAX_LABELS = 30


class StrictBoolean(fields.Boolean):
    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


LABEL_NAME_RULE = "A name is a letter or _ then letters, digits or _ (at most 100)."


def _at_most_entries(value: dict) -> None:
    if len(value) > MAX_LABELS:
        raise ValidationError(f"At most {MAX_LABELS} entries.")


def _text_map(max_value: int, description: str) -> fields.Dict:
    return fields.Dict(
        keys=fields.String(validate=validate.Regexp(LABEL_NAME, error=LABEL_NAME_RULE)),
        values=fields.String(validate=validate.Length(max=max_value)),
        validate=_at_most_entries,
        metadata={
            "description": f"{description} Names: {LABEL_NAME_RULE}",
            "maxProperties": MAX_LABELS,
        },
    )


class AlertRuleSchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    project_id = ObjectIdString(required=True)
    service_id = ObjectIdString(
        allow_none=True,
        metadata={"description": "Watch this service only; null: every service of the project."},
    )
    name = Name(required=True)
    kind = fields.String(
        required=True,
        validate=validate.OneOf(KINDS),
        metadata={
            "description": "metric_threshold (aggregate of field over window vs threshold), "
            "log_count (entries with min_severity and/or text in window vs threshold), "
            "liveness (the service's liveness is one of states)."
        },
    )
    aggregate = fields.String(allow_none=True, validate=validate.OneOf(AGGREGATES))
    field = fields.String(allow_none=True, validate=validate.OneOf(METRIC_FIELDS))
    min_severity = CaseInsensitiveChoice(SEVERITIES, aliases=SEVERITY_ALIASES, allow_none=True)
    text = Trimmed(
        allow_none=True,
        validate=validate.Length(min=1, max=500),
        metadata={
            "description": "Count only entries whose message contains this text "
            "(literally, case-insensitively)."
        },
    )
    states = fields.List(
        fields.String(validate=validate.OneOf(LIVENESS_STATES)),
        allow_none=True,
        validate=validate.Length(min=1, max=len(LIVENESS_STATES)),
        metadata={
            "description": "Liveness states that fire (default: critical and offline).",
            "uniqueItems": True,
        },
    )
    window = StrictInteger(
        allow_none=True,
        validate=validate.Range(min=1, max=MAX_WINDOW),
        metadata={"description": "Seconds of history the condition looks at."},
    )
    operator = fields.String(allow_none=True, validate=validate.OneOf(OPERATORS))
    threshold = StrictFloat(allow_none=True, allow_nan=False)
    for_seconds = StrictInteger(
        data_key="for",
        validate=validate.Range(min=0, max=MAX_FOR),
        metadata={"description": "Seconds the condition holds (pending) before firing."},
    )
    keep_firing_for = StrictInteger(
        validate=validate.Range(min=0, max=MAX_FOR),
        metadata={
            "description": "Seconds a firing alert stays firing after the condition stops holding."
        },
    )
    labels = _text_map(1000, "Labels of the alert (alertname, service and project_id are set).")
    annotations = _text_map(
        4000,
        "Templates such as summary and description; placeholders: "
        + ", ".join("{" + name + "}" for name in TEMPLATE_VARIABLES),
    )
    enabled = StrictBoolean()
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)

    @validates("annotations")
    def _templates(self, value, **kwargs):
        for key, template in (value or {}).items():
            unknown = unknown_placeholders(template)
            if unknown:
                raise ValidationError(
                    f"Unknown placeholders in {key}: {', '.join(unknown)} "
                    f"(known: {', '.join(TEMPLATE_VARIABLES)})."
                )

    @validates("states")
    def _unique(self, value, **kwargs):
        if value and len(set(value)) != len(value):
            raise ValidationError("Each state once.")


class AlertRuleUpdateSchema(AlertRuleSchema):
    """A partial rule (PATCH): the fields given replace the stored ones."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("partial", True)
        super().__init__(*args, **kwargs)


class AlertRuleQueryArgsSchema(BaseQuerySchema):
    project_id = ObjectIdString()
    service_id = ObjectIdString()
    kind = fields.String(validate=validate.OneOf(KINDS))
    enabled = fields.Boolean()


class AlertSchema(BaseSchema):
    id = ObjectIdString()
    rule_id = ObjectIdString()
    rule_name = fields.String(allow_none=True)
    project_id = ObjectIdString()
    service_id = ObjectIdString()
    service_name = fields.String(allow_none=True)
    state = fields.String(validate=validate.OneOf(STATES))
    value = fields.Float(allow_none=True)
    labels = fields.Dict(keys=fields.String(), values=fields.String())
    annotations = fields.Dict(keys=fields.String(), values=fields.String())
    active_at = UTCDateTime(allow_none=True)
    fired_at = UTCDateTime(allow_none=True)
    resolved_at = UTCDateTime(allow_none=True)
    fingerprint = fields.String(allow_none=True)
    version = fields.Integer()
    changed_at = UTCDateTime(allow_none=True)
    evaluated_at = UTCDateTime(allow_none=True)
    silenced_until = UTCDateTime(allow_none=True)
    silenced = fields.Boolean()


class AlertQueryArgsSchema(BaseQuerySchema):
    state = fields.String(validate=validate.OneOf(STATES))
    project_id = ObjectIdString()
    rule_id = ObjectIdString()
    service_id = ObjectIdString()


class SilenceSchema(BaseSchema):
    until = UTCDateTime(
        required=True,
        allow_none=True,
        metadata={"description": "Silenced until this time (future); null lifts the silence."},
    )


class BacktestArgsSchema(TimeWindowSchema):
    """``since`` (default: one hour before ``until``) and ``until`` (default: now)."""


class BacktestTransitionSchema(BaseSchema):
    at = UTCDateTime()
    service_id = ObjectIdString()
    service_name = fields.String(allow_none=True)
    before = fields.String(validate=validate.OneOf(STATES))
    after = fields.String(validate=validate.OneOf(STATES))
    value = fields.Float(allow_none=True)


class BacktestSchema(BaseSchema):
    rule_id = ObjectIdString()
    since = UTCDateTime()
    until = UTCDateTime()
    step_seconds = fields.Integer()
    steps = fields.Integer()
    transitions = fields.List(fields.Nested(BacktestTransitionSchema))
