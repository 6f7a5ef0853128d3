"""marshmallow fields for the contract's conventions (trimmed strings, ids, time, enums)."""

from __future__ import annotations

import numbers
import re
from datetime import datetime

from bson import ObjectId
from marshmallow import ValidationError, fields, validate

from polymicro.common.timeutil import format_time, parse_time

OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")
TAG_RE = r"^[a-z0-9._-]{1,50}$"


def ensure_encodable(text: str) -> str:
    """JSON can carry lone surrogates (``"\\ud800"``) that no UTF-8 database can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("Not valid Unicode text (lone surrogate).") from exc
    return text


class Trimmed(fields.String):
    """A storable string with surrounding white space removed before validation."""

    def _deserialize(self, value, attr, data, **kwargs):
        return ensure_encodable(super()._deserialize(value, attr, data, **kwargs).strip())


class SearchText(Trimmed):
    """A ``q`` filter: matched literally (escaped), so only NUL, which no pattern can
    carry, is refused; at most ``max_length`` characters."""

    def __init__(self, max_length: int = 100, **kwargs):
        kwargs.setdefault(
            "validate",
            [
                validate.Length(max=max_length),
                validate.Regexp(r"^[^\x00]*$", error="Must not contain NUL."),
            ],
        )
        super().__init__(**kwargs)


class ObjectIdString(fields.String):
    """A 24-hex ObjectId, exchanged as a string and loaded as :class:`bson.ObjectId`."""

    default_error_messages = {"invalid_object_id": "Not a valid id (24 hexadecimal characters)."}

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {}).setdefault("pattern", OBJECT_ID_RE.pattern)
        super().__init__(**kwargs)

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else str(value)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if not OBJECT_ID_RE.match(text):
            raise self.make_error("invalid_object_id")
        return ObjectId(text)


class UTCDateTime(fields.DateTime):
    """RFC 3339 UTC with ``Z`` and milliseconds out; RFC 3339 / naive ISO in (see timeutil)."""

    default_error_messages = {
        "invalid": "Not a valid time: use RFC 3339, e.g. 2026-11-26T18:10:47.123Z.",
    }

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else format_time(value)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, datetime):  # already parsed (internal callers)
            return value
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            return parse_time(value)
        except (ValueError, OverflowError) as exc:
            raise self.make_error("invalid") from exc


class CaseInsensitiveChoice(fields.String):
    """A string from a fixed set, matched case-insensitively and stored in canonical form.

    ``aliases`` maps extra spellings (lower-case) to a canonical value.
    """

    def __init__(self, choices, aliases=None, **kwargs):
        self.choices = tuple(choices)
        self._lookup = {c.lower(): c for c in self.choices}
        self._lookup.update(aliases or {})
        kwargs.setdefault("validate", validate.OneOf(self.choices))
        kwargs.setdefault("metadata", {})["enum"] = list(self.choices)
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        return self._lookup.get(text.strip().lower(), text)


class StrictInteger(fields.Integer):
    """An integer that refuses ``80.5``, ``"80"`` and ``true`` instead of coercing them."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictFloat(fields.Float):
    """A finite JSON number; strings and booleans are refused, not coerced."""

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.make_error("invalid")
        return super()._validated(value)


class Tag(Trimmed):
    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).lower()


class Tags(fields.List):
    """Up to 20 tags of ``[a-z0-9._-]``, 1–50 chars, stored lower-case, duplicates dropped."""

    def __init__(self, **kwargs):
        kwargs.setdefault("validate", validate.Length(max=20))
        super().__init__(
            Tag(
                validate=validate.Regexp(
                    TAG_RE, error="A tag is 1-50 characters of a-z, 0-9, '-', '_' or '.'."
                )
            ),
            **kwargs,
        )

    def _deserialize(self, value, attr, data, **kwargs):
        tags = super()._deserialize(value, attr, data, **kwargs)
        return list(dict.fromkeys(tags))


def validate_object_id(value: str) -> ObjectId:
    """Parse a path/query id; raises ``ValidationError`` on a malformed one."""
    if not isinstance(value, str) or not OBJECT_ID_RE.match(value):
        raise ValidationError("Not a valid id (24 hexadecimal characters).")
    return ObjectId(value)
