"""Alert receivers and their deliveries in the API contract (the delivery half of the
alerts domain: ``delivery.py``, ``delivery_models.py``, ``delivery_resources.py`` and
this file; the evaluation half is ``models.py``, ``schemas.py``, ``resources.py``,
``service.py``, ``rules.py``; ``outbox.py`` joins them)."""

from __future__ import annotations

import re

from marshmallow import ValidationError, fields, validate, validates

from polymicro.alerts.delivery_models import DELIVERY_STATUSES, MAX_MATCHERS, NAME_LENGTH
from polymicro.common.fields import WS, Name, ObjectIdString, Trimmed, UTCDateTime, ensure_encodable
from polymicro.common.schemas import BaseQuerySchema, BaseSchema
from polymicro.logs.schemas import AttributeKey
from polymicro.services.schemas import StrictBoolean

URL_LENGTH = 2048
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?"
# http(s)://host[:port][/path][?query]: a DNS name or an IPv4 address (no user info, no
# IPv6 literal: give such a receiver a name), printable ASCII after it.
_RECEIVER_URL = rf"[Hh][Tt][Tt][Pp][Ss]?://{_HOST}(?::{_PORT})?(?:[/?#][!-~]*)?"
RECEIVER_URL_RE = re.compile(_RECEIVER_URL)
_B64 = "[A-Za-z0-9+/]"
# whsec_ + the standard base64 of 24 to 64 bytes (Standard Webhooks' range).
SECRET_PATTERN = (
    rf"^whsec_(?:(?:{_B64}{{4}}){{8,20}}(?:{_B64}{{2}}==|{_B64}{{3}}=)?"
    rf"|(?:{_B64}{{4}}){{21}}(?:{_B64}{{2}}==)?)$"
)
SECRET_RE = re.compile(SECRET_PATTERN)


class ReceiverUrl(Trimmed):
    """A receiver's URL: exactly what the pattern in the OpenAPI document allows."""

    default_error_messages = {
        "invalid_url": "Not a valid receiver URL: http(s)://host[:port][/path], a DNS name "
        "or an IPv4 address, printable ASCII."
    }

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {})["pattern"] = rf"^[{WS}]*{_RECEIVER_URL}[{WS}]*$"
        super().__init__(validate=validate.Length(max=URL_LENGTH), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not RECEIVER_URL_RE.fullmatch(text):
            raise self.make_error("invalid_url")
        return text


class Secret(fields.String):
    default_error_messages = {
        "invalid_secret": "Must be whsec_ followed by the standard base64 of 24 to 64 bytes."
    }

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {})["pattern"] = SECRET_PATTERN
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not SECRET_RE.fullmatch(text):
            raise self.make_error("invalid_secret")
        return text


def _encodable(text: str) -> None:
    ensure_encodable(text)


class ReceiverSchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    name = Name(
        NAME_LENGTH,
        required=True,
        metadata={"description": "Unique (case-insensitive); the payload's `receiver`."},
    )
    url = ReceiverUrl(
        required=True,
        metadata={
            "description": "Where the webhooks are POSTed (http or https). A host that "
            "resolves to a loopback, link-local, private, multicast, reserved or "
            "unspecified address is refused (422) unless POLYMICRO_WEBHOOK_ALLOW_PRIVATE "
            "is set; redirects are not followed."
        },
    )
    secret = Secret(
        load_only=True,
        allow_none=True,
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
        keys=AttributeKey(),
        values=fields.String(validate=[validate.Length(max=500), _encodable]),
        metadata={
            "maxProperties": MAX_MATCHERS,
            "description": "Label equality matchers: it gets an alert only when each of "
            "these labels has this value (labels include `alertname`, `project`, "
            "`service` and the rule's labels). Empty: every alert.",
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
    url = ReceiverUrl()


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
