"""The CPU metrics entry, its points and the series buckets in the API contract."""

from __future__ import annotations

import re
from datetime import timedelta

from marshmallow import Schema, ValidationError, fields, validate
from webargs.fields import DelimitedList

from polymicro.common.fields import (
    Name,
    ObjectIdString,
    StrictFloat,
    StrictInteger,
    UTCDateTime,
)
from polymicro.common.schemas import BaseSchema, TimeWindowSchema
from polymicro.common.timeutil import utcnow
from polymicro.metrics.models import (
    DEFAULT_POINTS,
    DEFAULT_STEP,
    MAX_LOAD,
    MAX_POINTS_PER_WRITE,
    MAX_STEP,
    MAX_THREADS,
    MIN_STEP,
)

STEP_RE = re.compile(r"([0-9]+)(s|m|h|d)")  # ASCII digits: \d would take "١٠s" for 10s
STEP_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Exactly the steps from 10s to 1d (leading zeros allowed), as the OpenAPI document shows
# them: a pattern of only the syntax let "0d" or "2d" through as schema-valid, then 422.
STEP_PATTERN = (
    r"^\s*0*(?:"
    r"(?:[1-9][0-9]|[1-9][0-9]{2,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s"
    r"|(?:[1-9]|[1-9][0-9]{1,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m"
    r"|(?:[1-9]|1[0-9]|2[0-4])h"
    r"|1d"
    r")\s*$"
)


class PointSchema(BaseSchema):
    """One measurement.  ``memory`` and ``threads`` are ``null`` when not measured."""

    time = UTCDateTime(
        load_default=utcnow, metadata={"description": "When it was measured; default: now."}
    )
    load = StrictFloat(
        required=True,
        validate=validate.Range(min=0, max=MAX_LOAD),
        metadata={"description": "CPU utilisation in percent; above 100 on several cores."},
    )
    memory = StrictFloat(
        allow_none=True,
        validate=validate.Range(min=0, max=100),
        metadata={"description": "Memory used, in percent."},
    )
    threads = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=MAX_THREADS))


def _points_list(**kwargs) -> fields.List:
    return fields.List(
        fields.Nested(PointSchema),
        validate=validate.Length(
            max=MAX_POINTS_PER_WRITE, error=f"At most {MAX_POINTS_PER_WRITE} points."
        ),
        **kwargs,
    )


class MetricSchema(BaseSchema):
    """An entry.  On create ``data`` holds optional initial points; on read, the points
    of the requested window, oldest first."""

    id = ObjectIdString(dump_only=True)
    project_id = ObjectIdString(required=True)
    service_id = ObjectIdString(dump_only=True)
    service_name = Name(
        required=True,
        metadata={"description": "Name of a service of the project (case-insensitive)."},
    )
    data = _points_list()
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)


class MetricUpdateSchema(BaseSchema):
    """PUT: ``data`` replaces every point of the entry (``[]`` removes them all); a body
    without ``data`` changes nothing.  No other field may be sent."""

    data = _points_list()


class PointsBodySchema(PointSchema):
    """``POST …/data``: one point object, or an array of 1–10000 points.

    Loads to a list of points either way.  A bad point in an array is reported under
    its index (``errors.json.<index>``); the length of the array under ``_schema``.
    """

    @classmethod
    def openapi_body(cls) -> dict:
        """The request body as documented: one point, or an array of 1 to 10000."""
        return {
            "oneOf": [
                PointSchema,
                {
                    "type": "array",
                    "items": PointSchema,
                    "minItems": 1,
                    "maxItems": MAX_POINTS_PER_WRITE,
                },
            ]
        }

    def load(self, data, *, many=None, partial=None, unknown=None):
        if isinstance(data, list):
            if not data:
                raise ValidationError({"_schema": ["Send at least one point."]})
            if len(data) > MAX_POINTS_PER_WRITE:
                message = (
                    f"Send at most {MAX_POINTS_PER_WRITE} points per request (got {len(data)})."
                )
                raise ValidationError({"_schema": [message]})
            return super().load(data, many=True, partial=partial, unknown=unknown)
        return [super().load(data, many=False, partial=partial, unknown=unknown)]


