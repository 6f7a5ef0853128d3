"""The auth resources in the API contract."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from polymicro.auth.models import ROLES
from polymicro.common.fields import CaseInsensitiveChoice, ObjectIdString, Trimmed, UTCDateTime
from polymicro.common.schemas import BaseSchema

USERNAME = validate.Regexp(
    r"^[A-Za-z0-9._-]{3,50}$", error="3-50 characters of letters, digits, '.', '_' or '-'."
)
PASSWORD = validate.Length(min=8, max=128, error="A password has 8 to 128 characters.")
FULL_NAME = validate.Length(max=100)


class UserSchema(BaseSchema):
    """A user as the API shows it.  With authentication disabled, ``/api/auth/me`` shows
    the anonymous admin every request acts as: ``anonymous`` is true, and ``id``,
    ``email`` and the times are null."""

    id = ObjectIdString(dump_only=True, allow_none=True)
    username = fields.String(required=True, dump_only=True)
    email = fields.Email(dump_only=True, allow_none=True)
    full_name = fields.String(
        dump_only=True, allow_none=True, metadata={"description": "Display name."}
    )
    role = CaseInsensitiveChoice(ROLES, dump_only=True)
    is_active = fields.Boolean(dump_only=True)
    anonymous = fields.Boolean(
        dump_only=True,
        metadata={"description": "True only for the anonymous admin (authentication off)."},
    )
    created_at = UTCDateTime(dump_only=True, allow_none=True)
    updated_at = UTCDateTime(dump_only=True, allow_none=True)


class RegisterSchema(BaseSchema):
    username = Trimmed(required=True, validate=USERNAME)
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, load_only=True, validate=PASSWORD)
    full_name = Trimmed(
        allow_none=True,
        validate=FULL_NAME,
        metadata={"description": "Display name (optional; the dashboard's form sends it)."},
    )
    role = CaseInsensitiveChoice(
        ROLES, metadata={"description": "Only an admin may choose; default viewer."}
    )


class LoginSchema(BaseSchema):
    """JSON or form fields (the dashboard sends a form, as OAuth2's password flow)."""

    username = Trimmed(required=True, validate=validate.Length(min=1, max=254))
    password = fields.String(required=True, load_only=True, validate=validate.Length(max=128))
    # OAuth2 password-flow forms also carry these; accepted and ignored.
    grant_type = fields.String(load_only=True)
    scope = fields.String(load_only=True)
    client_id = fields.String(load_only=True)
    client_secret = fields.String(load_only=True)


class TokenSchema(Schema):
    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String(metadata={"description": "Always `bearer`."})
    expires_in = fields.Integer(metadata={"description": "Seconds the access token lives."})
    user = fields.Nested(UserSchema)
    warning = fields.String(
        metadata={"description": "Only when authentication is disabled: says so."}
    )


class MeUpdateSchema(BaseSchema):
    email = fields.Email(validate=validate.Length(max=254))
    full_name = Trimmed(allow_none=True, validate=FULL_NAME)
    password = fields.String(load_only=True, validate=PASSWORD)
    current_password = fields.String(
        load_only=True, metadata={"description": "Required to change the password."}
    )


class UserAdminUpdateSchema(BaseSchema):
    role = CaseInsensitiveChoice(ROLES)
    is_active = fields.Boolean()


class ApiKeySchema(BaseSchema):
    id = ObjectIdString(dump_only=True)
    project_id = ObjectIdString(dump_only=True)
    name = Trimmed(required=True, validate=validate.Length(min=1, max=100))
    prefix = fields.String(dump_only=True, metadata={"description": "Public part of the key."})
    created_by = fields.String(dump_only=True)
    created_at = UTCDateTime(dump_only=True)
    revoked_at = UTCDateTime(dump_only=True, allow_none=True)  # null until revoked


class ApiKeyCreatedSchema(ApiKeySchema):
    key = fields.String(
        dump_only=True,
        metadata={"description": "The secret, shown this once; send it as X-API-Key."},
    )
