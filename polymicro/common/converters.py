"""URL converter for ObjectId path segments.

A segment that is not 24 hex characters does not match the rule, so Flask answers 404,
exactly as for an unknown id (the contract treats both alike).
"""

from bson import ObjectId
from flask import request
from werkzeug.routing import BaseConverter


class ObjectIdConverter(BaseConverter):
    regex = r"[0-9a-fA-F]{24}"

    def to_python(self, value: str) -> ObjectId:
        return ObjectId(value)

    def to_url(self, value) -> str:
        return str(value)


def query_object_id(name: str) -> ObjectId | None:
    """A query-string id as an ObjectId, or None when absent or malformed (the view's
    own schema then answers 422)."""
    value = request.args.get(name, "")
    try:
        return ObjectId(value) if len(value) == 24 else None
    except (TypeError, ValueError):
        return None