class InsertedSchema(Schema):
    inserted = fields.Integer(metadata={"description": "How many points were stored."})


class PointsWindowSchema(TimeWindowSchema):
    """Which points each entry returns in ``data``: the latest ``points`` inside
    ``[since, until]``, oldest first."""

    points = fields.Integer(
        load_default=DEFAULT_POINTS,
        validate=validate.Range(min=1, max=MAX_POINTS_PER_WRITE),
        metadata={"description": "How many of the latest points of the window to return."},
    )


class MetricQueryArgsSchema(PointsWindowSchema):
    project_id = ObjectIdString()


class Step(fields.String):
    """A bucket width such as ``30s``, ``5m``, ``1h``, ``1d``; loads to a ``timedelta``."""

    default_error_messages = {
        "invalid_step": "Use a number and a unit s, m, h or d, e.g. 5m.",
        "step_range": "The step must be between 10s and 1d.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        match = STEP_RE.fullmatch(super()._deserialize(value, attr, data, **kwargs).strip())
        if match is None:
            raise self.make_error("invalid_step")
        seconds = int(match.group(1)) * STEP_UNITS[match.group(2)]
        if not MIN_STEP.total_seconds() <= seconds <= MAX_STEP.total_seconds():
            raise self.make_error("step_range")
        return timedelta(seconds=seconds)


AGGREGATES = ("avg", "min", "max", "p50", "p90", "p95", "p99")
SOURCES = ("auto", "raw", "5m", "1h")


class SeriesQueryArgsSchema(TimeWindowSchema):
    step = Step(
        load_default=DEFAULT_STEP,
        metadata={
            "description": "Bucket width, 10s to 1d (default 5m).",
            "pattern": STEP_PATTERN,
        },
    )
    agg = DelimitedList(
        fields.String(validate=validate.OneOf(AGGREGATES)),
        validate=validate.Length(max=len(AGGREGATES) * 2),
        metadata={
            "description": "Statistics wanted, comma-separated, e.g. `avg,min,max,p95`. "
            "`avg`, `min` and `max` are always returned; `p50`, `p90`, `p95` and `p99` add "
            "those percentiles of `load` and `memory` (nearest rank; see the README for "
            "which databases compute them approximately)."
        },
    )
    source = fields.String(
        load_default="auto",
        validate=validate.OneOf(SOURCES),
        metadata={
            "description": "`auto` (default) picks raw points or the 5m/1h rollups by step "
            "and window; `raw` forces raw points; `5m`/`1h` force a rollup size (422 when "
            "it cannot serve the step). Every source gives the same buckets; the response "
            "header `X-Series-Source` says which one served."
        },
    )


def _percentile_fields(nullable: bool) -> dict:
    return {
        name: fields.Float(
            allow_none=nullable,
            metadata={"description": f"The {name[1:]}th percentile (only when asked in `agg`)."},
        )
        for name in ("p50", "p90", "p95", "p99")
    }


class LoadStatsSchema(Schema.from_dict(_percentile_fields(False))):
    avg = fields.Float()
    min = fields.Float()
    max = fields.Float()


class MemoryStatsSchema(Schema.from_dict(_percentile_fields(True))):
    avg = fields.Float(allow_none=True)
    max = fields.Float(allow_none=True)


class ThreadStatsSchema(Schema):
    max = fields.Integer(allow_none=True)


class BucketSchema(Schema):
    """The points of one ``step``-wide bucket (``time`` = its start); ``memory`` and
    ``threads`` are ``null`` when no point of the bucket measured them."""

    time = UTCDateTime()
    count = fields.Integer()
    load = fields.Nested(LoadStatsSchema)
    memory = fields.Nested(MemoryStatsSchema)
    threads = fields.Nested(ThreadStatsSchema)
