"""Alert receivers and their deliveries in the API contract (the delivery half of the
alerts domain: ``delivery.py``, ``delivery_models.py``, ``delivery_resources.py`` and
this file; the evaluation half is ``models.py``, ``schemas.py``, ``resources.py``,
``service.py``, ``rules.py``; ``outbox.py`` joins them)."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate, validates

from polymicro.alerts.delivery_models import DELIVERY_STATUSES, MAX_MATCHERS, NAME_LENGTH
from polymicro.common.fields import HttpUrl, Name, ObjectIdString, Trimmed, UTCDateTime
from polymicro.common.schemas import BaseQuerySchema, BaseSchema
from polymicro.services.schemas import StrictBoolean

LABEL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ReceiverSchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    name = Name(
        NAME_LENGTH,
        required=True,
        metadata={"description": "Unique (case-insensitive); the payload's `receiver`."},
    )
    url = HttpUrl(
        required=True,
        validate=validate.Length(max=2048),
        metadata={
            "description": "Where the webhooks are POSTed (http or https). A host that "
            "resolves to a loopback, link-local, private, multicast, reserved or "
            "unspecified address is refused (422) unless POLYMICRO_WEBHOOK_ALLOW_PRIVATE "
            "is set; redirects are not followed."
        },
    )
    secret = Trimmed(
        load_only=True,
        allow_none=True,
        validate=validate.Length(max=200),
        metadata={
            "description": "The Standard Webhooks signing secret, `whsec_` + base64 of 24 to "
            "64 bytes. Leave it out to have one generated: it is shown once, in the answer "
            "to the creation, and never again."
        },
    )
    project_ids = fields.List(
        ObjectIdString(),
        validate=validate.Length(max=100),
        metadata={"description": "The projects whose alerts it gets; empty: every project."},
    )
    matchers = fields.Dict(
        keys=fields.String(validate=[validate.Length(max=100), validate.Regexp(LABEL_NAME)]),
        values=fields.String(validate=validate.Length(max=500)),
        metadata={
            "description": "Label equality matchers: it gets an alert only when each of "
            "these labels has this value (labels include `alertname`, `project`, "
            "`service` and the rule's labels). Empty: every alert."
        },
    )
    enabled = StrictBoolean(
        metadata={
            "description": "false: nothing is sent. A `410 Gone` answer sets it false "
            "(see `disabled_reason`); setting it true clears the reason."
        }
    )
    disabled_reason = fields.String(
        dump_only=True,
        allow_none=True,
        metadata={"description": "Why it was disabled by polymicro (e.g. 410 Gone)."},
    )
    disabled_at = UTCDateTime(dump_only=True, allow_none=True)
    created_at = UTCDateTime(dump_only=True)
    updated_at = UTCDateTime(dump_only=True)

    @validates("matchers")
    def _few_matchers(self, value, **kwargs):
        if len(value) > MAX_MATCHERS:
            raise ValidationError(f"At most {MAX_MATCHERS} matchers.")


class ReceiverCreatedSchema(ReceiverSchema):
    """The answer to the creation: the only one that shows the secret."""

    secret = fields.String(
        dump_only=True,
        metadata={"description": "The signing secret, shown this once: keep it."},
    )


class ReceiverUpdateSchema(ReceiverSchema):
    """PATCH/PUT: any subset.  A new ``secret`` replaces the old one (never shown)."""

    name = Name(NAME_LENGTH)
    url = HttpUrl(validate=validate.Length(max=2048))


class AttemptSchema(BaseSchema):
    at = UTCDateTime()
    status_code = fields.Integer(allow_none=True, metadata={"description": "null: no answer."})
    error = fields.String(allow_none=True, metadata={"description": "null: delivered."})
    duration_ms = fields.Float(allow_none=True)
    response_bytes = fields.Integer(
        allow_none=True, metadata={"description": "Bytes of the answer read."}
    )
    response_truncated = fields.Boolean(
        allow_none=True,
        metadata={"description": "The answer was longer than what is read (the rest dropped)."},
    )


class DeliverySchema(BaseSchema):
    id = ObjectIdString()
    key = fields.String(metadata={"description": "The transition: `<alert id>:<version>`."})
    receiver_id = ObjectIdString()
    project_id = ObjectIdString()
    alert_id = fields.String(allow_none=True)
    alertname = fields.String(allow_none=True)
    alert_status = fields.String(metadata={"enum": ["firing", "resolved"]})
    status = fields.String(
        metadata={
            "enum": list(DELIVERY_STATUSES),
            "description": "pending (due at `next_attempt_at`), delivered, failed (retries "
            "exhausted, or 410 Gone) or cancelled (the receiver was disabled).",
        }
    )
    created_at = UTCDateTime()
    retry_from = UTCDateTime(metadata={"description": "Retries stop some hours after this."})
    next_attempt_at = UTCDateTime()
    attempt_count = fields.Integer()
    attempts = fields.List(
        fields.Nested(AttemptSchema), metadata={"description": "Oldest first (the last 50)."}
    )
    last_error = fields.String(allow_none=True)
    done_at = UTCDateTime(allow_none=True)
    payload = fields.Dict(metadata={"description": "The body sent (Alertmanager version 4)."})


class DeliveryQueryArgsSchema(BaseQuerySchema):
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
