"""The log entry resource in the API contract."""

from __future__ import annotations

import math
import numbers

from marshmallow import Schema, ValidationError, fields, pre_load, validate

from polymicro.common.fields import (
    CaseInsensitiveChoice,
    ObjectIdString,
    SearchText,
    Trimmed,
    UTCDateTime,
    ensure_encodable,
)
from polymicro.common.schemas import BaseSchema, TimeWindowSchema
from polymicro.logs.models import SEVERITIES, SEVERITY_ALIASES

MESSAGE_MAX = 16384
LABEL_MAX = 256
ATTRIBUTES_MAX = 32
ATTRIBUTE_KEY_MAX = 64
ATTRIBUTE_TEXT_MAX = 1024
BATCH_MAX = 1000
# MongoDB stores integers as 64-bit; anything wider cannot be stored.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ATTRIBUTE_VALUE_DOC = [
    {"type": "string", "maxLength": ATTRIBUTE_TEXT_MAX},
    {"type": "number", "minimum": INT64_MIN, "maximum": INT64_MAX},
    {"type": "boolean"},
]


class AttributeKey(fields.String):
    """A key MongoDB accepts: 1–64 chars, no leading ``$``, no ``.``, no NUL."""

    def _deserialize(self, value, attr, data, **kwargs):
        key = super()._deserialize(value, attr, data, **kwargs)
        ensure_encodable(key)
        if not 1 <= len(key) <= ATTRIBUTE_KEY_MAX:
            raise ValidationError(f"A key is 1-{ATTRIBUTE_KEY_MAX} characters.")
        if key.startswith("$") or "." in key or "\x00" in key:
            raise ValidationError("A key must not start with '$' or contain '.' or NUL.")
        return key


class AttributeValue(fields.Field):
    """A scalar: string (≤ 1024 chars), a finite number within 64 bits, bool or null.

    Every number, integer or not, must lie in [-2**63, 2**63 - 1]: JSON Schema cannot
    tell ``1e20`` from ``100000000000000000000`` (both are the integer 10**20), so
    neither is accepted; integers are stored as integers, the rest as doubles.
    """

    def __init__(self, **kwargs):
        super().__init__(allow_none=True, metadata={"anyOf": ATTRIBUTE_VALUE_DOC}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            ensure_encodable(value)
            if len(value) > ATTRIBUTE_TEXT_MAX:
                raise ValidationError(f"A text value is at most {ATTRIBUTE_TEXT_MAX} characters.")
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Real):
            if not math.isfinite(value):
                raise ValidationError("A number value must be finite.")
            if not INT64_MIN <= value <= INT64_MAX:
                raise ValidationError("A number value must lie within 64-bit integer range.")
            return int(value) if isinstance(value, numbers.Integral) else float(value)
        raise ValidationError("A value is a string, a number, a boolean or null.")


class Attributes(fields.Dict):
    """Up to 32 scalar attributes.  A key is 1-64 characters, not starting with ``$``,
    without ``.`` or NUL (rules an OpenAPI 3.0 document cannot express: there is no
    ``propertyNames``); the description says so."""

    def __init__(self, **kwargs):
        super().__init__(
            keys=AttributeKey(),
            values=AttributeValue(),
            metadata={
                "description": (
                    f"Up to {ATTRIBUTES_MAX} keys of 1-{ATTRIBUTE_KEY_MAX} characters, not "
                    "starting with `$`, without `.` or NUL; values are strings (at most "
                    f"{ATTRIBUTE_TEXT_MAX} characters), numbers within 64-bit integer range, "
                    "booleans or null."
                ),
                "maxProperties": ATTRIBUTES_MAX,
            },
            **kwargs,
        )

    def _deserialize(self, value, attr, data, **kwargs):
        # Counted first (a Length validator would run after every key and value was
        # checked, and would be documented as `maxLength`, a keyword for strings).
        if isinstance(value, dict) and len(value) > ATTRIBUTES_MAX:
            raise ValidationError(f"At most {ATTRIBUTES_MAX} attributes.")
        return super()._deserialize(value, attr, data, **kwargs)


def _severity(**kwargs) -> CaseInsensitiveChoice:
    return CaseInsensitiveChoice(SEVERITIES, aliases=SEVERITY_ALIASES, **kwargs)


def _label(**kwargs) -> Trimmed:
    return Trimmed(allow_none=True, validate=validate.Length(max=LABEL_MAX), **kwargs)


class LogEntrySchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    project_id = ObjectIdString(required=True)
    service_id = ObjectIdString(
        required=True, metadata={"description": "A service of the project `project_id`."}
    )
    severity = _severity(
        required=True,
        metadata={"description": "Case-insensitive; `warning`→`warn`, `fatal`→`critical`."},
    )
    message = Trimmed(required=True, validate=validate.Length(min=1, max=MESSAGE_MAX))
    timestamp = UTCDateTime(metadata={"description": "Default: the time the entry arrived."})
    source = _label()
    test_id = _label()
    func_id = _label()
    attributes = Attributes()


class LogEntryUpdateSchema(LogEntrySchema):
    """PUT and PATCH: any subset; ``project_id``/``service_id`` may be repeated, not changed."""

    project_id = ObjectIdString()
    service_id = ObjectIdString()
    severity = _severity()
    message = Trimmed(validate=validate.Length(min=1, max=MESSAGE_MAX))


class LogBatchSchema(LogEntrySchema):
    """``POST /api/logs/batch``: a JSON array of 1–1000 entries (use with ``many=True``)."""

    @classmethod
    def openapi_body(cls) -> dict:
        """The request body as documented: an array of 1 to 1000 entries."""
        return {
            "type": "array",
            "items": LogBatchSchema,
            "minItems": 1,
            "maxItems": BATCH_MAX,
        }

    @pre_load(pass_collection=True)
    def _bounded_array(self, data, many, **kwargs):
        if many and isinstance(data, list) and not 1 <= len(data) <= BATCH_MAX:
            raise ValidationError(f"Send an array of 1 to {BATCH_MAX} log entries.")
        return data


class LogBatchResultSchema(Schema):
    inserted = fields.Integer()
    ids = fields.List(ObjectIdString(), metadata={"description": "In the order of the input."})


class LogFilterSchema(TimeWindowSchema):
    """The filters every log list takes (the time window comes from TimeWindowSchema)."""

    severity = fields.List(
        _severity(),
        metadata={"description": "Repeatable: `?severity=error&severity=critical`."},
    )
    min_severity = _severity(metadata={"description": "This severity or a more severe one."})
    source = Trimmed(validate=validate.Length(max=LABEL_MAX))
    test_id = Trimmed(validate=validate.Length(max=LABEL_MAX))
    func_id = Trimmed(validate=validate.Length(max=LABEL_MAX))
    q = SearchText(
        max_length=1000,
        metadata={"description": "Message contains this text (case-insensitive, literal)."},
    )


class ProjectLogQueryArgsSchema(LogFilterSchema):
    service_id = ObjectIdString()


class LogQueryArgsSchema(ProjectLogQueryArgsSchema):
    project_id = ObjectIdString()
