"""marshmallow fields for the contract's conventions (trimmed strings, ids, time, enums)."""

from __future__ import annotations

import numbers
import re
from datetime import datetime

from bson import ObjectId
from marshmallow import ValidationError, fields, validate

from polymicro.common.timeutil import format_time, parse_time

OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")

# Patterns shown in the OpenAPI document are written so that Python's ``re`` and
# ECMA-262 (JSON Schema's dialect; Schemathesis validates with it) read them alike: no
# ``\s``/``\S`` (Python counts U+001C-U+001F and U+0085 as space, ECMA counts U+FEFF),
# but the explicit set of characters ``str.strip()`` removes.
WS = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NON_BLANK_PATTERN = rf"[^{WS}]"
# Refused in names: control characters (C0, DEL, C1: NUL, newlines, escapes), and the
# invisible characters that make a name look like another one or reorder the text
# around it (zero-width space, word joiner, bidirectional embeddings, overrides and
# isolates, byte-order mark).  Zero-width (non-)joiners stay: emoji and scripts use them.
NAME_BANNED = r"\x00-\x1f\x7f-\x9f\u200b\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\u2028\u2029"
NAME_BANNED_RE = re.compile(f"[{NAME_BANNED}]")
# A name as sent: white space around it, then at least one character, none banned.
NAME_PATTERN = rf"^[{WS}]*[^{WS}{NAME_BANNED}](?:[^{NAME_BANNED}]*[^{WS}{NAME_BANNED}])?[{WS}]*$"

TAG_CHARS_RE = re.compile(r"[A-Za-z0-9._-]{1,50}")  # a tag as sent, once trimmed
# What the OpenAPI document shows: the same, white space around it allowed (trimmed).
TAG_PATTERN = rf"^[{WS}]*[A-Za-z0-9._-]{{1,50}}[{WS}]*$"
TAG_ERROR = "A tag is 1-50 characters of a-z, 0-9, '-', '_' or '.'."
_URL = rf"[Hh][Tt][Tt][Pp][Ss]?://[^{WS}/?#]+(?:[/?#][^{WS}]*)?"
URL_RE = re.compile(_URL)  # the URL once trimmed
URL_PATTERN = rf"^[{WS}]*{_URL}[{WS}]*$"  # as the OpenAPI document shows it


def ensure_encodable(text: str) -> str:
    """JSON can carry lone surrogates (``"\\ud800"``) that no UTF-8 database can store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError("Not valid Unicode text (lone surrogate).") from exc
    return text


class Trimmed(fields.String):
    """A storable string with surrounding white space removed before validation.

    A length limit holds for the text as sent, surrounding white space included, so the
    ``maxLength`` the OpenAPI document shows is exact (it used to be checked after
    trimming: 104 characters with 4 leading spaces passed a limit of 100).  A text that
    must not be empty (``Length(min=1)``) must contain a character other than white
    space, documented as the pattern ``\\S``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._lengths = [v for v in self.validators if isinstance(v, validate.Length)]
        if any((v.min or 0) >= 1 for v in self._lengths):
            self.metadata = {"pattern": NON_BLANK_PATTERN, **self.metadata}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        for length in self._lengths:
            if length.max is not None and len(text) > length.max:
                length(text)  # raises the validator's own message
        return ensure_encodable(text.strip())


class Name(Trimmed):
    """A name (of a project, a service): trimmed, 1-``max_length`` characters, without
    control or invisible formatting characters (see ``NAME_BANNED``).

    Names are shown in lists and trees and used to tell things apart; a NUL, a newline
    or a right-to-left override in one would forge or hide what others see.
    """

    default_error_messages = {
        "banned": "Must not contain control characters or invisible formatting characters "
        "(zero-width space, bidirectional overrides)."
    }

    def __init__(self, max_length: int = 100, **kwargs):
        kwargs.setdefault("validate", validate.Length(min=1, max=max_length))
        super().__init__(**kwargs)
        self.metadata = {**self.metadata, "pattern": NAME_PATTERN}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if NAME_BANNED_RE.search(text):
            raise self.make_error("banned")
        return text


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


class HttpUrl(Trimmed):
    """An http(s) URL: the scheme, a host (with an optional port) and an optional path,
    query or fragment, without white space inside.

    Checked with one regular expression, the one the OpenAPI document shows (with room
    for the surrounding white space that is trimmed), so what the document calls valid is
    exactly what is accepted; marshmallow's ``Url`` accepted a stricter, undocumented
    subset (``format: url`` says nothing), so a schema-valid request could get a 422.
    """

    default_error_messages = {"invalid_url": "Not a valid http(s) URL."}

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {}).setdefault("pattern", URL_PATTERN)
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not URL_RE.fullmatch(text):
            raise self.make_error("invalid_url")
        return text


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
        # A valid RFC 3339 time whose offset moves it out of the years 0001-9999 in UTC
        # (``0001-01-01T00:00:17+01:01``): no stored time can be there, and none can be
        # stored there.
        "out_of_range": "A time must fall within the years 0001-9999 once converted to UTC.",
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
        except OverflowError as exc:
            raise self.make_error("out_of_range") from exc
        except ValueError as exc:
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


class StrictBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only (marshmallow's Boolean also takes ``"yes"``, ``1``)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictFloat(fields.Float):
    """A finite JSON number; strings and booleans are refused, not coerced."""

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.make_error("invalid")
        return super()._validated(value)


class Tag(Trimmed):
    """A tag filter: trimmed and lower-cased (any text; it only has to match)."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).lower()


class TagValue(Trimmed):
    """A tag to store: 1-50 characters of ``[A-Za-z0-9._-]`` once trimmed, stored lower-case.

    The characters are checked *before* lower-casing: ``str.lower`` maps some non-ASCII
    letters to ASCII (KELVIN SIGN ``\u212a`` becomes ``k``), which the documented
    pattern does not allow.
    """

    default_error_messages = {"invalid_tag": TAG_ERROR}

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {}).setdefault("pattern", TAG_PATTERN)
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not TAG_CHARS_RE.fullmatch(text):
            raise self.make_error("invalid_tag")
        return text.lower()


class Tags(fields.List):
    """Up to 20 tags of ``[a-z0-9._-]``, 1–50 chars, stored lower-case, duplicates dropped.

    The limit holds for the list as sent (``maxItems``), before duplicates are dropped:
    it used to be checked after, so 25 tags with repeats passed a documented limit of 20.
    """

    MAX_TAGS = 20

    def __init__(self, **kwargs):
        kwargs.setdefault("validate", validate.Length(max=self.MAX_TAGS))
        super().__init__(TagValue(), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list | tuple) and len(value) > self.MAX_TAGS:
            raise ValidationError(f"At most {self.MAX_TAGS} tags.")
        tags = super()._deserialize(value, attr, data, **kwargs)
        return list(dict.fromkeys(tags))


def validate_object_id(value: str) -> ObjectId:
    """Parse a path/query id; raises ``ValidationError`` on a malformed one."""
    if not isinstance(value, str) or not OBJECT_ID_RE.match(value):
        raise ValidationError("Not a valid id (24 hexadecimal characters).")
    return ObjectId(value)
